"""Write routes: authenticate -> decode body -> handler in a unit of work -> response.

Every command runs through ``execute``: once per idempotency key, inside ``writes.db.run`` (which
retries conflicts and turns database failures into 503s), and answers with bytes that a replay
can send again unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shared.auth import bearer_token
from shared.dto import (
    CreateCustomer,
    CreateProduct,
    CustomerView,
    ImportedOrder,
    ImportResult,
    OrderView,
    PlaceOrder,
    Problem,
    ProductView,
    Reprice,
    Restock,
    UpsertCustomers,
    UpsertResult,
)
from shared.errors import NotJson
from shared.http import ENCODER, decode_json, etag, if_match_version, is_json, path_id, read_body
from shared.openapi import operation
from writes import handlers, idempotency
from writes.db import run
from writes.handlers import OrderImport
from writes.idempotency import Claim, StoredResponse
from writes.ndjson import MEDIA_TYPES, decode_orders, is_ndjson

T = TypeVar("T")
C = TypeVar("C")
V = TypeVar("V")

Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class Incoming(Generic[T]):
    """An authenticated, decoded command, and its idempotency claim when the client sent a key."""

    command: T
    claim: Claim | None


async def accept(
    request: Request, decode: Callable[[bytes], T], *, limit: int, wrong_media: str | None = None
) -> Incoming[T]:
    # The token is checked before a byte of the body is read: strangers cannot make us buffer.
    token = bearer_token(request, request.state.settings.write_api_tokens)
    key = idempotency.idempotency_key(request)
    if wrong_media is not None:
        raise NotJson(wrong_media)
    body = await read_body(request, limit)
    command = decode(body)
    return Incoming(command, None if key is None else idempotency.claim_for(request, token, key, body))


async def accept_json(request: Request, type_: type[T]) -> Incoming[T]:
    limit = request.state.settings.max_body_bytes
    return await accept(
        request,
        lambda body: decode_json(body, type_),
        limit=limit,
        wrong_media=None if is_json(request) else "Content-Type must be application/json",
    )


async def accept_empty(request: Request) -> Incoming[None]:
    """Transitions take no body; one that is sent is read (within the limit) and ignored."""
    return await accept(request, lambda body: None, limit=request.state.settings.max_body_bytes)


async def execute(
    request: Request,
    incoming: Incoming[Any],
    work: Callable[[Sessions], Awaitable[V]],
    reply: Callable[[V], StoredResponse],
) -> Response:
    async def respond(sessions: Sessions) -> StoredResponse:
        return reply(await work(sessions))

    state = request.state
    claim = incoming.claim
    if claim is None:
        stored, replayed = await run(lambda: respond(state.sessions)), False
    else:
        stored, replayed = await run(lambda: idempotency.once(state.engine, claim, respond))
    headers = {**stored.headers, "Idempotent-Replayed": "true"} if replayed else stored.headers
    return Response(stored.body, status_code=stored.status, headers=headers, media_type="application/json")


def ok(view: Any) -> StoredResponse:
    headers = {"ETag": etag(view.version)} if hasattr(view, "version") else {}
    return StoredResponse(status=200, headers=headers, body=ENCODER.encode(view))


def created(collection: str) -> Callable[[Any], StoredResponse]:
    def reply(view: Any) -> StoredResponse:
        response = ok(view)
        return StoredResponse(201, {**response.headers, "Location": f"{collection}/{view.id}"}, response.body)

    return reply


# --- routes ---------------------------------------------------------------------------------------

REFUSALS: dict[int, Any] = {400: Problem, 401: Problem, 413: Problem, 415: Problem, 422: Problem, 503: Problem}
IDEMPOTENT = ("Idempotency-Key",)


def command(
    path: str,
    body: type[C],
    handler: Callable[[C, Sessions], Awaitable[V]],
    reply: Callable[[V], StoredResponse],
    *,
    summary: str,
    responses: dict[int, Any],
) -> Route:
    """A route for a command with a JSON body and no path parameter."""

    @operation(summary, tag=path.split("/")[2], body=body, headers=IDEMPOTENT, responses={**responses, **REFUSALS})
    async def endpoint(request: Request) -> Response:
        incoming = await accept_json(request, body)
        return await execute(request, incoming, lambda s: handler(incoming.command, s), reply)

    return Route(path, endpoint, methods=["POST"])


def product_change(summary: str, body: type[C], handler: Callable[[int, C, Sessions], Awaitable[ProductView]]) -> Route:
    @operation(
        summary, tag="products", body=body, headers=IDEMPOTENT, responses={200: ProductView, 404: Problem, **REFUSALS}
    )
    async def endpoint(request: Request) -> Response:
        incoming = await accept_json(request, body)
        product_id = path_id(request, "product")
        return await execute(request, incoming, lambda s: handler(product_id, incoming.command, s), ok)

    verb = handler.__name__.removesuffix("_product")
    return Route(f"/v1/products/{{id:int}}/{verb}", endpoint, methods=["POST"])


def transition(summary: str, handler: Callable[[int, int | None, Sessions], Awaitable[OrderView]]) -> Route:
    @operation(
        summary,
        tag="orders",
        headers=("If-Match", *IDEMPOTENT),
        responses={200: OrderView, 404: Problem, 409: Problem, 412: Problem, **REFUSALS},
    )
    async def endpoint(request: Request) -> Response:
        incoming = await accept_empty(request)
        order_id, if_match = path_id(request, "order"), if_match_version(request)
        return await execute(request, incoming, lambda s: handler(order_id, if_match, s), ok)

    verb = handler.__name__.removesuffix("_order")
    return Route(f"/v1/orders/{{id:int}}/{verb}", endpoint, methods=["POST"])


@operation(
    "Import historical orders (NDJSON, one order a line; all or nothing)",
    tag="orders",
    body=ImportedOrder,
    body_media_type=MEDIA_TYPES[0],
    headers=IDEMPOTENT,
    responses={200: ImportResult, **REFUSALS},
)
async def import_orders(request: Request) -> Response:
    incoming: Incoming[OrderImport] = await accept(
        request,
        decode_orders,
        limit=request.state.settings.max_import_bytes,
        wrong_media=None if is_ndjson(request) else f"Content-Type must be one of {', '.join(MEDIA_TYPES)}",
    )
    return await execute(request, incoming, lambda s: handlers.import_orders(incoming.command, s), ok)


ROUTES: list[BaseRoute] = [
    command(
        "/v1/customers",
        CreateCustomer,
        handlers.create_customer,
        created("/v1/customers"),
        summary="Create a customer",
        responses={201: CustomerView, 409: Problem},
    ),
    command(
        "/v1/customers/upsert",
        UpsertCustomers,
        handlers.upsert_customers,
        ok,
        summary="Insert or update customers by email, in one statement",
        responses={200: UpsertResult},
    ),
    command(
        "/v1/products",
        CreateProduct,
        handlers.create_product,
        created("/v1/products"),
        summary="Create a product",
        responses={201: ProductView, 409: Problem},
    ),
    product_change("Add stock to a product", Restock, handlers.restock_product),
    product_change("Change a product's price (orders keep theirs)", Reprice, handlers.reprice_product),
    command(
        "/v1/orders",
        PlaceOrder,
        handlers.place_order,
        created("/v1/orders"),
        summary="Place an order, taking its stock",
        responses={201: OrderView, 404: Problem, 409: Problem},
    ),
    Route("/v1/orders/import", import_orders, methods=["POST"]),
    transition("Pay an order (pending -> paid)", handlers.pay_order),
    transition("Ship an order (paid -> shipped)", handlers.ship_order),
    transition("Cancel an order (pending or paid), returning its stock", handlers.cancel_order),
]

"""Write routes: one per command, each a thin wiring of body type, handler and reply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shared.dto import (
    CreateCustomer,
    CreateProduct,
    CustomerView,
    EventType,
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
from shared.http import if_match_versions, path_id
from shared.openapi import operation
from shared.sides import resources
from writes import handlers
from writes.handlers import OrderImport
from writes.handlers.orders import IfMatch
from writes.idempotency import StoredResponse
from writes.ndjson import MEDIA_TYPES, decode_orders, is_ndjson
from writes.pipeline import Incoming, accept, accept_empty, accept_json, created, execute, ok

C = TypeVar("C")
V = TypeVar("V")

# --- routes ---------------------------------------------------------------------------------------

REFUSALS: dict[int, Any] = {400: Problem, 401: Problem, 413: Problem, 415: Problem, 422: Problem, 503: Problem}
IDEMPOTENT = ("Idempotency-Key",)


def command(
    path: str,
    body: type[C],
    handler: Callable[[C, AsyncSession], Awaitable[V]],
    reply: Callable[[V], StoredResponse],
    *,
    tag: str,
    summary: str,
    responses: dict[int, Any],
    event: EventType | None,
) -> Route:
    """A route for a command with a JSON body and no path parameter; ``event`` is the type of the
    event its view is appended as (None: the handler appends its own, ``writes.events``)."""

    @operation(summary, tag=tag, body=body, headers=IDEMPOTENT, responses={**responses, **REFUSALS})
    async def endpoint(request: Request) -> Response:
        incoming = await accept_json(request, body)
        return await execute(request, incoming, lambda s: handler(incoming.command, s), reply, event)

    return Route(path, endpoint, methods=["POST"])


def product_change(
    path: str,
    body: type[C],
    handler: Callable[[int, C, AsyncSession], Awaitable[ProductView]],
    *,
    summary: str,
    event: EventType,
    conflicts: bool = False,
) -> Route:
    responses = {200: ProductView, 404: Problem, **({409: Problem} if conflicts else {}), **REFUSALS}

    @operation(summary, tag="products", body=body, headers=IDEMPOTENT, responses=responses)
    async def endpoint(request: Request) -> Response:
        product_id = path_id(request, "product")  # before the admission: nothing may come between it and execute
        incoming = await accept_json(request, body)
        return await execute(request, incoming, lambda s: handler(product_id, incoming.command, s), ok, event)

    return Route(path, endpoint, methods=["POST"])


def transition(
    path: str,
    handler: Callable[[int, IfMatch, AsyncSession], Awaitable[OrderView]],
    *,
    summary: str,
    event: EventType,
) -> Route:
    @operation(
        summary,
        tag="orders",
        headers=("If-Match", *IDEMPOTENT),
        responses={200: OrderView, 404: Problem, 409: Problem, 412: Problem, **REFUSALS},
    )
    async def endpoint(request: Request) -> Response:
        order_id, if_match = path_id(request, "order"), if_match_versions(request)  # before the admission
        incoming = await accept_empty(request)
        return await execute(request, incoming, lambda s: handler(order_id, if_match, s), ok, event)

    return Route(path, endpoint, methods=["POST"])


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
        limit=resources(request).settings.max_import_bytes,
        wrong_media=None if is_ndjson(request) else f"Content-Type must be one of {', '.join(MEDIA_TYPES)}",
    )
    return await execute(request, incoming, lambda s: handlers.import_orders(incoming.command, s), ok)


ROUTES: list[BaseRoute] = [
    command(
        "/v1/customers",
        CreateCustomer,
        handlers.create_customer,
        created("/v1/customers"),
        tag="customers",
        summary="Create a customer",
        responses={201: CustomerView, 409: Problem},
        event="customer.created",
    ),
    command(
        "/v1/customers/upsert",
        UpsertCustomers,
        handlers.upsert_customers,
        ok,
        tag="customers",
        summary="Insert or update customers by email, in one statement",
        responses={200: UpsertResult},
        event=None,
    ),
    command(
        "/v1/products",
        CreateProduct,
        handlers.create_product,
        created("/v1/products"),
        tag="products",
        summary="Create a product",
        responses={201: ProductView, 409: Problem},
        event="product.created",
    ),
    product_change(
        "/v1/products/{id:id}/restock",
        Restock,
        handlers.restock_product,
        summary="Add stock to a product (409 past the stock limit)",
        event="product.restocked",
        conflicts=True,
    ),
    product_change(
        "/v1/products/{id:id}/reprice",
        Reprice,
        handlers.reprice_product,
        summary="Change a product's price (orders keep theirs)",
        event="product.repriced",
    ),
    command(
        "/v1/orders",
        PlaceOrder,
        handlers.place_order,
        created("/v1/orders"),
        tag="orders",
        summary="Place an order, taking its stock",
        responses={201: OrderView, 404: Problem, 409: Problem},
        event="order.placed",
    ),
    Route("/v1/orders/import", import_orders, methods=["POST"]),
    transition(
        "/v1/orders/{id:id}/pay", handlers.pay_order, summary="Pay an order (pending -> paid)", event="order.paid"
    ),
    transition(
        "/v1/orders/{id:id}/ship", handlers.ship_order, summary="Ship an order (paid -> shipped)", event="order.shipped"
    ),
    transition(
        "/v1/orders/{id:id}/cancel",
        handlers.cancel_order,
        summary="Cancel an order (pending or paid), returning its stock",
        event="order.cancelled",
    ),
]

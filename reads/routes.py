"""Read routes: params -> query function -> response; the read ROUTES list."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Send

from reads.balancing import reader
from reads.db import Reader
from reads.params import (
    OrderFilters,
    OrderListing,
    ProductSearch,
    RevenueWindow,
    TopProductsWindow,
    query_params,
)
from reads.queries import customers, orders, products, stats
from shared.auth import bearer_token
from shared.consistency import HEADER as CONSISTENCY_TOKEN
from shared.dto import (
    CustomerDetail,
    OrderSummary,
    OrderView,
    Page,
    Problem,
    ProductView,
    RevenueReport,
    TopProductsReport,
)
from shared.errors import NotFound, ServiceUnavailable
from shared.http import ENCODER, MsgspecResponse, etag, header_fields, path_id
from shared.openapi import operation
from shared.sides import Resources, resources

P = TypeVar("P", bound=msgspec.Struct)

log = logging.getLogger("orders_api.export")

TAG = "queries"
# Every query can meet a malformed Consistency-Token, a missing bearer token (unless READ_API_OPEN)
# and an exhausted pool.
ALWAYS = {400: Problem, 401: Problem, 503: Problem}
ONE = {**ALWAYS, 404: Problem}
MANY = {**ALWAYS, 422: Problem}

# Every answer is personal data (emails, names) or sits beside it behind the same token, and a query
# right after a command must see its effect: no cache may answer from a stored copy without asking.
# A product or order is stored by the client alone and revalidated with its ETag each time (a 304
# when unchanged); no shared cache keeps any answer. The rest has no validator, so a stored copy
# could never be reused and is not kept at all.
REVALIDATE = {"Cache-Control": "private, no-cache"}
NO_STORE = {"Cache-Control": "no-store"}
RAW_REVALIDATE = [(name.lower().encode(), value.encode()) for name, value in REVALIDATE.items()]
RAW_NO_STORE = [(name.lower().encode(), value.encode()) for name, value in NO_STORE.items()]


def authorize(request: Request) -> Resources:
    """Queries need a bearer token from READ_API_TOKENS, unless READ_API_OPEN opened them to anyone.
    Returns the app's resources, looked up for the settings, for the rest of the request."""
    found = resources(request)
    if not found.settings.read_api_open:
        bearer_token(request, found.settings.read_api_tokens)
    return found


def with_etag(request: Request, view: Any, version: int) -> Response:
    """The view with ``ETag``, or a bodiless 304 when ``If-None-Match`` already names it."""
    tag = etag(version)
    unchanged = if_none_match(request, tag)
    return with_headers(
        Response(status_code=304) if unchanged else MsgspecResponse(view), (b"etag", tag.encode()), *RAW_REVALIDATE
    )


def with_headers(response: Response, *headers: tuple[bytes, bytes]) -> Response:
    """``response`` with ``headers`` (lower-case names, encoded) after its own: what Starlette's
    ``headers=`` argument makes of a dict, without building the dict and re-encoding it each time."""
    response.raw_headers += headers
    return response


def if_none_match(request: Request, tag: str) -> bool:
    # RFC 9110: If-None-Match compares weakly, so W/"3" matches "3"; "*" matches any current version.
    # Every field of it, as a list header's fields join (``headers.get`` would read the first only,
    # and raise and catch a KeyError inside on every read that sends none).
    fields = header_fields(request, b"if-none-match")
    if not fields:
        return False
    candidates = {candidate.strip().removeprefix("W/") for candidate in ",".join(fields).split(",")}
    return "*" in candidates or tag in candidates


def resource_route(
    path: str, kind: str, find: Callable[[Reader, int], Awaitable[Any]], view: Any, *, versioned: bool
) -> Route:
    """GET one resource by id: 404 naming it when absent; with ``ETag`` and 304 when ``versioned``."""
    responses: dict[int, Any] = {200: view, **ONE} | ({304: None} if versioned else {})
    headers = (CONSISTENCY_TOKEN, "If-None-Match") if versioned else (CONSISTENCY_TOKEN,)

    @operation(f"One {kind}", tag=TAG, responses=responses, headers=headers)
    async def endpoint(request: Request) -> Response:
        granted = authorize(request)
        resource_id = path_id(request, kind)
        found = await find(await reader(request, granted), resource_id)
        if found is None:
            raise NotFound(f"{kind} {resource_id} not found")
        return (
            with_etag(request, found, found.version)
            if versioned
            else with_headers(MsgspecResponse(found), *RAW_NO_STORE)
        )

    return Route(path, endpoint, methods=["GET"], name=find.__name__)


def query_route(
    path: str, params: type[P], run: Callable[[Reader, P], Awaitable[Any]], view: Any, *, summary: str
) -> Route:
    """GET a list or report: the query string decoded into ``params``, one query, one view."""

    @operation(summary, tag=TAG, responses={200: view, **MANY}, query=params, headers=(CONSISTENCY_TOKEN,))
    async def endpoint(request: Request) -> Response:
        granted = authorize(request)
        given = query_params(request, params)
        return with_headers(MsgspecResponse(await run(await reader(request, granted), given)), *RAW_NO_STORE)

    return Route(path, endpoint, methods=["GET"], name=run.__name__)


@operation(
    "Every matching order as NDJSON, one OrderSummary a line, by id",
    tag=TAG,
    responses={200: OrderSummary, **MANY},
    query=OrderFilters,
    response_media_type="application/x-ndjson",
    headers=(CONSISTENCY_TOKEN,),
)
async def order_export(request: Request) -> Response:
    granted = authorize(request)
    filters = query_params(request, OrderFilters)
    later_wait = granted.settings.read_export_wait
    batches = orders.order_batches(await reader(request, granted), filters, later_wait=later_wait)
    # The first batch is read before any byte is sent, so an exhausted pool or a dead database is
    # still a proper 503; a later failure can only cut the stream, visibly (see WholeOrCut).
    first: list[OrderSummary] = await anext(batches, [])
    return WholeOrCut(ndjson(first, batches), media_type="application/x-ndjson", headers=NO_STORE)


class WholeOrCut(StreamingResponse):
    """A stream a client receives whole, or can tell was cut.

    When a batch fails after the headers went out (the database died, no connection came within
    READ_EXPORT_WAIT), the response ends without HTTP/1.1's last chunk: the server closes the
    connection and every client reports an incomplete body (curl exits 18, httpx raises
    RemoteProtocolError), never a 200 that merely looks short."""

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ServiceUnavailable as exc:
            log.warning("export cut short after its headers were sent: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def ndjson(first: list[OrderSummary], rest: AsyncIterator[list[OrderSummary]]) -> AsyncIterator[bytes]:
    if first:
        yield ENCODER.encode_lines(first)
    async for batch in rest:
        yield ENCODER.encode_lines(batch)


ROUTES: list[BaseRoute] = [
    resource_route("/v1/customers/{id:id}", "customer", customers.customer_detail, CustomerDetail, versioned=False),
    resource_route("/v1/products/{id:id}", "product", products.product_by_id, ProductView, versioned=True),
    resource_route("/v1/orders/{id:id}", "order", orders.order_by_id, OrderView, versioned=True),
    query_route(
        "/v1/products",
        ProductSearch,
        products.product_search,
        Page[ProductView],
        summary="Products whose name or SKU contains q, by id",
    ),
    query_route(
        "/v1/orders", OrderListing, orders.order_page, Page[OrderSummary], summary="Orders, newest first, filtered"
    ),
    query_route(
        "/v1/stats/revenue/daily",
        RevenueWindow,
        stats.daily_revenue,
        RevenueReport,
        summary="Paid and shipped orders and revenue per UTC day, newest first",
    ),
    query_route(
        "/v1/stats/products/top",
        TopProductsWindow,
        stats.top_products,
        TopProductsReport,
        summary="Best-selling products by revenue over paid and shipped orders",
    ),
    Route("/v1/exports/orders", order_export, methods=["GET"]),
]

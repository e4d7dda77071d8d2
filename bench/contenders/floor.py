"""The bare floor: the service's own SQL on asyncpg, with no middleware, written by hand.

Each read is the same one statement the service runs (``reads.queries``), its JSON text returned
as the body untouched: no decoding, no validation, no re-encoding, no auth, no gate, no metrics.
The pool keeps asyncpg's defaults, so unlike the service's read pool it sends the default reset
(``RESET ALL``, ``UNLISTEN *``, ...) on every release: that round trip is part of what is compared.

Timestamps come out as PostgreSQL writes them (``2024-05-01T12:00:00.5+00:00``): the same instants
as the service's ``...Z``, in another spelling.

The same process serves the write floor (``bench.contenders.write_floor``) on a pool of its own, as
the service keeps a write pool beside its read pool.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.contenders.write_floor import WriteFloor
from reads.queries.orders import ORDER_BY_ID, order_page_sql
from reads.queries.products import PRODUCT_BY_ID

# The service's list statement with a customer and no other filter, no cursor.
CUSTOMER_PAGE = order_page_sql((True, False, False, False), False)
POOL_SIZE = 10
PAGE_LIMIT = 20
NOT_FOUND = '{"detail":"Not Found"}'
BAD_REQUEST = '{"detail":"customer_id is required; limit must be 1..100"}'


def json_response(text: str, status_code: int = 200) -> Response:
    return Response(text, status_code, media_type="application/json")


class Floor:
    """The read pool and the three endpoints that use it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: Any = None

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        # asyncpg takes the libpq URL as it is, ``?host=/socket/dir`` included.
        self.pool = await asyncpg.create_pool(self.dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
        try:
            yield
        finally:
            await self.pool.close()

    async def json(self, sql: str, *args: object) -> str | None:
        text: str | None = await self.pool.fetchval(sql, *args)
        return text

    async def order(self, request: Request) -> Response:
        text = await self.json(ORDER_BY_ID, request.path_params["id"])
        return json_response(NOT_FOUND, 404) if text is None else json_response(text)

    async def product(self, request: Request) -> Response:
        text = await self.json(PRODUCT_BY_ID, request.path_params["id"])
        return json_response(NOT_FOUND, 404) if text is None else json_response(text)

    async def order_page(self, request: Request) -> Response:
        try:
            customer_id = int(request.query_params["customer_id"])
            limit = int(request.query_params.get("limit", PAGE_LIMIT))
        except (KeyError, ValueError):
            return json_response(BAD_REQUEST, 400)
        if not 1 <= limit <= 100:
            return json_response(BAD_REQUEST, 400)
        # CUSTOMER_PAGE's $1..$7: customer, status, created from/to, the cursor's row, the limit.
        # Exactly ``limit`` rows: no cursor is made, so no look-ahead row is needed.
        text = await self.json(CUSTOMER_PAGE, customer_id, None, None, None, None, None, limit)
        return json_response('{"items":' + str(text) + ',"next_cursor":null}')


def create_app() -> Starlette:
    dsn = os.environ["DATABASE_URL"]
    floor, writes = Floor(dsn), WriteFloor(dsn)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with floor.opened(), writes.opened():
            yield

    routes = [
        Route("/v1/orders/{id:int}", floor.order, methods=["GET"]),
        Route("/v1/products/{id:int}", floor.product, methods=["GET"]),
        Route("/v1/orders", floor.order_page, methods=["GET"]),
        *writes.routes(),
    ]
    return Starlette(routes=routes, lifespan=lifespan)

"""The write floor: place order and pay, hand-written on asyncpg, with the service's checks and effects.

One transaction per command on a bare asyncpg pool of ``WRITE_POOL_SIZE`` (the service's default),
no ORM, no auth, no idempotency, no metrics:

- place: the customer must exist (404); the products are locked in id order (404 for an unknown
  one, 409 for one short of stock); one conditional ``UPDATE`` takes the stock; the order and its
  items are inserted, the items with ``unnest``; the customer's ``customer_totals`` row is bumped.
- pay: one conditional ``UPDATE`` pending -> paid (404 unknown, 409 not pending), then the read
  models recorded.

The read-model statements are the service's own (``writes.readmodels``), compiled for asyncpg as
the service sends them, so both keep the read models alike. The reply is the order view as the read
side builds it (``reads.queries.orders.ORDER_BY_ID``), read in the same transaction: 201 for a
place, 200 for a pay. Errors are a short JSON ``detail`` with the service's status codes.

Like the read floor's, the pool keeps asyncpg's defaults: its reset on release is a round trip the
service's pool does not make, and part of what is compared.

Under ``/outbox`` (``/outbox/v1/orders``, ``/outbox/v1/orders/{id}/pay``) the same two commands also
append their event as the service does: its statement (``writes.events.APPEND``), the order view
as the data, on the same connection in the same transaction; after the commit they ask, as the
service's commands do, for a round of the service's ``writes.events.Positioner`` (migration 0008's
function, on a connection of its own beside the pool, as the service's) and answer without waiting
for it. The two paths side by side are what the outbox costs a command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reads.queries.orders import ORDER_BY_ID
from shared.config import Settings
from shared.dto import PlaceOrder
from writes import readmodels
from writes.events import APPEND, Positioner, position_all


class Refused(Exception):
    """A command the domain refuses: its transaction rolls back and the client hears ``status``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


# The read models' statements as the service sends them on the driver (``$n`` with the same casts),
# and the names of their ``$n`` parameters in order.
RECORD, RECORD_PARAMETERS = readmodels.RECORD.sql, readmodels.RECORD.names
COUNT_PLACED = readmodels.COUNT_PLACED.sql

CUSTOMER_EXISTS = "SELECT EXISTS (SELECT FROM customers WHERE id = $1)"
# In id order, as the service locks them: two orders sharing products queue instead of deadlocking.
LOCK_PRODUCTS = """
    SELECT id, price_cents, stock FROM products WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE
"""
# The stock taken in one statement that refuses to go below zero, whatever was checked before it.
TAKE_STOCK = """
    UPDATE products p
       SET stock = p.stock - d.quantity, version = p.version + 1, updated_at = now()
      FROM unnest($1::bigint[], $2::bigint[]) AS d (id, quantity)
     WHERE p.id = d.id AND p.stock >= d.quantity
"""
INSERT_ORDER = """
    INSERT INTO orders (customer_id, status, item_count, total_cents) VALUES ($1, 'pending', $2, $3) RETURNING id
"""
# line_no is the line's place in the command, as the service numbers them.
INSERT_ITEMS = """
    INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price_cents)
    SELECT $1, line_no, product_id, quantity, unit_price_cents
      FROM unnest($2::bigint[], $3::int[], $4::bigint[])
           WITH ORDINALITY AS l (product_id, quantity, unit_price_cents, line_no)
"""
PAY = """
    UPDATE orders SET status = 'paid', version = version + 1, updated_at = now() WHERE id = $1 AND status = 'pending'
"""
ORDER_EXISTS = "SELECT EXISTS (SELECT FROM orders WHERE id = $1)"

PLACE_ORDER = msgspec.json.Decoder(PlaceOrder)


def json_response(text: str, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status_code, headers, media_type="application/json")


def refusal(status: int, detail: str) -> Response:
    return json_response(msgspec.json.encode({"detail": detail}).decode(), status)


class WriteFloor:
    """The write pool, opened with the read floor's, and the two commands that use it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        # The service's defaults: the bench gives its contenders no WRITE_ or READ_ settings.
        self.settings = Settings(database_url=dsn)
        self.pool: Any = None
        self.rounds: asyncpg.Connection
        self.positioner: Positioner

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        size = self.settings.write_pool_size
        self.pool = await asyncpg.create_pool(self.dsn, min_size=size, max_size=size)
        self.rounds = await asyncpg.connect(self.dsn)
        self.positioner = Positioner(self.position_round)
        rounds = asyncio.create_task(self.positioner.run())
        try:
            yield
        finally:
            rounds.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rounds
            await self.rounds.close()
            await self.pool.close()

    async def position_round(self) -> None:
        await position_all(self.rounds)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/orders", self.place_order, methods=["POST"]),
            Route("/v1/orders/{id:int}/pay", self.pay_order, methods=["POST"]),
            Route("/outbox/v1/orders", self.place_order_with_event, methods=["POST"]),
            Route("/outbox/v1/orders/{id:int}/pay", self.pay_order_with_event, methods=["POST"]),
        ]

    async def place_order(self, request: Request) -> Response:
        return await self.placing(request, outbox=False)

    async def place_order_with_event(self, request: Request) -> Response:
        return await self.placing(request, outbox=True)

    async def pay_order(self, request: Request) -> Response:
        return await self.paying(request, outbox=False)

    async def pay_order_with_event(self, request: Request) -> Response:
        return await self.paying(request, outbox=True)

    async def placing(self, request: Request, *, outbox: bool) -> Response:
        try:
            command = PLACE_ORDER.decode(await request.body())
            if len({line.product_id for line in command.items}) != len(command.items):
                raise Refused(422, "a product appears on more than one line")
            async with self.pool.acquire() as connection, connection.transaction():
                order_id = await place(connection, command)
                view: str = await connection.fetchval(ORDER_BY_ID, order_id)
                if outbox:
                    await append(connection, "order.placed", order_id, view)
            if outbox:
                self.positioner.wanted()
        except msgspec.ValidationError as exc:
            return refusal(422, str(exc))
        except msgspec.DecodeError as exc:
            return refusal(400, str(exc))
        except Refused as exc:
            return refusal(exc.status, str(exc))
        return json_response(view, 201, {"Location": f"/v1/orders/{order_id}"})

    async def paying(self, request: Request, *, outbox: bool) -> Response:
        order_id: int = request.path_params["id"]
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                await pay(connection, order_id, self.settings.read_model_stripes)
                view: str = await connection.fetchval(ORDER_BY_ID, order_id)
                if outbox:
                    await append(connection, "order.paid", order_id, view)
            if outbox:
                self.positioner.wanted()
        except Refused as exc:
            return refusal(exc.status, str(exc))
        return json_response(view, 200)


async def place(connection: asyncpg.Connection, command: PlaceOrder) -> int:
    """The order's statements, in the service's order; returns the new order's id."""
    if not await connection.fetchval(CUSTOMER_EXISTS, command.customer_id):
        raise Refused(404, f"customer {command.customer_id} not found")
    wanted = {line.product_id: line.quantity for line in command.items}
    products = {row["id"]: row for row in await connection.fetch(LOCK_PRODUCTS, list(wanted))}
    if missing := [p for p in wanted if p not in products]:
        raise Refused(404, f"products not found: {missing}")
    if short := [p for p, quantity in wanted.items() if products[p]["stock"] < quantity]:
        raise Refused(409, f"not enough in stock: products {short}")
    taken = await connection.execute(TAKE_STOCK, list(wanted), list(wanted.values()))
    if taken != f"UPDATE {len(wanted)}":
        raise Refused(409, "not enough in stock")
    ids = [line.product_id for line in command.items]
    quantities = [line.quantity for line in command.items]
    prices = [products[p]["price_cents"] for p in ids]
    total = sum(q * price for q, price in zip(quantities, prices, strict=True))
    order_id: int = await connection.fetchval(INSERT_ORDER, command.customer_id, sum(quantities), total)
    await connection.execute(INSERT_ITEMS, order_id, ids, quantities, prices)
    await connection.execute(COUNT_PLACED, command.customer_id)
    return order_id


async def pay(connection: asyncpg.Connection, order_id: int, stripes: int) -> None:
    if await connection.execute(PAY, order_id) != "UPDATE 1":
        if not await connection.fetchval(ORDER_EXISTS, order_id):
            raise Refused(404, f"order {order_id} not found")
        raise Refused(409, f"order {order_id} is not pending; pay needs pending")
    change = readmodels.PAID
    values = {"order_id": order_id, "placed": change.placed, "sold": change.sold, "stripes": stripes}
    await connection.execute(RECORD, *(values[name] for name in RECORD_PARAMETERS))


async def append(connection: asyncpg.Connection, type_: str, subject_id: int, view: str) -> None:
    """One event, by the service's statement; a round positions it after the commit."""
    await connection.execute(APPEND, [type_], [subject_id], [view])

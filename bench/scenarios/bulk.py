"""Bulk: one transaction writing N historical orders, three ways, in this process:
- the service's import command (``writes.handlers.import_orders``: validation, ids from the
  identity sequence, COPY inside the command's transaction), through ``WritePool.run``;
- the ORM's ``add_all`` of the same orders with their items, through ``WritePool.run`` too;
- a bare asyncpg COPY of the same rows: no validation, the floor.
The HTTP and NDJSON decoding in front of the import is left out of all three. After each write,
the database must hold every order and item it was given, more than before."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from bench.core import Context, Measurement
from bench.scenarios.writes import InvariantBroken
from shared.config import Settings
from shared.dto import ImportedOrder
from testkit.database import connected
from writes import events
from writes.db import WritePool
from writes.handlers import OrderImport, import_orders
from writes.handlers.imports import ITEM_COLUMNS, ORDER_COLUMNS, item_records, order_records, total_cents
from writes.models import Order, OrderItem
from writes.seed import demo_order

SCENARIO = "bulk"


def run(ctx: Context) -> list[Measurement]:
    return asyncio.run(measure(ctx))


async def measure(ctx: Context) -> list[Measurement]:
    pool = await events.open_pool(Settings(database_url=ctx.database_url))
    try:
        orders = await some_orders(ctx.database_url, ctx.sizes.bulk_orders, ctx.sizes.customers)
        contenders: dict[str, Callable[[list[ImportedOrder]], Awaitable[object]]] = {
            "import command (COPY)": partial(via_import, pool),
            "ORM add_all": partial(via_add_all, pool),
            "bare asyncpg COPY": partial(via_bare_copy, ctx.database_url),
        }
        took: dict[str, list[float]] = defaultdict(list)
        expected = (len(orders), sum(len(order.items) for order in orders))
        for _ in range(ctx.sizes.rounds):
            for name, write in contenders.items():
                before = await written(ctx.database_url)
                started = time.perf_counter()
                await write(orders)
                took[name].append(time.perf_counter() - started)
                # A contender timed for rows it did not write would look fast: each must add them all.
                after = await written(ctx.database_url)
                if (after[0] - before[0], after[1] - before[1]) != expected:
                    raise InvariantBroken(
                        f"{name} wrote {after[0] - before[0]} orders and "
                        f"{after[1] - before[1]} items of {expected[0]} and {expected[1]}"
                    )
    finally:
        await pool.close()
    return [timed(name, len(orders), seconds) for name, seconds in took.items()]


async def written(url: str) -> tuple[int, int]:
    """How many orders and order items the database holds."""
    async with connected(url) as connection:
        orders: int = await connection.fetchval("SELECT count(*) FROM orders")
        items: int = await connection.fetchval("SELECT count(*) FROM order_items")
    return orders, items


def timed(name: str, orders: int, seconds: list[float]) -> Measurement:
    ordered = sorted(seconds)
    return Measurement(
        scenario=SCENARIO,
        case=f"{orders} orders in one transaction",
        contender=name,
        rate=orders * len(seconds) / sum(seconds),
        p50_ms=ordered[len(ordered) // 2] * 1000,  # the median run's time for all the orders
        p99_ms=ordered[-1] * 1000,  # the slowest run's
        count=orders * len(seconds),
    )


async def some_orders(url: str, count: int, customers: int) -> list[ImportedOrder]:
    async with connected(url) as connection:
        prices = dict(await connection.fetch("SELECT id, price_cents FROM products"))
        customer_ids = [row[0] for row in await connection.fetch("SELECT id FROM customers LIMIT $1", customers)]
    rng = random.Random(10)
    now = datetime.now(UTC)
    return [demo_order(rng, now, customer_ids, list(prices), prices) for _ in range(count)]


async def via_import(pool: WritePool, orders: list[ImportedOrder]) -> object:
    return await pool.run(partial(import_orders, OrderImport(orders, list(range(1, len(orders) + 1)))))


async def via_add_all(pool: WritePool, orders: list[ImportedOrder]) -> object:
    async def add_all(session: AsyncSession) -> None:
        session.add_all(orm_order(order) for order in orders)

    return await pool.run(add_all)


def orm_order(order: ImportedOrder) -> Order:
    items = [
        OrderItem(line_no=n, product_id=i.product_id, quantity=i.quantity, unit_price_cents=i.unit_price_cents)
        for n, i in enumerate(order.items, start=1)
    ]
    return Order(
        customer_id=order.customer_id,
        status=order.status,
        item_count=sum(i.quantity for i in order.items),
        total_cents=sum(i.quantity * i.unit_price_cents for i in order.items),
        created_at=order.created_at,
        updated_at=order.created_at,
        items=items,
    )


RESERVE_IDS = "SELECT array_agg(nextval(pg_get_serial_sequence('orders', 'id'))) FROM generate_series(1, $1)"


async def via_bare_copy(url: str, orders: list[ImportedOrder]) -> object:
    async with connected(url) as connection, connection.transaction():
        ids = await connection.fetchval(RESERVE_IDS, len(orders))
        records = order_records(ids, orders, [total_cents(order) for order in orders])
        await connection.copy_records_to_table("orders", records=records, columns=ORDER_COLUMNS)
        await connection.copy_records_to_table("order_items", records=item_records(ids, orders), columns=ITEM_COLUMNS)
    return None

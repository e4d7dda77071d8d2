"""What the models' relationships do in a flush (writes.models): one persists, the rest only load."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from shared.config import Settings
from writes.db import WritePool
from writes.models import Base, Order, OrderItem


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[WritePool]:
    pool = await WritePool.open(settings)
    yield pool
    await pool.close()


def test_the_flush_follows_only_an_orders_items() -> None:
    """Each relationship a flush persists through is a dependency processor in every flush of its
    mapper: one more than ``Order.items`` costs every place for nothing, since rows name their
    parents by id."""
    persisting = [
        f"{mapper.class_.__name__}.{relationship.key}"
        for mapper in Base.registry.mappers
        for relationship in mapper.relationships
        if not relationship.viewonly
    ]
    assert persisting == ["Order.items"]


async def test_an_order_built_with_its_items_is_saved_with_them(pool: WritePool, db: asyncpg.Connection) -> None:
    """What ``Order.items`` still persists: items given in the collection, before their order has an
    id, are inserted after it with its id (a view-only ``Order.items`` would save the order alone)."""
    customer = await db.fetchval("INSERT INTO customers (email, name) VALUES ('a@example.com', 'A') RETURNING id")
    product = await db.fetchval(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ('P', 'P', 5, 1) RETURNING id"
    )

    async def place(session: AsyncSession) -> int:
        items = [OrderItem(line_no=n, product_id=product, quantity=n, unit_price_cents=5) for n in (1, 2)]
        order = Order(customer_id=customer, item_count=3, total_cents=15, items=items)
        session.add(order)
        await session.flush()
        return order.id

    order_id = await pool.run(place)
    rows = await db.fetch("SELECT order_id, line_no, quantity FROM order_items ORDER BY line_no")
    assert [tuple(row) for row in rows] == [(order_id, 1, 1), (order_id, 2, 2)]

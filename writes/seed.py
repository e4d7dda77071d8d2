"""Demo data, written through the bulk command paths: customer upserts, products, order imports.

Orders are spread over the last 90 days with mixed statuses, so the list, stats and export
endpoints have something to show. Seeding again updates the demo customers, keeps the demo
products, and adds another set of orders.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.config import Settings
from shared.dto import CreateCustomer, CreateProduct, ImportedLine, ImportedOrder, OrderStatus, UpsertCustomers
from shared.errors import SkuTaken
from shared.http import ENCODER
from writes import events
from writes.db import WritePool
from writes.events import NewEvent
from writes.handlers import OrderImport, create_product, import_orders, upsert_customers
from writes.models import Customer, Product

CUSTOMER_BATCH = 5_000
ORDER_BATCH = 10_000
EMAIL_DOMAIN = "@demo.example"
SKU_PREFIX = "DEMO-"
DAYS = 90
STATUSES: tuple[OrderStatus, ...] = ("pending", "paid", "shipped", "cancelled")
STATUS_WEIGHTS = (15, 35, 40, 10)

Advance = Callable[[int], None]


@dataclass(frozen=True)
class SeedCounts:
    customers: int
    products: int
    orders: int

    @property
    def total(self) -> int:
        return self.customers + self.products + self.orders


async def seed(settings: Settings, counts: SeedCounts, advance: Advance) -> None:
    """Write ``counts`` of demo rows, calling ``advance(n)`` as each batch of n rows lands."""
    pool = await events.open_pool(settings)
    try:
        customer_ids = await seed_customers(pool, counts.customers, advance)
        prices = await seed_products(pool, counts.products, advance)
        await seed_orders(pool, customer_ids, prices, counts.orders, advance)
    finally:
        await pool.close()


async def seed_customers(pool: WritePool, count: int, advance: Advance) -> list[int]:
    for start in range(0, count, CUSTOMER_BATCH):
        batch = [
            CreateCustomer(email=f"customer{n:06d}{EMAIL_DOMAIN}", name=f"Customer {n}")
            for n in range(start + 1, min(start + CUSTOMER_BATCH, count) + 1)
        ]
        await pool.run(partial(upsert_customers, UpsertCustomers(customers=batch)))
        advance(len(batch))
    return await pool.run(_demo_customer_ids)


async def _demo_customer_ids(session: AsyncSession) -> list[int]:
    return list(await session.scalars(select(Customer.id).where(Customer.email.endswith(EMAIL_DOMAIN))))


async def seed_products(pool: WritePool, count: int, advance: Advance) -> dict[int, int]:
    """Every demo product's price by id; products left by an earlier seed are kept as they are."""
    rng = random.Random()  # noqa: S311 - demo data, not a secret
    for sku in (f"{SKU_PREFIX}{n:05d}" for n in range(1, count + 1)):
        product = CreateProduct(
            sku=sku,
            name=f"Demo product {sku[len(SKU_PREFIX) :]}",
            price_cents=rng.randrange(99, 20_000),
            stock=rng.randrange(100, 10_000),
        )
        with contextlib.suppress(SkuTaken):  # seeded before: keep it, with its stock and price now
            await pool.run(partial(_create_product, product))
        advance(1)
    return await pool.run(_demo_prices)


async def _create_product(product: CreateProduct, session: AsyncSession) -> None:
    """POST /v1/products's unit of work: the product, and its event (which the pipeline appends
    there, from the answer's bytes: here from the same encoding of the same view)."""
    view = await create_product(product, session)
    await events.append(session, [NewEvent("product.created", view.id, ENCODER.encode(view).decode())])


async def _demo_prices(session: AsyncSession) -> dict[int, int]:
    rows = await session.execute(select(Product.id, Product.price_cents).where(Product.sku.startswith(SKU_PREFIX)))
    return {row.id: row.price_cents for row in rows}


async def seed_orders(
    pool: WritePool,
    customer_ids: list[int],
    prices: dict[int, int],
    count: int,
    advance: Advance,
) -> None:
    rng = random.Random()  # noqa: S311 - demo data, not a secret
    now = datetime.now(UTC)
    product_ids = list(prices)
    for start in range(0, count, ORDER_BATCH):
        size = min(ORDER_BATCH, count - start)
        orders = [demo_order(rng, now, customer_ids, product_ids, prices) for _ in range(size)]
        await pool.run(partial(import_orders, OrderImport(orders, list(range(1, size + 1)))))
        advance(size)


def demo_order(
    rng: random.Random, now: datetime, customer_ids: list[int], product_ids: list[int], prices: dict[int, int]
) -> ImportedOrder:
    products = rng.sample(product_ids, k=min(len(product_ids), rng.randint(1, 4)))
    return ImportedOrder(
        customer_id=rng.choice(customer_ids),
        status=rng.choices(STATUSES, weights=STATUS_WEIGHTS)[0],
        created_at=now - timedelta(seconds=rng.uniform(0, DAYS * 86_400)),
        items=[ImportedLine(product_id=p, quantity=rng.randint(1, 3), unit_price_cents=prices[p]) for p in products],
    )

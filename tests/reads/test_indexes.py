"""The hot queries are served by indexes, never a sequential scan of orders or products, at a realistic size.

The plans are taken on a read-pool connection, so they are planned as the service plans them
(with each execution's values: see ``reads.db``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette

from reads.queries.customers import CUSTOMER_DETAIL
from reads.queries.orders import ORDER_BY_ID, ORDER_PAGE
from reads.queries.products import PRODUCT_SEARCH, like_pattern
from tests.support import running_client

ORDERS = 20_000
PRODUCTS = 100_000  # the size at which a scan of every product starts to show (tens of ms)
CUSTOMERS = 200
SOME_TIME = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
async def many_orders(db: asyncpg.Connection) -> None:
    """SQL, because 20 000 orders through the commands would take minutes."""
    await db.execute(
        "INSERT INTO customers (email, name) SELECT 'c' || n || '@example.com', 'C' FROM generate_series(1, $1) n",
        CUSTOMERS,
    )
    await db.execute(
        """INSERT INTO orders (customer_id, status, item_count, total_cents, created_at)
           SELECT 1 + n % $2, (ARRAY['pending', 'paid', 'shipped', 'cancelled'])[1 + n % 4], 1, 100,
                  timestamptz '2026-01-01' + n * interval '7 minutes'
           FROM generate_series(1, $1) AS n""",
        ORDERS,
        CUSTOMERS,
    )
    await db.execute("ANALYZE customers, orders")


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


@pytest.mark.usefixtures("many_orders")
@pytest.mark.parametrize(
    ("name", "sql", "args"),
    [
        ("order list", ORDER_PAGE, (None, None, None, None, None, None, 21)),
        ("order list, next page", ORDER_PAGE, (None, None, None, None, SOME_TIME, 9000, 21)),
        ("customer orders", ORDER_PAGE, (17, None, None, None, None, None, 21)),
        ("customer orders, next page", ORDER_PAGE, (17, None, None, None, SOME_TIME, 9000, 21)),
        ("orders by status", ORDER_PAGE, (None, "shipped", None, None, None, None, 21)),
        ("orders in a range", ORDER_PAGE, (None, None, SOME_TIME, SOME_TIME.replace(day=2), None, None, 21)),
        ("order by id", ORDER_BY_ID, (12_345,)),
        ("customer detail", CUSTOMER_DETAIL, (17,)),
    ],
)
async def test_query_plan_has_no_sequential_scan_on_orders(
    app: Starlette, name: str, sql: str, args: tuple[object, ...]
) -> None:
    async with running_client(app), app.state.resources.pools["reads"].connection() as connection:
        plan = json.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))[0]["Plan"]

    scans = {
        (node["Node Type"], node.get("Index Name")) for node in nodes(plan) if node.get("Relation Name") == "orders"
    }
    assert scans, name
    assert all(node_type != "Seq Scan" for node_type, _ in scans), (name, scans)


@pytest.fixture
async def many_products(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO products (sku, name, price_cents, stock)"
        " SELECT 'SKU-' || n, 'Product number ' || n, 100, 1 FROM generate_series(1, $1) n",
        PRODUCTS,
    )
    await db.execute("ANALYZE products")


@pytest.mark.usefixtures("many_products")
async def test_a_search_for_a_rare_substring_uses_the_trigram_indexes_not_a_scan(app: Starlette) -> None:
    async with running_client(app), app.state.resources.pools["reads"].connection() as connection:
        plan = json.loads(
            await connection.fetchval(f"EXPLAIN (FORMAT JSON) {PRODUCT_SEARCH}", like_pattern("number 12345"), None, 21)
        )[0]["Plan"]
    indexes = {node.get("Index Name") for node in nodes(plan) if node["Node Type"] == "Bitmap Index Scan"}
    assert not any(node["Node Type"] == "Seq Scan" for node in nodes(plan)), plan
    assert indexes == {"ix_products_name_trgm", "ix_products_sku_trgm"}, plan

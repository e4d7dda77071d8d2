"""The hot queries are served by indexes, never a sequential scan of orders or products, at a realistic size.

The plans are taken on a read-pool connection, both as PostgreSQL plans a statement with its values
and as it may plan a cached statement after five executions: once, without them (a generic plan).
The order list has a text per combination of filters (see ``reads.queries.orders``) so that each
keeps its index under a generic plan too. The export and a product search by pattern are planned
with their values every time (``ReadPool.find``'s ``replan``): only those plans serve them.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from starlette.applications import Starlette

from reads.queries.customers import CUSTOMER_DETAIL
from reads.queries.orders import ORDER_BY_ID, export_batch_sql, order_page_sql, present
from reads.queries.products import like_pattern, product_search_sql
from reads.queries.stats import DAILY_REVENUE, TOP_PRODUCTS
from service.app import create_app
from shared.config import Settings
from tests.support import running_client

ORDERS = 20_000
PRODUCTS = 100_000  # the size at which a scan of every product starts to show (tens of ms)
CUSTOMERS = 200
SOME_TIME = datetime(2026, 6, 1, tzinfo=UTC)
CUSTOMER_INDEX = "ix_orders_customer_id_created_at_id"


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


def orders_scans(plan: dict[str, Any]) -> set[tuple[str, str | None]]:
    """(node type, index) of every node reading orders; a bitmap's index is on its child node."""
    scans = set()
    for node in nodes(plan):
        if node.get("Relation Name") == "orders":
            children = [child.get("Index Name") for child in node.get("Plans", [])]
            scans.add((node["Node Type"], node.get("Index Name") or next(iter(children), None)))
    return scans


def page(*args: object) -> tuple[str, tuple[object, ...]]:
    """The order list's statement for these $1..$7, and them."""
    return order_page_sql(present(args[:4]), args[4] is not None), args


@pytest.mark.usefixtures("many_orders")
@pytest.mark.parametrize(
    ("name", "sql", "args"),
    [
        ("order list", *page(None, None, None, None, None, None, 21)),
        ("order list, next page", *page(None, None, None, None, SOME_TIME, 9000, 21)),
        ("customer orders", *page(17, None, None, None, None, None, 21)),
        ("customer orders, next page", *page(17, None, None, None, SOME_TIME, 9000, 21)),
        ("orders by status", *page(None, "shipped", None, None, None, None, 21)),
        ("orders in a range", *page(None, None, SOME_TIME, SOME_TIME.replace(day=2), None, None, 21)),
        ("customer export", export_batch_sql((True, False, False, False)), (17, None, None, None, 0, 1000)),
        ("order by id", ORDER_BY_ID, (12_345,)),
    ],
)
async def test_query_plan_has_no_sequential_scan_on_orders(
    app: Starlette, name: str, sql: str, args: tuple[object, ...]
) -> None:
    async with running_client(app), app.state.resources.pools["reads"].connection() as connection:
        plan = json.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))[0]["Plan"]

    scans = orders_scans(plan)
    assert scans, name
    assert all(node_type != "Seq Scan" for node_type, _ in scans), (name, scans)


async def generic_plan(connection: Any, sql: str) -> dict[str, Any]:
    """``sql``'s generic plan, made without values. EXPLAIN (GENERIC_PLAN) takes the ``$n`` only over
    the simple query protocol, and asyncpg sends values, which the planner folds in; a prepared
    statement under force_generic_plan gives the same plan."""
    parameters = max(int(n) for n in re.findall(r"\$(\d+)", sql))
    await connection.execute(f"PREPARE variant AS {sql}")
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            explained = await connection.fetchval(
                f"EXPLAIN (FORMAT JSON) EXECUTE variant({', '.join(['NULL'] * parameters)})"
            )
    finally:
        await connection.execute("DEALLOCATE variant")
    plan: dict[str, Any] = json.loads(explained)[0]["Plan"]
    return plan


@pytest.mark.usefixtures("many_orders")
async def test_every_variant_of_the_order_list_keeps_its_index_under_a_generic_plan(app: Starlette) -> None:
    """Each variant walks an index in the page's order (a page stops after its rows), the customer's
    index when a customer is given: "$1 IS NULL OR customer_id = $1" walked every order newest-first."""
    wrong: dict[object, set[tuple[str, str | None]]] = {}
    async with running_client(app), app.state.resources.pools["reads"].connection() as connection:
        for filters, after in itertools.product(itertools.product((False, True), repeat=4), (False, True)):
            scans = orders_scans(await generic_plan(connection, order_page_sql(filters, after)))
            walks = len(scans) == 1 and all(node_type == "Index Scan" for node_type, _ in scans)
            if not walks or (filters[0] and {index for _, index in scans} != {CUSTOMER_INDEX}):
                wrong[filters, after] = scans
        scans = orders_scans(await generic_plan(connection, ORDER_BY_ID))
        if not scans or any(node_type == "Seq Scan" for node_type, _ in scans):
            wrong["order by id"] = scans
    assert not wrong, wrong


@pytest.mark.usefixtures("many_orders")
@pytest.mark.parametrize(
    ("name", "sql", "args"),
    [
        ("customer detail", CUSTOMER_DETAIL, (17,)),
        ("daily revenue", DAILY_REVENUE, (366,)),
        ("top products", TOP_PRODUCTS, (366, 100, None)),
    ],
)
async def test_the_aggregates_read_only_read_models_never_orders(
    app: Starlette, name: str, sql: str, args: tuple[object, ...]
) -> None:
    """Their cost follows days and products, not orders: no plan of theirs, with values or generic,
    reads orders or their items."""
    async with running_client(app), app.state.resources.pools["reads"].connection() as connection:
        planned = json.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))[0]["Plan"]
        generic = await generic_plan(connection, sql)
    for plan in (planned, generic):
        relations = {node["Relation Name"] for node in nodes(plan) if "Relation Name" in node}
        assert relations, name
        assert not relations & {"orders", "order_items"}, (name, relations)


async def test_the_export_and_a_search_by_pattern_are_never_cached_statements(settings: Settings) -> None:
    """Planned with their values every time: PostgreSQL switches a cached statement to a generic plan."""
    app = create_app(msgspec.structs.replace(settings, read_pool_max_size=1))  # one connection sees them all
    async with running_client(app) as client:
        for _ in range(6):
            for url in ("/v1/exports/orders?customer_id=1", "/v1/products?q=x", "/v1/orders?customer_id=1"):
                assert (await client.get(url)).status_code == 200, url
        async with app.state.resources.pools["reads"].connection() as connection:
            cached = await connection.fetch("SELECT statement, generic_plans FROM pg_prepared_statements")
    statements = {row["statement"]: row["generic_plans"] for row in cached}
    assert statements[order_page_sql((True, False, False, False), False)] > 0  # the list's is cached, and generic
    assert export_batch_sql((True, False, False, False)) not in statements
    assert product_search_sql(True, False) not in statements


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
            await connection.fetchval(
                f"EXPLAIN (FORMAT JSON) {product_search_sql(True, False)}", like_pattern("number 12345"), None, 21
            )
        )[0]["Plan"]
    indexes = {node.get("Index Name") for node in nodes(plan) if node["Node Type"] == "Bitmap Index Scan"}
    assert not any(node["Node Type"] == "Seq Scan" for node in nodes(plan)), plan
    assert indexes == {"ix_products_name_trgm", "ix_products_sku_trgm"}, plan

"""The read models agree with the orders they summarize, after any commands, in any interleaving.

The oracle (``testkit.oracle``) is what the stats and the customer detail computed before the read
models: sums over orders. Every check compares the tables with their recomputation from orders
(``disagreements``), and the service's answers with the oracle queries' answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import httpx
import msgspec
import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.schema import alembic_config, upgrade_to_head
from shared.config import Settings, asyncpg_dsn
from shared.dto import CustomerDetail, RevenueReport, TopProductsReport
from shared.salesblocks import window_blocks
from testkit.database import connected
from testkit.oracle import CUSTOMER_DETAIL, DAILY_REVENUE, TOP_PRODUCTS, disagreements
from tests.reads.factories import Shop
from tests.support import AUTH, running_client
from tests.writes.support import NDJSON, line, ndjson, rfc3339

WINDOWS = (1, 2, 7, 30, 366)
T = TypeVar("T")


async def assert_agreement(client: httpx.AsyncClient, db: asyncpg.Connection, customer_ids: list[int]) -> None:
    """Tables equal their recomputation, and every stats and customer answer equals the oracle's."""
    # The oracle sums orders and their items, which the test has just written: planned on statistics
    # from before them (autovacuum's analyze comes when it comes), its joins took a minute for the
    # 92 000 items of tests/test_read_model_extremes.py, where they take a second.
    await db.execute("ANALYZE orders, order_items")
    assert await disagreements(db) == {}

    async def agree(url: str, params: dict[str, int], view: type[Any], sql: str, *args: object) -> None:
        served = await client.get(url, params=params)
        assert served.status_code == 200, served.text
        # Decoded into the view, as the service decodes the SQL's JSON: equal values, not equal text.
        assert msgspec.json.decode(served.content, type=view) == msgspec.json.decode(
            await db.fetchval(sql, *args), type=view
        ), (url, params)

    for days in WINDOWS:
        await agree("/v1/stats/revenue/daily", {"days": days}, RevenueReport, DAILY_REVENUE, days)
        for limit in (3, 100):
            params = {"days": days, "limit": limit}
            await agree("/v1/stats/products/top", params, TopProductsReport, TOP_PRODUCTS, days, limit)
    for customer_id in customer_ids:
        await agree(f"/v1/customers/{customer_id}", {}, CustomerDetail, CUSTOMER_DETAIL, customer_id)


async def import_orders(client: httpx.AsyncClient, orders: list[dict[str, Any]]) -> None:
    response = await client.post("/v1/orders/import", content=ndjson(*orders), headers=NDJSON)
    assert response.status_code == 200, response.text


async def import_new_orders(
    client: httpx.AsyncClient, db: asyncpg.Connection, orders: list[dict[str, Any]]
) -> list[int]:
    """Import ``orders``; the ids they were given, in line order."""
    last = await db.fetchval("SELECT coalesce(max(id), 0) FROM orders")
    await import_orders(client, orders)
    ids: list[int] = await db.fetchval("SELECT array_agg(id ORDER BY id) FROM orders WHERE id > $1", last)
    return ids


async def move_one(client: httpx.AsyncClient, orders: list[int], verb: str, pick: int) -> None:
    """``verb`` (pay, ship or cancel) the order ``pick`` chooses, if there is one: 200, or a 409 when
    its status does not allow it; any other status fails."""
    if orders:
        response = await client.post(f"/v1/orders/{orders[pick % len(orders)]}/{verb}", headers=AUTH)
        assert response.status_code in (200, 409), response.text


# --- each command --------------------------------------------------------------------------------


async def totals(db: asyncpg.Connection) -> tuple[object, ...]:
    row = await db.fetchrow(
        """SELECT (SELECT coalesce(sum(orders), 0) FROM sales_daily) AS orders,
                  (SELECT coalesce(sum(revenue_cents), 0) FROM sales_daily) AS revenue,
                  (SELECT coalesce(sum(units), 0) FROM product_sales WHERE days = 1) AS units,
                  (SELECT coalesce(sum(order_count), 0) FROM customer_totals) AS placed,
                  (SELECT coalesce(sum(lifetime_value_cents), 0) FROM customer_totals) AS value"""
    )
    return tuple(int(value) for value in row.values())


async def test_each_command_moves_exactly_its_share_of_the_read_models(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection
) -> None:
    customer = await shop.customer()
    pen, ink = await shop.product(price_cents=300), await shop.product(price_cents=50)
    assert await totals(db) == (0, 0, 0, 0, 0)

    order = await shop.order(customer["id"], [(pen["id"], 2), (ink["id"], 3)])  # 750
    assert await totals(db) == (0, 0, 0, 1, 0)  # placed: counted for the customer, not sold
    await shop.pay(order["id"])
    assert await totals(db) == (1, 750, 5, 1, 750)
    await shop.ship(order["id"])
    assert await totals(db) == (1, 750, 5, 1, 750)  # shipped counts as paid did
    await shop.reprice(pen["id"], 999)
    assert await totals(db) == (1, 750, 5, 1, 750)  # the order keeps its captured prices

    second = await shop.order(customer["id"], [(pen["id"], 1)])  # 999
    await shop.pay(second["id"])
    await shop.cancel(second["id"])
    assert await totals(db) == (1, 750, 5, 2, 750)  # a paid order cancelled: its sale taken back
    third = await shop.order(customer["id"], [(ink["id"], 1)])
    await shop.cancel(third["id"])
    assert await totals(db) == (1, 750, 5, 3, 750)  # a pending order cancelled: nothing was sold

    refused = await client.post(f"/v1/orders/{third['id']}/pay", headers=AUTH)
    assert refused.status_code == 409
    assert await totals(db) == (1, 750, 5, 3, 750)  # a refused command changes nothing
    await assert_agreement(client, db, [customer["id"]])


async def test_an_import_adds_every_order_to_its_day_and_only_paid_and_shipped_ones_as_sales(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection
) -> None:
    ada, bob = await shop.customer(), await shop.customer()
    product = await shop.product(price_cents=100)
    today = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    midnight = datetime.combine(today, datetime.min.time(), tzinfo=UTC)

    orders = [
        line(who["id"], (product["id"], quantity, price), status=status, created_at=rfc3339(when))
        for who, status, when, quantity, price in [
            (ada, "paid", midnight, 1, 70),
            (ada, "shipped", midnight - timedelta(microseconds=1), 2, 80),
            (bob, "pending", midnight - timedelta(days=3), 4, 90),
            (bob, "cancelled", midnight - timedelta(days=400), 8, 10),
            (bob, "paid", midnight - timedelta(days=400), 16, 1),
        ]
    ]
    await import_orders(client, orders)

    by_day = {row["day"]: tuple(row)[1:] for row in await db.fetch(
        "SELECT day, sum(orders)::int, sum(revenue_cents)::int FROM sales_daily GROUP BY day"
    )}  # fmt: skip
    assert by_day == {today: (1, 70), today - timedelta(days=1): (1, 160), today - timedelta(days=400): (1, 16)}
    placed = dict(await db.fetch("SELECT customer_id, order_count FROM customer_totals"))
    assert placed == {ada["id"]: 2, bob["id"]: 3}
    await assert_agreement(client, db, [ada["id"], bob["id"]])

    # The pending order, paid now, is a sale on its own day, three days ago.
    pending = await db.fetchval("SELECT id FROM orders WHERE status = 'pending'")
    await shop.pay(pending)
    assert (
        await db.fetchval("SELECT sum(revenue_cents) FROM sales_daily WHERE day = $1", today - timedelta(days=3)) == 360
    )
    await assert_agreement(client, db, [ada["id"], bob["id"]])


# --- any sequence of commands --------------------------------------------------------------------

CUSTOMERS, PRODUCTS = 3, 4
STATUSES = ("pending", "paid", "shipped", "cancelled")
DAY_US = 86_400 * 1_000_000

lines = st.lists(
    st.tuples(st.integers(0, PRODUCTS - 1), st.integers(1, 5)), min_size=1, max_size=3, unique_by=lambda line: line[0]
)
imported_order = st.fixed_dictionaries(
    {
        "customer": st.integers(0, CUSTOMERS - 1),
        "status": st.sampled_from(STATUSES),
        # From tomorrow (outside every window) to past the longest window, day edges included.
        "days_ago": st.integers(-1, 370),
        "microsecond": st.one_of(st.sampled_from([0, 1, DAY_US - 1]), st.integers(0, DAY_US - 1)),
        "lines": st.lists(
            st.tuples(st.integers(0, PRODUCTS - 1), st.integers(1, 5), st.integers(0, 10_000)),
            min_size=1,
            max_size=3,
            unique_by=lambda line: line[0],
        ),
    }
)
step = st.one_of(
    st.tuples(st.just("place"), st.integers(0, CUSTOMERS - 1), lines),
    st.tuples(st.sampled_from(["pay", "ship", "cancel"]), st.integers(0, 1_000)),
    st.tuples(st.sampled_from(["pay", "ship", "cancel"]), st.integers(0, 1_000)),
    st.tuples(st.just("import"), st.lists(imported_order, min_size=1, max_size=4)),
    st.tuples(st.just("reprice"), st.integers(0, PRODUCTS - 1), st.integers(0, 10_000)),
)


@settings(
    max_examples=40,
    deadline=None,
    # The database is not emptied between examples: the agreement must hold over all of them.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=25))
async def test_any_sequence_of_commands_leaves_the_read_models_equal_to_the_recomputation(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection, steps: list[tuple[Any, ...]]
) -> None:
    customers = [(await shop.customer())["id"] for _ in range(CUSTOMERS)]
    products = [(await shop.product(price_cents=100 * (n + 1), stock=100_000))["id"] for n in range(PRODUCTS)]
    today = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    orders: list[int] = []
    for verb, *args in steps:
        if verb == "place":
            customer, wanted = args
            order = await shop.order(customers[customer], [(products[p], quantity) for p, quantity in wanted])
            orders.append(order["id"])
        elif verb == "import":
            orders += await import_new_orders(
                client, db, [imported(spec, customers, products, today) for spec in args[0]]
            )
        elif verb == "reprice":
            await shop.reprice(products[args[0]], args[1])
        else:
            await move_one(client, orders, verb, args[0])
    await assert_agreement(client, db, customers)


def imported(spec: dict[str, Any], customers: list[int], products: list[int], today: date) -> dict[str, Any]:
    day = datetime.combine(today - timedelta(days=spec["days_ago"]), datetime.min.time(), tzinfo=UTC)
    return line(
        customers[spec["customer"]],
        *((products[p], quantity, price) for p, quantity, price in spec["lines"]),
        status=spec["status"],
        created_at=rfc3339(day + timedelta(microseconds=spec["microsecond"])),
    )


# --- concurrency ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stripes", [1, 8])
async def test_fifty_concurrent_pays_and_cancels_of_one_product_on_one_day_add_up(
    settings: Settings, db: asyncpg.Connection, stripes: int
) -> None:
    """Every order is paid, and most are also cancelled: some after their pay, some racing it, while
    the top products are read. With one stripe every pay and cancel of the day queues on one row;
    with eight they spread."""
    roomy = msgspec.structs.replace(
        settings, read_model_stripes=stripes, write_pool_max_waiting=200, write_pool_timeout=60.0
    )
    app = create_app(roomy)
    async with running_client(app) as client:
        shop = Shop(client, db)
        customer = (await shop.customer())["id"]
        product = (await shop.product(price_cents=125, stock=10_000))["id"]
        orders = [(await shop.order(customer, [(product, 1 + n % 7)]))["id"] for n in range(50)]

        async def pay_then_cancel(order_id: int, n: int) -> list[int]:
            codes = [(await client.post(f"/v1/orders/{order_id}/pay", headers=AUTH)).status_code]
            if n % 3 == 0:
                codes.append((await client.post(f"/v1/orders/{order_id}/cancel", headers=AUTH)).status_code)
            return codes

        async def racing_cancel(order_id: int) -> list[int]:
            return [(await client.post(f"/v1/orders/{order_id}/cancel", headers=AUTH)).status_code]

        async def reading() -> list[int]:  # the top products' answers kept and replaced meanwhile
            return [
                (await client.get("/v1/stats/products/top", params={"days": 7, "limit": 100})).status_code
                for _ in range(10)
            ]

        work = [pay_then_cancel(order_id, n) for n, order_id in enumerate(orders)]
        work += [racing_cancel(order_id) for n, order_id in enumerate(orders) if n % 3 == 1]
        work += [reading() for _ in range(5)]
        outcomes = await asyncio.gather(*work)

        assert {code for codes in outcomes for code in codes} <= {200, 409}
        statuses = dict(await db.fetch("SELECT status, count(*) FROM orders GROUP BY status"))
        assert statuses.get("paid", 0) > 0
        assert statuses.get("cancelled", 0) > 0
        await assert_agreement(client, db, [customer])
        assert await db.fetchval("SELECT stock FROM products WHERE id = $1", product) == 10_000 - await db.fetchval(
            "SELECT coalesce(sum(i.quantity), 0) FROM order_items i JOIN orders o ON o.id = i.order_id "
            "WHERE o.status <> 'cancelled'"
        )
        stripes_used = await db.fetchval("SELECT count(*) FROM sales_daily")
        assert 1 <= stripes_used <= stripes


# --- the migration --------------------------------------------------------------------------------


ORDERS_BEFORE_READ_MODELS = """
    INSERT INTO customers (email, name) VALUES ('a@example.com', 'A'), ('b@example.com', 'B');
    INSERT INTO products (sku, name, price_cents, stock) VALUES ('P1', 'P1', 100, 10), ('P2', 'P2', 7, 10);
    INSERT INTO orders (customer_id, status, item_count, total_cents, created_at)
    SELECT 1 + n % 2, (ARRAY['pending', 'paid', 'shipped', 'cancelled'])[1 + n % 4], 3, 107 + n,
           timestamptz '2026-11-20 23:59:59.999999+00' + (n % 3) * interval '1 day' + n * interval '1 us'
      FROM generate_series(1, 40) AS n;
    -- rows written by hand at +-infinity: summed on their (infinite) day, in no window
    INSERT INTO orders (customer_id, status, item_count, total_cents, created_at)
    VALUES (1, 'paid', 3, 5, 'infinity'), (2, 'shipped', 3, 7, '-infinity');
    INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price_cents)
    SELECT id, line, line, line, 100 + id FROM orders, generate_series(1, 2) AS line;
"""
READ_MODEL_ROWS = """
    SELECT (SELECT count(*) FROM sales_daily), (SELECT count(*) FROM product_sales WHERE days = 1),
           (SELECT count(*) FROM customer_totals)
"""


def on(url: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """``work`` on a connection to ``url``, from a test outside an event loop."""

    async def run() -> T:
        async with connected(asyncpg_dsn(url)) as connection:
            return await work(connection)

    return asyncio.run(run())


def test_the_migration_backfills_the_read_models_from_existing_orders(empty_database: str) -> None:
    command.upgrade(alembic_config(empty_database), "0002")
    on(empty_database, lambda db: db.execute(ORDERS_BEFORE_READ_MODELS))

    upgrade_to_head(empty_database)

    assert on(empty_database, disagreements) == {}
    counts = tuple(on(empty_database, lambda db: db.fetchrow(READ_MODEL_ROWS)))
    assert counts == (5, 10, 2)  # three days and the two infinite ones with sales; two products each; two customers
    # Which orders were imported was never recorded: all are taken to hold their stock, as before (0006).
    assert on(empty_database, lambda db: db.fetchval("SELECT bool_and(took_stock) FROM orders"))


# --- the blocks of days ----------------------------------------------------------------------------


# Every window of 1..366 days ending on each of 256 consecutive days: every way the window's ends can
# fall against the blocks (the longest is 256 days, so the pattern repeats every 256 days), at days
# numbered around 739 000 as today's are.
ALL_WINDOWS_BLOCKS = f"""
    SELECT last_day::date, window_days, b.days, b.first_day
      FROM generate_series(date '2025-12-20', date '2025-12-20' + 255, interval '1 day') AS last_day,
           generate_series(1, 366) AS window_days,
           LATERAL ({window_blocks("window_days", "last_day::date")}) b
     ORDER BY last_day, window_days, b.first_day
"""


async def test_every_window_is_read_from_few_blocks_that_cover_each_of_its_days_once(db: asyncpg.Connection) -> None:
    windows: dict[tuple[date, int], list[tuple[int, date]]] = {}
    for row in await db.fetch(ALL_WINDOWS_BLOCKS):
        windows.setdefault((row["last_day"], row["window_days"]), []).append((row["days"], row["first_day"]))
    assert len(windows) == 256 * 366
    for (last_day, days), blocks in windows.items():
        # back to back, from the window's first day to its last: each day once
        starts = [first for _, first in blocks]
        ends = [first + timedelta(length - 1) for length, first in blocks]
        assert starts[0] == last_day - timedelta(days - 1), (last_day, days)
        assert ends[-1] == last_day, (last_day, days)
        assert all(end + timedelta(1) == start for end, start in zip(ends, starts[1:], strict=False)), (last_day, days)
        assert all((first - date(1, 1, 1)).days % length == 0 for length, first in blocks), (last_day, days)
        # canonical: below the longest length, never both halves of one block (it would be read whole)
        below = [(length, first) for length, first in blocks if length < 256]
        parents = {(length, (first - date(1, 1, 1)).days // (2 * length)) for length, first in below}
        assert len(parents) == len(below), (last_day, days)
        assert len(blocks) <= 2 * 9, (last_day, days)  # at most two blocks of each of the 9 lengths


async def test_the_stats_window_ends_today(db: asyncpg.Connection) -> None:
    today = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    blocks = await db.fetch(window_blocks("$1::int"), 30)
    assert max(block["first_day"] + timedelta(block["days"] - 1) for block in blocks) == today
    assert sum(block["days"] for block in blocks) == 30

"""Sums at their extremes: orders inside every documented bound, added up past bigint, break nothing.

The largest order a command accepts is 100 lines of 1 000 units at 100 000 000 000 cents, 10**16
cents; 923 of them pass bigint (9.2 * 10**18). The read models add such orders up without end, so
they keep their sums in numeric (migration ``0005``): every command still succeeds, whoever sold
what, and every sum stays exact (compared with the oracle's recomputation from orders).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from service.app import create_app
from shared.config import Settings
from tests.conftest import EMPTY_TABLES
from tests.reads.factories import Shop
from tests.support import AUTH, running_client
from tests.test_read_models import assert_agreement, import_new_orders, import_orders, move_one
from tests.writes.support import line, rfc3339

BIGINT_MAX = 2**63 - 1
MAX_PRICE = 100_000_000_000
MAX_QUANTITY = 1000
LINES = 100  # the most lines an order has, each of another product
MAX_ORDER = LINES * MAX_QUANTITY * MAX_PRICE  # 10**16 cents
BLOCK = 256  # the longest block of days (shared.salesblocks)


@pytest.fixture
def one_stripe(settings: Settings) -> Settings:
    """Every sale of a day on one row of sales_daily: the hot row at its fullest. An import of 100 000
    items may take seconds while the suite's standby replays them: these tests are about sums, so
    the statement timeout is a minute, far past any of them, and a statement that runs away fails
    the test instead of hanging the suite (as an import's read-model statement did when it was still
    joined to the rows just copied in: ``tests/writes/test_plans.py``)."""
    return msgspec.structs.replace(settings, read_model_stripes=1, write_statement_timeout_ms=60_000)


@pytest.fixture
async def client(one_stripe: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(create_app(one_stripe)) as http:
        yield http


async def dearest_products(shop: Shop, n: int = LINES) -> list[int]:
    return [(await shop.product(price_cents=MAX_PRICE, stock=1_000_000_000))["id"] for _ in range(n)]


def largest_orders(
    customer_id: int, products: list[int], copies: int, when: datetime, status: str = "paid"
) -> list[Any]:
    items = [(product, MAX_QUANTITY, MAX_PRICE) for product in products]
    return [line(customer_id, *items, status=status, created_at=rfc3339(when)) for _ in range(copies)]


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def test_paying_past_bigint_in_one_customers_and_one_days_sums_succeeds_and_stays_exact(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection
) -> None:
    """The outside tester's reproducer: 922 largest orders imported, then one more placed and paid."""
    ada = (await shop.customer())["id"]
    products = await dearest_products(shop)
    await import_orders(client, largest_orders(ada, products, 922, now()))

    order = await shop.order(ada, [(product, MAX_QUANTITY) for product in products])
    paid = await client.post(f"/v1/orders/{order['id']}/pay", headers=AUTH)
    assert paid.status_code == 200, paid.text  # bigint out of range, a 500, before numeric sums

    detail = (await client.get(f"/v1/customers/{ada}")).json()
    assert detail["lifetime_value_cents"] == 923 * MAX_ORDER > BIGINT_MAX
    assert detail["order_count"] == 923
    today = (await client.get("/v1/stats/revenue/daily", params={"days": 1})).json()["days"][0]
    assert (today["orders"], today["revenue_cents"]) == (923, 923 * MAX_ORDER)
    await assert_agreement(client, db, [ada])


async def test_one_customers_largest_orders_leave_another_customers_place_and_pay_untouched(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection
) -> None:
    ada, bob = (await shop.customer())["id"], (await shop.customer())["id"]
    products = await dearest_products(shop)
    for _ in range(2):  # today's one stripe past bigint twice over
        await import_orders(client, largest_orders(ada, products, 922, now()))
    cheap = (await shop.product(price_cents=1000, stock=100))["id"]

    for _ in range(10):
        order = await shop.order(bob, [(cheap, 1)])
        assert (await client.post(f"/v1/orders/{order['id']}/pay", headers=AUTH)).status_code == 200

    assert (await client.get(f"/v1/customers/{bob}")).json()["lifetime_value_cents"] == 10 * 1000
    today = (await client.get("/v1/stats/revenue/daily", params={"days": 1})).json()["days"][0]
    assert today["revenue_cents"] == 2 * 922 * MAX_ORDER + 10 * 1000
    await assert_agreement(client, db, [ada, bob])


def last_block_boundary(today: date) -> date:
    """The first day of the newest 256-day block that starts at least a week before ``today``."""
    number = (today - date(1, 1, 1)).days - 7
    return date(1, 1, 1) + timedelta(days=number - number % BLOCK)


async def test_a_window_summing_blocks_past_bigint_is_answered_exactly(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection
) -> None:
    """Each 256-day block's sum fits bigint; the window reading both blocks does not."""
    customers = [(await shop.customer())["id"] for _ in range(2)]
    product = (await shop.product(price_cents=MAX_PRICE, stock=1))["id"]
    today = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    boundary = datetime.combine(last_block_boundary(today), datetime.min.time(), tzinfo=UTC)
    half = BIGINT_MAX // (MAX_QUANTITY * MAX_PRICE) // 2 + 1  # two halves: just past bigint
    orders = [
        *largest_orders(customers[0], [product], half, boundary - timedelta(microseconds=1)),
        *largest_orders(customers[1], [product], half, boundary),
    ]
    await import_orders(client, orders)

    days = (today - boundary.date()).days + 2
    top = await client.get("/v1/stats/products/top", params={"days": days})
    assert top.status_code == 200, top.text
    [sold] = top.json()["products"]
    assert (sold["units"], sold["revenue_cents"]) == (2 * half * MAX_QUANTITY, 2 * half * MAX_QUANTITY * MAX_PRICE)
    assert sold["revenue_cents"] > BIGINT_MAX
    await assert_agreement(client, db, customers)


# --- any sequence, at the extremes ------------------------------------------------------------------

PRODUCTS = 100
STATUSES = ("pending", "paid", "shipped", "cancelled")

extreme_step = st.one_of(
    # the largest order, placed: every product at the most units
    st.tuples(st.just("place"), st.integers(0, 1)),
    st.tuples(st.sampled_from(["pay", "ship", "cancel"]), st.integers(0, 1_000)),
    # up to a thousand copies of the largest order, imported on today, yesterday or either side of a
    # 256-day block boundary
    st.tuples(
        st.just("import"),
        st.integers(0, 1),
        st.one_of(st.just(1000), st.integers(1, 1000)),  # 923 pass bigint
        st.sampled_from(STATUSES),
        st.sampled_from(["today", "yesterday", "before boundary", "at boundary"]),
    ),
    st.tuples(st.just("reprice"), st.sampled_from([0, 1, MAX_PRICE])),
)


@settings(
    max_examples=6,
    # No shrinking: an example imports up to 100 000 items, so shrinking a failure would take many
    # minutes; Hypothesis still prints the failing example.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(extreme_step, min_size=1, max_size=6))
async def test_any_sequence_of_the_largest_orders_succeeds_and_leaves_every_sum_exact(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection, steps: list[tuple[Any, ...]]
) -> None:
    # Each example from empty tables, so the oracle recomputes hundreds of thousands of items, not
    # millions; the new tokens make the service rank the top products again.
    await db.execute(EMPTY_TABLES)
    await db.execute("UPDATE product_sales_versions SET token = gen_random_uuid()")
    customers = [(await shop.customer())["id"] for _ in range(2)]
    products = await dearest_products(shop, PRODUCTS)
    today = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    boundary = datetime.combine(last_block_boundary(today), datetime.min.time(), tzinfo=UTC)
    days = {
        "today": now(),
        "yesterday": now() - timedelta(days=1),
        "before boundary": boundary - timedelta(microseconds=1),
        "at boundary": boundary,
    }
    orders: list[int] = []
    for verb, *args in steps:
        if verb == "place":
            orders.append((await shop.order(customers[args[0]], [(p, MAX_QUANTITY) for p in products]))["id"])
        elif verb == "import":
            customer, copies, status, day = args
            orders += await import_new_orders(
                client, db, largest_orders(customers[customer], products, copies, days[day], status)
            )
        elif verb == "reprice":
            for product in products[:10]:
                await shop.reprice(product, args[0])
        else:
            await move_one(client, orders, verb, args[0])
    await assert_agreement(client, db, customers)

"""Daily revenue and top products over whole UTC days ending today, paid and shipped orders only.

Orders are placed, paid and shipped through the commands; only their day is set with SQL
(``Shop.backdate``, while pending), because no command places an order in the past. Paying one
then counts it on that day in the read models the stats read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from datetime import UTC, date, datetime, time, timedelta

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from reads.answers import CAPACITY
from reads.db import ReadPool
from reads.queries.stats import TOP_PRODUCTS
from shared.metrics import REGISTRY
from tests.reads.factories import Body, Shop
from tests.writes.support import NDJSON, line, ndjson, rfc3339


@pytest.fixture
async def today(db: asyncpg.Connection) -> date:
    """Today as the database counts UTC days."""
    day: date = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    return day


def at(day: date, hour: int = 12, *, microsecond: int = 0) -> datetime:
    return datetime.combine(day, time(hour, microsecond=microsecond), tzinfo=UTC)


async def order_on(shop: Shop, customer: Body, lines: list[tuple[int, int]], when: datetime, status: str) -> Body:
    order = await shop.order(customer["id"], lines)
    await shop.backdate(order["id"], when)
    if status in ("paid", "shipped", "cancelled"):
        order = await shop.pay(order["id"])
    if status == "shipped":
        order = await shop.ship(order["id"])
    if status == "cancelled":
        order = await shop.cancel(order["id"])
    return order


async def test_daily_revenue_has_exactly_days_entries_newest_first_with_zero_days(
    client: httpx.AsyncClient, shop: Shop, today: date
) -> None:
    customer = await shop.customer()
    product = await shop.product(price_cents=100)
    two_days_ago = today - timedelta(days=2)
    first_day = today - timedelta(days=6)
    for when, status, quantity in [
        (at(today, 1), "paid", 1),
        (at(today, 2), "shipped", 2),
        (at(today, 3), "pending", 4),
        (at(today - timedelta(days=1)), "cancelled", 8),
        (at(two_days_ago, 0), "paid", 16),
        (at(two_days_ago, 23, microsecond=999_999), "shipped", 32),
        (at(first_day, 0), "paid", 64),
        (at(first_day, 0) - timedelta(microseconds=1), "paid", 128),
    ]:
        await order_on(shop, customer, [(product["id"], quantity)], when, status)

    response = await client.get("/v1/stats/revenue/daily", params={"days": 7})

    assert response.status_code == 200
    expected = {day: (0, 0) for day in range(7)} | {0: (2, 300), 2: (2, 4800), 6: (1, 6400)}
    assert response.json() == {
        "days": [
            {"day": (today - timedelta(days=n)).isoformat(), "orders": orders, "revenue_cents": revenue}
            for n, (orders, revenue) in sorted(expected.items())
        ]
    }


async def test_daily_revenue_defaults_to_30_days_and_takes_up_to_366(client: httpx.AsyncClient, today: date) -> None:
    default = (await client.get("/v1/stats/revenue/daily")).json()["days"]
    longest = (await client.get("/v1/stats/revenue/daily", params={"days": 366})).json()["days"]

    assert len(default) == 30
    assert len(longest) == 366
    assert longest[0] == {"day": today.isoformat(), "orders": 0, "revenue_cents": 0}
    assert longest[-1]["day"] == (today - timedelta(days=365)).isoformat()


async def test_top_products_rank_by_captured_revenue_then_id_over_paid_and_shipped_orders_in_the_window(
    client: httpx.AsyncClient, shop: Shop, today: date
) -> None:
    customer = await shop.customer()
    mug = await shop.product(sku="MUG", name="Mug", price_cents=500)
    pen = await shop.product(sku="PEN", name="Pen", price_cents=100)
    ink = await shop.product(sku="INK", name="Ink", price_cents=250)
    cap = await shop.product(sku="CAP", name="Cap", price_cents=5000)
    await order_on(shop, customer, [(mug["id"], 2), (pen["id"], 5)], at(today), "paid")
    await order_on(shop, customer, [(pen["id"], 5), (ink["id"], 4)], at(today - timedelta(days=3)), "shipped")
    await order_on(shop, customer, [(cap["id"], 9)], at(today), "pending")
    await order_on(shop, customer, [(cap["id"], 9)], at(today), "cancelled")
    await order_on(shop, customer, [(cap["id"], 9)], at(today - timedelta(days=7)), "paid")
    await shop.reprice(mug["id"], 1)

    response = await client.get("/v1/stats/products/top", params={"days": 7})

    assert response.status_code == 200
    assert response.json() == {
        "products": [
            {"product_id": mug["id"], "sku": "MUG", "name": "Mug", "units": 2, "revenue_cents": 1000},
            {"product_id": pen["id"], "sku": "PEN", "name": "Pen", "units": 10, "revenue_cents": 1000},
            {"product_id": ink["id"], "sku": "INK", "name": "Ink", "units": 4, "revenue_cents": 1000},
        ]
    }
    limited = await client.get("/v1/stats/products/top", params={"days": 8, "limit": 2})
    assert [p["sku"] for p in limited.json()["products"]] == ["CAP", "MUG"]


# --- the top products' kept answers ------------------------------------------------------------------


def answers(result: str) -> float:
    return REGISTRY.get_sample_value("stats_answers_total", {"result": result}) or 0.0


async def top(client: httpx.AsyncClient, days: int = 7, limit: int = 10) -> list[tuple[str, int, int]]:
    response = await client.get("/v1/stats/products/top", params={"days": days, "limit": limit})
    assert response.status_code == 200, response.text
    return [(p["sku"], p["units"], p["revenue_cents"]) for p in response.json()["products"]]


async def test_an_answer_is_reused_while_no_sale_changes_it_and_every_sale_is_seen_by_the_next_query(
    client: httpx.AsyncClient, shop: Shop, today: date
) -> None:
    customer = await shop.customer()
    mug = await shop.product(sku="MUG", name="Mug", price_cents=500)
    pen = await shop.product(sku="PEN", name="Pen", price_cents=100)
    first = await order_on(shop, customer, [(mug["id"], 1)], at(today), "paid")
    computed, reused = answers("computed"), answers("reused")

    assert await top(client) == [("MUG", 1, 500)]
    assert await top(client) == [("MUG", 1, 500)]
    # Commands that sell nothing leave the answer as it was: placed, shipped, repriced.
    second = await shop.order(customer["id"], [(pen["id"], 3)])
    await shop.ship(first["id"])
    await shop.reprice(mug["id"], 7)
    assert await top(client) == [("MUG", 1, 500)]
    assert (answers("computed") - computed, answers("reused") - reused) == (1, 2)

    # Each sale, and each taken back, is in the very next answer.
    await shop.pay(second["id"])
    assert await top(client) == [("MUG", 1, 500), ("PEN", 3, 300)]
    await shop.cancel(second["id"])
    assert await top(client) == [("MUG", 1, 500)]
    imported = line(customer["id"], (pen["id"], 2, 1000), status="paid", created_at=rfc3339(at(today, 1)))
    response = await client.post("/v1/orders/import", content=ndjson(imported), headers=NDJSON)
    assert response.status_code == 200, response.text
    assert await top(client) == [("PEN", 2, 2000), ("MUG", 1, 500)]
    assert answers("computed") - computed == 4

    # Another window or limit is another question, with an answer of its own.
    assert await top(client, days=1, limit=1) == [("PEN", 2, 2000)]
    assert await top(client) == [("PEN", 2, 2000), ("MUG", 1, 500)]
    assert (answers("computed") - computed, answers("reused") - reused) == (5, 3)


async def test_every_command_that_sells_puts_a_new_token_in_its_stripe_and_no_other_command_does(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection, today: date
) -> None:
    """The version is today and every stripe's token: pays, cancels of paid orders and imports of
    paid orders change it; placing, shipping, cancelling a pending order and repricing do not."""
    versions: list[dict[int, object]] = []

    async def then(command: Awaitable[object]) -> None:
        await command
        versions.append(dict(await db.fetch("SELECT stripe, token FROM product_sales_versions")))

    customer = await shop.customer()
    product = await shop.product(price_cents=100)
    pending = (await shop.order(customer["id"], [(product["id"], 1)]))["id"]
    await then(shop.reprice(product["id"], 200))
    await then(shop.pay(pending))
    await then(shop.ship(pending))
    refunded = (await shop.order(customer["id"], [(product["id"], 1)]))["id"]
    await then(shop.pay(refunded))
    await then(shop.cancel(refunded))
    await then(shop.cancel((await shop.order(customer["id"], [(product["id"], 1)]))["id"]))
    imported = [
        line(customer["id"], (product["id"], 1, 10), status=status, created_at=rfc3339(at(today - timedelta(days=9))))
        for status in ("paid", "pending")
    ]
    for order in imported:
        response = await client.post("/v1/orders/import", content=ndjson(order), headers=NDJSON)
        assert response.status_code == 200, response.text
        versions.append(dict(await db.fetch("SELECT stripe, token FROM product_sales_versions")))

    # The version a query reads: the day it ends its window on, then the tokens by stripe.
    found = json.loads(await db.fetchval(TOP_PRODUCTS, 7, 10, None))
    tokens = [str(token) for _, token in sorted(versions[-1].items())]
    assert found["version"] == " ".join([today.isoformat(), *tokens])

    repriced, paid, shipped, paid_again, cancelled_paid, cancelled_pending, imported_paid, imported_pending = versions
    assert paid != repriced
    assert shipped == paid
    assert paid_again != shipped
    assert cancelled_paid != paid_again
    assert cancelled_pending == cancelled_paid
    assert imported_paid != cancelled_pending
    assert imported_pending == imported_paid


async def test_the_kept_answers_are_bounded_whatever_the_questions(client: httpx.AsyncClient, app: Starlette) -> None:
    """No client can grow them: past ``CAPACITY`` questions, the least recently asked leave."""
    for days in range(1, CAPACITY + 45):
        assert (await client.get("/v1/stats/products/top", params={"days": days})).status_code == 200
    pool = app.state.resources.pools["reads"]
    assert isinstance(pool, ReadPool)
    assert len(pool.answers) == CAPACITY
    computed = answers("computed")
    await client.get("/v1/stats/products/top", params={"days": CAPACITY + 44})  # the latest: still kept
    assert answers("computed") == computed
    await client.get("/v1/stats/products/top", params={"days": 44})  # gone: computed again
    assert answers("computed") == computed + 1
    assert len(pool.answers) == CAPACITY

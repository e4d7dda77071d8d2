"""Daily revenue and top products over whole UTC days ending today, paid and shipped orders only.

Orders are placed, paid and shipped through the commands; only their day is set with SQL
(``Shop.backdate``, while pending), because no command places an order in the past. Paying one
then counts it on that day in the read models the stats read.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import asyncpg
import httpx
import pytest

from tests.reads.factories import Body, Shop


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

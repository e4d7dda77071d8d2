"""orders-api seed: demo data through the bulk write paths."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from click.testing import CliRunner

from service.cli import main

SUMMARY = """
    SELECT (SELECT count(*) FROM customers) AS customers,
           (SELECT count(*) FROM products) AS products,
           (SELECT count(*) FROM orders) AS orders,
           (SELECT array_agg(DISTINCT status ORDER BY status) FROM orders) AS statuses,
           (SELECT bool_and(created_at BETWEEN now() - interval '90 days 1 minute' AND now()) FROM orders) AS recent,
           (SELECT bool_and(o.item_count = i.units AND o.total_cents = i.total)
              FROM orders o
              JOIN (SELECT order_id, sum(quantity) AS units, sum(quantity * unit_price_cents) AS total
                      FROM order_items GROUP BY order_id) i ON i.order_id = o.id) AS totals_add_up,
           (SELECT count(*) FROM events WHERE position IS NOT NULL) AS events_in_the_feed,
           (SELECT count(*) FROM events WHERE position IS NULL) AS events_waiting
"""


def summary(database_url: str) -> dict[str, Any]:
    async def fetch() -> dict[str, Any]:
        connection = await asyncpg.connect(database_url)
        try:
            return dict(await connection.fetchrow(SUMMARY))
        finally:
            await connection.close()

    return asyncio.run(fetch())


def seed(database_url: str) -> None:
    args = ["seed", "--customers", "30", "--products", "8", "--orders", "400"]
    result = CliRunner().invoke(main, args, env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "seeded 400 orders, for 30 demo customers and 8 demo products" in result.output


def test_seed_fills_every_table_with_recent_orders_of_every_status(database_url: str) -> None:
    seed(database_url)
    assert summary(database_url) == {
        "customers": 30,
        "products": 8,
        "orders": 400,
        "statuses": ["cancelled", "paid", "pending", "shipped"],
        "recent": True,
        "totals_add_up": True,
        # One event a row, each in the feed when the seed ends (writes.events.position_events).
        "events_in_the_feed": 30 + 8 + 400,
        "events_waiting": 0,
    }


def test_seeding_again_keeps_customers_and_products_and_adds_orders(database_url: str) -> None:
    seed(database_url)
    seed(database_url)
    counts = summary(database_url)
    assert (counts["customers"], counts["products"], counts["orders"]) == (30, 8, 800)

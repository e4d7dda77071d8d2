"""The stats endpoints at two sizes of the orders table (``Sizes.orders`` and ``Sizes.more_orders``,
reached by importing more demo orders between the two measurements). A dashboard asks these
questions; the point is how their latency follows the table's size."""

from __future__ import annotations

import asyncio

import asyncpg

from bench.core import Context, Measurement
from bench.database import add_orders
from bench.servers import serve_service
from bench.wrk import pooled, wrk

SCENARIO = "stats"
CONNECTIONS = 4
ENDPOINTS = ("/v1/stats/revenue/daily?days=30", "/v1/stats/products/top?days=30&limit=10")


def run(ctx: Context) -> list[Measurement]:
    measurements = measure(ctx)
    missing = ctx.sizes.more_orders - asyncio.run(order_count(ctx.database_url))
    if missing > 0:
        add_orders(ctx.database_url, missing)
    return measurements + measure(ctx)


def measure(ctx: Context) -> list[Measurement]:
    orders = asyncio.run(order_count(ctx.database_url))
    with serve_service(ctx, workers=1) as server:
        measurements = []
        for path in ENDPOINTS:
            wrk(server.url, path, 1, seconds=1, connections=CONNECTIONS)  # warm-up
            results = [wrk(server.url, path, 1, ctx.sizes.seconds, connections=CONNECTIONS)]
            case = f"GET {path.partition('?')[0]}"
            measurements.append(pooled(SCENARIO, case, f"{orders:,} orders".replace(",", " "), results))
    return measurements


async def order_count(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM orders")
    finally:
        await connection.close()
    return count

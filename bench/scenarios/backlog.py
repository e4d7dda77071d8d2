"""Draining a backlog of the event feed, for the events scenario (``bench.scenarios.events``):
``BACKLOG`` events inserted with SQL, ``BACKLOG_BATCH`` a transaction, each batch positioned after
its commit as the service's rounds position them (``writes.events.position_all``), their data the
view of a real order of one line (about 400 bytes). Then one consumer pages through them from where
the feed stood before, ``PAGE`` a page, until a page is empty: events a second, and each page's
round trip. Nothing else appends meanwhile, so it must read each of them exactly once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from bench.core import SMOKE, Context, Measurement, quantile_ms
from bench.scenarios.feed import PAGE, PAGE_DECODER, SCENARIO, head_cursor
from bench.scenarios.writes import InvariantBroken
from bench.servers import Server
from reads.queries.orders import ORDER_BY_ID
from testkit.database import connected
from writes.events import position_all

BACKLOG = 1_000_000
BACKLOG_BATCH = 100_000
DRAIN_WITHIN = 900.0  # seconds; a drain slower than this is a failure, not a number

BACKLOG_EVENTS = """
    INSERT INTO events (type, subject_type, subject_id, data)
    SELECT 'order.placed', 'order', n, $1::json FROM generate_series($2::bigint, $3::bigint) AS n
"""
# An order of one line: its view is about 400 bytes of JSON, as the service's events carry.
ONE_LINE = "SELECT order_id FROM order_items GROUP BY order_id HAVING count(*) = 1 ORDER BY order_id LIMIT 1"


async def append_backlog(url: str, events: int) -> tuple[float, int]:
    """``events`` events, a batch a transaction, then vacuumed and analyzed as autovacuum would;
    returns the seconds the inserts and their commits took, and each event's data size."""
    async with connected(url) as connection:
        data: str = await connection.fetchval(ORDER_BY_ID, await connection.fetchval(ONE_LINE))
        started = time.perf_counter()
        for first in range(1, events + 1, BACKLOG_BATCH):
            async with connection.transaction():
                await connection.execute(BACKLOG_EVENTS, data, first, min(first + BACKLOG_BATCH, events + 1) - 1)
            await position_all(connection)
        took = time.perf_counter() - started
        await connection.execute("VACUUM ANALYZE events")
    return took, len(data.encode())


@dataclass
class Drained:
    events: int = 0
    seconds: float = 0.0
    page_seconds: list[float] = field(default_factory=list)


async def drain(url: str, cursor: str, expected: int) -> Drained:
    found = Drained()
    deadline = time.monotonic() + DRAIN_WITHIN
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        started = time.perf_counter()
        for _ in range(expected // PAGE + 2):  # the pages, the last short one and the empty one
            sent = time.perf_counter()
            response = await http.get("/v1/events", params={"after": cursor, "limit": PAGE})
            found.page_seconds.append(time.perf_counter() - sent)
            response.raise_for_status()
            page = PAGE_DECODER.decode(response.content)
            if not page.items:
                break
            found.events += len(page.items)
            cursor = page.next_cursor
            if time.monotonic() > deadline:
                raise RuntimeError(f"draining {expected} events took over {DRAIN_WITHIN:g} s")
        found.seconds = time.perf_counter() - started
    return found


def run(ctx: Context, service: Server) -> list[Measurement]:
    events = 10_000 if ctx.sizes is SMOKE else BACKLOG
    cursor = asyncio.run(head_cursor(ctx.database_url))
    inserted_in, data_bytes = asyncio.run(append_backlog(ctx.database_url, events))
    cpu = service.cpu_seconds()
    found = asyncio.run(drain(service.url, cursor, events))
    cpu = service.cpu_seconds() - cpu
    if found.events != events:  # nothing else appended meanwhile: each backlog event exactly once
        raise InvariantBroken(f"a backlog of {events} events drained as {found.events}")
    pages = sorted(found.page_seconds)
    return [
        Measurement(
            scenario=SCENARIO,
            case=f"drain a backlog of {events:,} events · GET /v1/events, limit={PAGE}",
            contender="one consumer",
            rate=found.events / found.seconds,
            p50_ms=quantile_ms(pages, 0.5),  # a page's round trip
            p99_ms=quantile_ms(pages, 0.99),
            count=found.events,
            extra={
                "seconds": found.seconds,
                "pages": len(pages),
                "service_cpu_share": cpu / found.seconds,
                "data_bytes": data_bytes,
                "insert_seconds": inserted_in,
            },
        )
    ]

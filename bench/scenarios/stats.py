"""The stats and the read models behind them, at two sizes of the orders table (``Sizes.orders`` and
``Sizes.more_orders``, reached by importing more demo orders between the two measurements).

At each size:
- the service's stats and customer-detail endpoints under wrk, 4 connections then 1 (they read the
  read models; the top products reuse the answer the service kept while nothing sells);
- the top products again at 4 connections while a writes process pays ``SALES_PER_SECOND``
  orders, so that answers are computed again after each sale;
- the same questions as SQL on one connection in this process, before and after: the on-the-fly
  sums over orders the read models replaced (``testkit.oracle``, the tests' oracle) against the
  service's read-model queries, alternating round by round (the top products' ranking, then its
  statement when the answer the service kept is current: the version check alone). A call of the "before" queries at a
  million orders takes seconds, so each of its runs stops after ``Sizes.seconds`` (at least one call).

At the first size, what keeping the read models costs the commands, measured in this process on
``WritePool.run`` with 5 concurrent commands (the default write pool), so HTTP is left out and the
share is the larger:
- place and pay with ``writes.readmodels`` recording as it does, and with its recording skipped;
- pay with today's sales in 8 stripes (the default) and in 1 row (``READ_MODEL_STRIPES=1``), and
  the same increment of today's row alone, committed by 16 connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from unittest import mock

import asyncpg
import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession

from bench.core import Context, Measurement, quantile_ms
from bench.database import add_orders, demo_ids, opened, pending_orders_of_today
from bench.servers import serve_service
from bench.wrk import pooled, wrk
from reads.queries.customers import CUSTOMER_DETAIL
from reads.queries.stats import DAILY_REVENUE, RANKING, TOP_PRODUCTS
from shared.config import Settings
from shared.dto import OrderLine, PlaceOrder
from testkit import oracle
from testkit.database import connected
from writes import readmodels
from writes.handlers import pay_order, place_order

SCENARIO = "stats"
# A dashboard's few concurrent requests (the targets are read here), and one alone: its latency
# without queueing behind others on the two cores.
CONNECTIONS = (4, 1)
ENDPOINTS = (
    "/v1/stats/revenue/daily?days=30",
    "/v1/stats/products/top?days=30&limit=10",
    "/v1/customers/1",
)
# (name, before, after, arguments): the window and limit the endpoints above are asked for.
QUESTIONS = (
    ("daily revenue, 30 days", oracle.DAILY_REVENUE, DAILY_REVENUE, (30,)),
    ("top 10 products, 30 days", oracle.TOP_PRODUCTS, RANKING, (30, 10)),
    ("customer detail", oracle.CUSTOMER_DETAIL, CUSTOMER_DETAIL, (1,)),
)
CONCURRENCY = 5
DEFAULT_STRIPES: int = next(f.default for f in msgspec.structs.fields(Settings) if f.name == "read_model_stripes")
# Pending orders of today imported for the pay runs (3 a round: with and without the read models, and
# in one stripe): more than a run pays at this many a second. The three runs of a round share them:
# 1 527, 3 062 and 1 003 a second in the full run at 90533b0, 5 592 of 6 000; a smoke run at 84bff67
# used them up.
PAYS_PER_SECOND = 3_500


def run(ctx: Context) -> list[Measurement]:
    measurements = measure(ctx, selling=False) + asyncio.run(command_costs(ctx))
    missing = ctx.sizes.more_orders - asyncio.run(order_count(ctx.database_url))
    if missing > 0:
        add_orders(ctx.database_url, missing)
    return measurements + measure(ctx, selling=True)


def measure(ctx: Context, *, selling: bool) -> list[Measurement]:
    """The endpoints and their SQL at the database's size; ``selling``: also ``while_selling``
    (at the larger size only: the whole benchmark must stay under 15 minutes)."""
    orders = asyncio.run(order_count(ctx.database_url))
    size = f"{orders:,} orders".replace(",", " ")
    measurements = []
    with serve_service(ctx, workers=1) as server:
        for path in ENDPOINTS:
            wrk(server.url, path, 1, seconds=1, connections=CONNECTIONS[0])  # warm-up
            for connections in CONNECTIONS:
                results = [wrk(server.url, path, 1, ctx.sizes.seconds, connections=connections)]
                case = f"GET {path.partition('?')[0]} · {size} · {connections} connection{'s' * (connections > 1)}"
                measurements.append(pooled(SCENARIO, case, "service", results))
        if selling:
            measurements.append(while_selling(ctx, server.url, size))
    return measurements + asyncio.run(before_and_after(ctx, size))


# --- the top products while orders are paid -----------------------------------------------------------

TOP = ENDPOINTS[1]
SALES_PER_SECOND = 50  # a busy shop's pays (4 million a day)


def while_selling(ctx: Context, url: str, size: str) -> Measurement:
    """The top products at 4 connections while ``SALES_PER_SECOND`` orders of today are paid: each
    pay changes the product sales, so the next request of the question ranks again instead of
    reusing the kept answer. The share of answers computed comes from the service's metrics.

    The pays go to a process of their own (``--role writes``), as an operator isolates reads from
    writes: paid through the process that serves the reads, the pays' ORM work holds up every read
    of the process, so the p99 of any read, the uncached customer detail's too, rises to about
    40 ms at 50 pays/s (measured), which is the isolation scenario's finding, not the answers'."""
    customers, products = asyncio.run(demo_ids(ctx.database_url))
    count = round(ctx.sizes.seconds * SALES_PER_SECOND * 2)  # more than the run can pay
    payable = asyncio.run(pending_orders_of_today(ctx.database_url, customers, products, count))
    stop, paid = threading.Event(), [0]
    with serve_service(ctx, workers=1, role="writes") as writes:
        pays = pay_steadily(writes.url, ctx.write_token, payable, stop, paid)
        payer = threading.Thread(target=asyncio.run, args=(pays,))
        before = answers_counted(url)
        payer.start()
        try:
            result = wrk(url, TOP, 1, ctx.sizes.seconds, connections=CONNECTIONS[0])
        finally:
            stop.set()
            payer.join(timeout=60)
    after = answers_counted(url)
    computed, answered = after["computed"] - before["computed"], sum(after.values()) - sum(before.values())
    case = f"GET {TOP.partition('?')[0]} · {size} · {CONNECTIONS[0]} connections, {SALES_PER_SECOND} pays/s meanwhile"
    measured = pooled(SCENARIO, case, "service", [result])
    measured.extra.update(pays_per_s=paid[0] / result.seconds, computed_share=computed / max(answered, 1))
    return measured


async def pay_steadily(url: str, token: str, orders: list[int], stop: threading.Event, paid: list[int]) -> None:
    """Pay ``orders`` one at a time, ``SALES_PER_SECOND`` a second, until ``stop`` or they run out."""
    async with httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        due = time.perf_counter()
        while orders and not stop.is_set():
            response = await http.post(f"/v1/orders/{orders.pop()}/pay")
            if response.status_code != 200:
                raise RuntimeError(f"a pay was refused: {response.status_code} {response.text}")
            paid[0] += 1
            due += 1 / SALES_PER_SECOND
            await asyncio.sleep(max(0.0, due - time.perf_counter()))


def answers_counted(url: str) -> dict[str, float]:
    """``stats_answers_total`` by result, from the service's /metrics."""
    counted = {"computed": 0.0, "reused": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "stats_answers_total":
                counted[sample.labels["result"]] = sample.value
    return counted


async def before_and_after(ctx: Context, size: str) -> list[Measurement]:
    async with connected(ctx.database_url) as connection:
        measurements = []
        for name, before, after, args in QUESTIONS:
            took: dict[str, list[float]] = {"read models (after)": [], "on the fly (before)": []}
            for _ in range(ctx.sizes.rounds):
                for contender, sql in zip(took, (after, before), strict=True):
                    await connection.fetchval(sql, *args)  # planned and cached before it is timed
                    took[contender] += await timed_calls(connection, sql, args, ctx.sizes.calls, ctx.sizes.seconds)
            measurements += [latencies(f"SQL {name} · {size}", contender, t) for contender, t in took.items()]
        # The service's statement when its kept answer is current: it reads the version, not the ranking.
        version = msgspec.json.decode(await connection.fetchval(TOP_PRODUCTS, 30, 10, None))["version"]
        kept: list[float] = []
        for _ in range(ctx.sizes.rounds):
            kept += await timed_calls(connection, TOP_PRODUCTS, (30, 10, version), ctx.sizes.calls, ctx.sizes.seconds)
        measurements.append(latencies(f"SQL top 10 products, 30 days · {size}", "answer kept, version checked", kept))
    return measurements


async def timed_calls(
    connection: asyncpg.Connection, sql: str, args: tuple[object, ...], calls: int, budget: float
) -> list[float]:
    """Up to ``calls`` calls, one at a time, stopping once ``budget`` seconds have passed."""
    took = []
    deadline = time.perf_counter() + budget
    for _ in range(calls):
        started = time.perf_counter()
        await connection.fetchval(sql, *args)
        took.append(time.perf_counter() - started)
        if started > deadline:
            break
    return took


def latencies(case: str, contender: str, seconds: list[float], wall: float | None = None) -> Measurement:
    """Calls taken one after another (their rate is one over their mean), or concurrently over
    ``wall`` seconds (their rate is their count over it)."""
    ordered = sorted(seconds)
    return Measurement(
        scenario=SCENARIO,
        case=case,
        contender=contender,
        rate=len(ordered) / (wall or sum(ordered)),
        p50_ms=quantile_ms(ordered, 0.5),
        p99_ms=quantile_ms(ordered, 0.99),
        count=len(ordered),
        extra={"mean_ms": sum(ordered) / len(ordered) * 1000},
    )


# --- what the read models cost the commands -------------------------------------------------------


async def command_costs(ctx: Context) -> list[Measurement]:
    customers, products = await demo_ids(ctx.database_url)
    count = round(PAYS_PER_SECOND * ctx.sizes.seconds) * 3 * ctx.sizes.rounds
    payable = await pending_orders_of_today(ctx.database_url, customers, products, count)
    rng = random.Random(7)

    def place(session: AsyncSession) -> Awaitable[object]:
        lines = [OrderLine(product_id=p, quantity=1) for p in rng.sample(products, k=rng.randint(1, 3))]
        return place_order(PlaceOrder(customer_id=rng.choice(customers), items=lines), session)

    def pay(session: AsyncSession) -> Awaitable[object]:
        if not payable:
            raise RuntimeError("the pay runs used up the pending orders: raise stats.PAYS_PER_SECOND")
        return pay_order(payable.pop(), None, session)

    # The runs that skip the recording leave the read models short of their orders and pays: the
    # stats measured after this are timed, not checked (the tests check them).
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(ctx.sizes.rounds):
        for case, work in (("place order", place), ("pay order", pay)):
            for contender, recording in (("with read models", True), ("without (record skipped)", False)):
                with maybe_skipping(recording):
                    took = await closed_loop(ctx, DEFAULT_STRIPES, work, ctx.sizes.seconds)
                runs.setdefault((f"{case} · {CONCURRENCY} concurrent", contender), []).extend(took)
                if work is pay and recording:
                    pays = took
        for stripes in (DEFAULT_STRIPES, 1):
            label = f"today's sales in {stripes} stripe{'s' if stripes > 1 else ''}"
            # At the default stripes this is this round's pay with read models: not run twice.
            if stripes != DEFAULT_STRIPES:
                pays = await closed_loop(ctx, stripes, pay, ctx.sizes.seconds)
            runs.setdefault((f"pay order, hot day · {CONCURRENCY} concurrent", label), []).extend(pays)
            took = await hot_row(ctx.database_url, stripes, ctx.sizes.seconds)
            runs.setdefault((f"today's sales row alone · {HOT_CONNECTIONS} connections", label), []).extend(took)
    wall = ctx.sizes.seconds * ctx.sizes.rounds
    return [latencies(case, contender, took, wall) for (case, contender), took in runs.items()]


@contextlib.contextmanager
def maybe_skipping(recording: bool) -> Iterator[None]:
    """``writes.readmodels`` as it is, or with its recording replaced by no-ops: the commands
    without their read models (the handlers call these through the module, at call time)."""
    if recording:
        yield
        return

    async def skipped(*_: object) -> None:
        return None

    with mock.patch.object(readmodels, "record", skipped), mock.patch.object(readmodels, "record_placed", skipped):
        yield


async def closed_loop(
    ctx: Context, stripes: int, work: Callable[[AsyncSession], Awaitable[object]], seconds: float
) -> list[float]:
    """``CONCURRENCY`` tasks running ``work`` through one write pool back to back for ``seconds``."""
    settings = Settings(database_url=ctx.database_url, read_model_stripes=stripes, write_pool_max_waiting=100)
    took: list[float] = []
    async with opened(settings) as pool:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await pool.run(work)
                took.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return took


# The pay's increment of today's sales, by itself: what a day's row costs once many processes pay
# at once (this process's ORM work hides it at 5 commands). Adding 0 locks and rewrites the row
# like a real pay, and leaves the sums as they are.
HOT_INCREMENT = """
    INSERT INTO sales_daily AS t (day, stripe, orders, revenue_cents)
    VALUES ((now() AT TIME ZONE 'UTC')::date, pg_backend_pid() % $1, 0, 0)
    ON CONFLICT (day, stripe) DO UPDATE
       SET orders = t.orders + EXCLUDED.orders, revenue_cents = t.revenue_cents + EXCLUDED.revenue_cents
"""
HOT_CONNECTIONS = 16


async def hot_row(url: str, stripes: int, seconds: float) -> list[float]:
    """``HOT_CONNECTIONS`` connections committing ``HOT_INCREMENT`` back to back for ``seconds``."""
    took: list[float] = []
    pool = await asyncpg.create_pool(url, min_size=HOT_CONNECTIONS, max_size=HOT_CONNECTIONS)
    try:
        deadline = time.perf_counter() + seconds

        async def connection_loop() -> None:
            async with pool.acquire() as connection:
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    async with connection.transaction():
                        await connection.execute(HOT_INCREMENT, stripes)
                    took.append(time.perf_counter() - started)

        await asyncio.gather(*(connection_loop() for _ in range(HOT_CONNECTIONS)))
    finally:
        await pool.close()
    return took


async def order_count(url: str) -> int:
    async with connected(url) as connection:
        count: int = await connection.fetchval("SELECT count(*) FROM orders")
    return count

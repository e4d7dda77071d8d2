"""The command side against the write floor (``bench.contenders.write_floor``), side by side: place
order and pay from ``CLIENTS`` wrk clients, sent to the service (one worker, its default write pool),
without and with an ``Idempotency-Key``, and to the floor, taking turns round after round. Each
server's rate is its median round's 2xx per second; beside it, the CPU its process spent per
command answered (user + system, from ``/proc``), which the load generator's share of the machine
does not blur, and the CPU PostgreSQL spent meanwhile (all its processes), per command answered.

Every order placed takes 1-3 random products of the seeded data, one unit each, for a random
customer; every pay pays a pending order of its own, imported before the run. After each run: the
stock adds up and none went below zero, every 201 is an order in the database, every 200 a paid
order. A smoke run also checks that the commands kept the read models equal to their recomputation
(``testkit.oracle``): recomputing them from every order is too slow for the full size."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.contenders import CONTENDERS
from bench.core import SMOKE, Context, Measurement
from bench.database import DatabaseCpu, demo_ids, pending_orders_of_today
from bench.scenarios.writes import InvariantBroken, check_stock, snapshot
from bench.servers import Server, serve_contender, serve_service
from bench.wrk import CommandLoad, WrkResult, wrk_commands
from testkit.database import connected
from testkit.oracle import disagreements

SCENARIO = "write-floor"
CLIENTS = 8
PLACE = f"POST /v1/orders · {CLIENTS} clients"
PAY = f"POST /v1/orders/{{id}}/pay · {CLIENTS} clients"
# Stock each product holds before the runs: an order refused for stock (409) would not count.
STOCK = 1_000_000_000
# Pending orders imported for each second of a pay run: more than any server here pays.
PAYS_PER_SECOND = 4_000


@dataclass(frozen=True)
class Run:
    result: WrkResult
    cpu_seconds: float  # the server process's, during the run
    database_cpu_seconds: float  # PostgreSQL's, all its processes, during the run


Contender = tuple[str, Server, bool]  # name, server, keyed


def run(ctx: Context) -> list[Measurement]:
    asyncio.run(stock_up(ctx.database_url))
    offsets = asyncio.run(read_model_offsets(ctx.database_url)) if ctx.sizes is SMOKE else None
    with (
        serve_service(ctx, workers=1) as service,
        serve_contender(ctx, "floor", CONTENDERS["floor"], workers=1) as floor,
    ):
        contenders = [("service", service, False), ("service, Idempotency-Key", service, True), ("floor", floor, False)]
        runs = measure(ctx, contenders)
    if offsets is not None and asyncio.run(read_model_offsets(ctx.database_url)) != offsets:
        raise InvariantBroken("the commands left the read models off their recomputation (testkit.oracle)")
    return [summary(case, contender, found) for (case, contender), found in runs.items()]


def measure(ctx: Context, contenders: list[Contender]) -> dict[tuple[str, str], list[Run]]:
    runs: dict[tuple[str, str], list[Run]] = defaultdict(list)
    commands: list[tuple[str, Callable[[Context, Server, bool, float], Run]]] = [(PLACE, placed), (PAY, paid)]
    for round_number in range(ctx.sizes.rounds):
        for case, command in commands:
            for name, server, keyed in contenders:
                if round_number == 0:
                    command(ctx, server, keyed, 1)  # warm-up: connections, statement caches, compiled SQL
                runs[case, name].append(command(ctx, server, keyed, ctx.sizes.seconds))
    return runs


def placed(ctx: Context, server: Server, keyed: bool, seconds: float) -> Run:
    sizes = ctx.sizes
    load = CommandLoad("place", ctx.write_token, keyed, customers=sizes.customers, products=sizes.products)
    before = asyncio.run(snapshot(ctx.database_url))
    found = timed(server, load, seconds, ctx.database_url)
    # wrk drops the requests in flight at its deadline; the server still commits them.
    asyncio.run(check_stock(ctx.database_url, before, found.result.requests, cut_off=CLIENTS))
    return found


def paid(ctx: Context, server: Server, keyed: bool, seconds: float) -> Run:
    ids = asyncio.run(pending_orders(ctx.database_url, max(1, round(seconds)) * PAYS_PER_SECOND))
    listed = ctx.scratch / "pending-orders.txt"
    listed.write_text("".join(f"{order_id}\n" for order_id in ids))
    found = timed(server, CommandLoad("pay", ctx.write_token, keyed, ids=listed), seconds, ctx.database_url)
    asyncio.run(check_paid(ctx.database_url, ids, found.result.requests))
    return found


def timed(server: Server, load: CommandLoad, seconds: float, database_url: str) -> Run:
    started, database = server.cpu_seconds(), DatabaseCpu.now(database_url)
    result = wrk_commands(server.url, load, seconds, CLIENTS)
    found = Run(result, server.cpu_seconds() - started, DatabaseCpu.now(database_url).since(database))
    asyncio.run(settled(database_url))
    return found


# Another connection at work: running a statement, or inside a transaction.
BUSY = """
    SELECT count(*) FROM pg_stat_activity
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'
"""
QUIET = 0.2
SETTLE_WITHIN = 30.0


async def settled(url: str) -> None:
    """Returns once no other connection has been at work for ``QUIET`` seconds. wrk returns at its
    deadline with requests in flight, which the server goes on to serve: until they commit, the
    stock and the orders do not add up, and a snapshot of them would not be one."""
    deadline = time.monotonic() + SETTLE_WITHIN
    async with connected(url) as connection:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < QUIET:
            if await connection.fetchval(BUSY):
                quiet_since = time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the database was still busy {SETTLE_WITHIN:g} s after a load run")
            await asyncio.sleep(0.01)


def summary(case: str, contender: str, runs: list[Run]) -> Measurement:
    """The median round's rate and p50, the worst round's p99, and the server's and the database's
    CPU per 2xx."""
    rates = sorted(r.result.requests / r.result.seconds for r in runs)
    p50s = sorted(r.result.p50_ms for r in runs)
    answered = sum(r.result.requests for r in runs)
    cpu = sum(r.cpu_seconds for r in runs)
    database_cpu = sum(r.database_cpu_seconds for r in runs)
    return Measurement(
        scenario=SCENARIO,
        case=case,
        contender=contender,
        rate=statistics.median(rates),
        p50_ms=p50s[len(p50s) // 2],
        p99_ms=max(r.result.p99_ms for r in runs),
        count=answered,
        errors=sum(r.result.errors for r in runs),
        extra={
            "cpu_ms_per_command": cpu / answered * 1000 if answered else 0.0,
            "database_cpu_ms_per_command": database_cpu / answered * 1000 if answered else 0.0,
            "slowest_round": rates[0],
            "fastest_round": rates[-1],
        },
    )


RESTOCK = "UPDATE products SET stock = $1, version = version + 1, updated_at = now() WHERE stock < $1"


async def stock_up(url: str) -> None:
    async with connected(url) as connection:
        await connection.execute(RESTOCK, STOCK)


async def pending_orders(url: str, count: int) -> list[int]:
    customers, products = await demo_ids(url)
    return await pending_orders_of_today(url, customers, products, count)


async def check_paid(url: str, ids: list[int], acknowledged: int) -> None:
    """Every 200 is a paid order, and the run did not pay every order it had (then the rate is the list's)."""
    async with connected(url) as connection:
        count = await connection.fetchval(
            "SELECT count(*) FROM orders WHERE id = ANY($1::bigint[]) AND status = 'paid'", ids
        )
    # wrk drops the requests in flight at its deadline; the server still commits them.
    if not acknowledged <= count <= acknowledged + CLIENTS:
        raise InvariantBroken(f"{acknowledged} pays acknowledged with 200, {count} orders paid")
    if count > len(ids) - CLIENTS:
        raise RuntimeError(f"a pay run paid {count} of its {len(ids)} pending orders: raise PAYS_PER_SECOND")


Offsets = dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]]


async def read_model_offsets(url: str) -> Offsets:
    """How far each read model's rows are from their recomputation, by model and key: none while
    they are exact. An earlier scenario may leave offsets (the stats' runs with recording skipped);
    commands that keep the read models leave those as they were."""
    async with connected(url) as connection:
        found = await disagreements(connection)
    offsets: Offsets = {}
    for model, (recomputed, table) in found.items():
        # Every read model's row is its key, then two sums.
        wanted, held = ({row[:-2]: row[-2:] for row in rows} for rows in (recomputed, table))
        for key in wanted.keys() | held.keys():
            offset = tuple(w - h for w, h in zip(wanted.get(key, (0, 0)), held.get(key, (0, 0)), strict=True))
            if any(offset):
                offsets[model, key] = offset
    return offsets

"""The outbox and the event feed (``writes.events``, ``reads.events``), in one run:

1. **What appending costs a command.** The service always appends, so it is measured on the write
   floor (``bench.contenders.write_floor``): place order and pay as they are, and under ``/outbox``
   with the service's own append statement in the same transaction, from ``CLIENTS`` wrk clients,
   taking turns (which goes first alternates), ``OUTBOX_ROUNDS`` rounds; each its median round's
   rate. After each run the stock adds up, and the feed's head moved by one event per command
   acknowledged (none for the plain floor). Where the database's busy connections wait meanwhile
   (``bench.scenarios.waits``) tells the outbox's statement from its commits queueing on the head
   row. Beside it, py-spy's share of the service's CPU spent in ``writes.events.append`` while wrk
   places orders.
2. **Delivery, commit to consumer** (``bench.scenarios.feed``): the service under an open-loop
   ``RATE`` of place-order commands, followed by a long-polling consumer and a streaming one.
3. **Draining a backlog** (``bench.scenarios.backlog``): ``BACKLOG`` events inserted in SQL, then
   read by one consumer a page of 1 000 at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from bench.contenders import CONTENDERS
from bench.core import SMOKE, Context, Measurement
from bench.profile import Profile, record
from bench.scenarios import backlog, feed, write_floor
from bench.scenarios.waits import Waits, sampling
from bench.scenarios.write_floor import CLIENTS, Run, check_paid, pending_orders, stock_up, summary, timed
from bench.scenarios.writes import InvariantBroken, check_stock, snapshot
from bench.servers import Server, serve_contender, serve_service
from bench.wrk import CommandLoad, wrk_commands
from testkit.database import connected

SCENARIO = feed.SCENARIO
PLACE = write_floor.PLACE
PAY = write_floor.PAY
FLOOR = "write floor"
OUTBOX = "write floor + outbox"
VARIANTS = ((FLOOR, ""), (OUTBOX, "/outbox"))  # contender, path prefix
# More rounds than the other scenarios': a 10 % effect on a machine whose rounds differ by as much.
OUTBOX_ROUNDS = 5
PROFILED = f"POST /v1/orders · {CLIENTS} clients, py-spy on"

Command = Callable[[Context, Server, str, float, Waits], Run]


def run(ctx: Context) -> tuple[list[Measurement], Profile]:
    measurements = outbox_cost(ctx)
    with serve_service(ctx, workers=1) as service:
        profiled, profile = appending_share(ctx, service)
        measurements.append(profiled)
        measurements += feed.delivery(ctx, service)
        measurements += backlog.run(ctx, service)
    return measurements, profile


def outbox_cost(ctx: Context) -> list[Measurement]:
    asyncio.run(stock_up(ctx.database_url))
    rounds = ctx.sizes.rounds if ctx.sizes is SMOKE else OUTBOX_ROUNDS
    runs: dict[tuple[str, str], list[Run]] = defaultdict(list)
    waits: dict[tuple[str, str], Waits] = defaultdict(Waits)
    commands: list[tuple[str, Command]] = [(PLACE, placed), (PAY, paid)]
    with serve_contender(ctx, "floor", CONTENDERS["floor"], workers=1) as floor:
        for number in range(rounds):
            for case, command in commands:
                for name, prefix in VARIANTS if number % 2 == 0 else VARIANTS[::-1]:
                    if number == 0:
                        command(ctx, floor, prefix, 1, Waits())  # warm-up: connections, statement caches
                    runs[case, name].append(command(ctx, floor, prefix, ctx.sizes.seconds, waits[case, name]))
    found = []
    for (case, name), rounds_run in runs.items():
        measured = replace(summary(case, name, rounds_run), scenario=SCENARIO)
        measured = replace(measured, extra={**measured.extra, **waits[case, name].averages()})
        if name == OUTBOX:
            # Each round against the floor's of the same round: how far the rounds spread.
            paired = sorted(
                o.result.requests / o.result.seconds / (f.result.requests / f.result.seconds)
                for o, f in zip(rounds_run, runs[case, FLOOR], strict=True)
            )
            more = {"round_ratio_median": paired[len(paired) // 2], "round_ratio_min": paired[0]}
            measured = replace(measured, extra={**measured.extra, **more, "round_ratio_max": paired[-1]})
        found.append(measured)
    # Each case's floor first: the report's ratios are against it.
    return sorted(found, key=lambda m: (m.case != PLACE, m.contender != FLOOR))


def placed(ctx: Context, server: Server, prefix: str, seconds: float, waits: Waits) -> Run:
    sizes = ctx.sizes
    load = CommandLoad("place", ctx.write_token, False, sizes.customers, sizes.products, prefix=prefix)
    before, head = asyncio.run(snapshot(ctx.database_url)), asyncio.run(feed_head(ctx.database_url))
    with sampling(ctx.database_url, waits):
        found = timed(server, load, seconds, ctx.database_url)
    # wrk drops the requests in flight at its deadline; the server still commits them.
    asyncio.run(check_stock(ctx.database_url, before, found.result.requests, cut_off=CLIENTS))
    asyncio.run(check_appended(ctx.database_url, head, found.result.requests if prefix else 0))
    return found


def paid(ctx: Context, server: Server, prefix: str, seconds: float, waits: Waits) -> Run:
    ids = asyncio.run(pending_orders(ctx.database_url, max(1, round(seconds)) * write_floor.PAYS_PER_SECOND))
    listed = ctx.scratch / "pending-orders.txt"
    listed.write_text("".join(f"{order_id}\n" for order_id in ids))
    head = asyncio.run(feed_head(ctx.database_url))  # after the import, which appends its own events
    load = CommandLoad("pay", ctx.write_token, False, ids=listed, prefix=prefix)
    with sampling(ctx.database_url, waits):
        found = timed(server, load, seconds, ctx.database_url)
    asyncio.run(check_paid(ctx.database_url, ids, found.result.requests))
    asyncio.run(check_appended(ctx.database_url, head, found.result.requests if prefix else 0))
    return found


async def feed_head(url: str) -> int:
    async with connected(url) as connection:
        head: int = await connection.fetchval("SELECT last FROM events_head")
    return head


async def check_appended(url: str, head: int, acknowledged: int) -> None:
    """The feed grew by one event a command acknowledged (and those wrk dropped at its deadline)."""
    appended = await feed_head(url) - head
    allowed = acknowledged + CLIENTS if acknowledged else 0
    if not acknowledged <= appended <= allowed:
        raise InvariantBroken(f"{acknowledged} commands acknowledged, {appended} events appended")


def appending_share(ctx: Context, service: Server) -> tuple[Measurement, Profile]:
    """py-spy on the one-worker service while wrk places orders (a run of its own: sampling costs a
    little CPU); the share of its busy samples inside ``writes.events.append``."""
    sizes = ctx.sizes
    load = CommandLoad("place", ctx.write_token, False, customers=sizes.customers, products=sizes.products)
    stacks = ctx.scratch / "events-profile.txt"
    cpu = service.cpu_seconds()
    with ThreadPoolExecutor(1) as background:
        loaded = background.submit(wrk_commands, service.url, load, sizes.seconds + 2, CLIENTS)
        time.sleep(1)
        profile = record(service.pid, sizes.seconds, stacks)
        result = loaded.result()
    cpu = service.cpu_seconds() - cpu
    asyncio.run(write_floor.settled(ctx.database_url))
    share = append_share(stacks) if not profile.error else 0.0
    measured = Measurement(
        scenario=SCENARIO,
        case=PROFILED,
        contender="service",
        rate=result.requests / result.seconds,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        count=result.requests,
        errors=result.errors,
        extra={
            "append_cpu_share_pct": share * 100,
            "profile_samples": profile.samples,
            "cpu_ms_per_command": cpu / result.requests * 1000 if result.requests else 0.0,
        },
    )
    return measured, profile


def append_share(stacks: Path) -> float:
    """Busy samples with ``append`` of ``writes/events.py`` on the stack, over all busy samples."""
    total = inside = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        if any(frame.startswith("append (") and "/writes/events.py" in frame for frame in stack.split(";")):
            inside += int(count)
    return inside / total if total else 0.0

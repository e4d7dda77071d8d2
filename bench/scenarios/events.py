"""The outbox and the event feed (``writes.events``, ``reads.events``), in one run:

1. **What appending costs a command**, where it is paid: the service as shipped against the same
   service with ``writes.events.append`` doing nothing (``bench.contenders.no_outbox``), and, for
   the database's side alone, on the write floor (``bench.contenders.write_floor``): place order
   and pay as they are, and under ``/outbox`` with the service's own append statement in the same
   transaction. From ``CLIENTS`` wrk clients, each pair taking turns (which goes first
   alternates), ``OUTBOX_ROUNDS`` rounds; each its median round's rate. After each run the stock
   adds up, and the feed's head moved by one event per command acknowledged (none without the
   outbox). Where the database's busy connections wait meanwhile
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
from typing import NamedTuple

from bench.contenders import CONTENDERS
from bench.core import SMOKE, Context, Measurement
from bench.profile import Profile, record
from bench.scenarios import backlog, feed, write_floor
from bench.scenarios.waits import Waits, sampling
from bench.scenarios.write_floor import CLIENTS, Run, check_paid, pending_orders, stock_up, summary, timed
from bench.scenarios.writes import InvariantBroken, check_stock, snapshot
from bench.servers import Server, serve_contender, serve_service
from bench.wrk import CommandLoad, wrk_commands

SCENARIO = feed.SCENARIO
PLACE = write_floor.PLACE
PAY = write_floor.PAY
FLOOR = "write floor"
OUTBOX = "write floor + outbox"
SERVICE = "service"
WITHOUT = "service without its outbox"


class Variant(NamedTuple):
    contender: str
    prefix: str  # of the command paths
    appends: bool  # each acknowledged command appends an event
    baseline: str  # the contender this one is compared with (itself for a baseline)


# More rounds than the other scenarios': a 10 % effect on a machine whose rounds differ by as much.
OUTBOX_ROUNDS = 5
PROFILED = f"POST /v1/orders · {CLIENTS} clients, py-spy on"

Command = Callable[[Context, Server, Variant, float, Waits], Run]
PAIRS = (
    (Variant(WITHOUT, "", False, WITHOUT), Variant(SERVICE, "", True, WITHOUT)),
    (Variant(FLOOR, "", False, FLOOR), Variant(OUTBOX, "/outbox", True, FLOOR)),
)


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
    with (
        serve_service(ctx, workers=1) as service,
        serve_service(ctx, workers=1, module="bench.contenders.no_outbox", name=WITHOUT) as without,
        serve_contender(ctx, "floor", CONTENDERS["floor"], workers=1) as floor,
    ):
        servers = {SERVICE: service, WITHOUT: without, FLOOR: floor, OUTBOX: floor}
        for number in range(rounds):
            for case, command in commands:
                for pair in PAIRS:
                    for variant in pair if number % 2 == 0 else pair[::-1]:
                        server, key = servers[variant.contender], (case, variant.contender)
                        if number == 0:
                            command(ctx, server, variant, 1, Waits())  # warm-up: connections, statement caches
                        runs[key].append(command(ctx, server, variant, ctx.sizes.seconds, waits[key]))
    variants = {variant.contender: variant for pair in PAIRS for variant in pair}
    found = []
    for (case, name), rounds_run in runs.items():
        measured = replace(summary(case, name, rounds_run), scenario=SCENARIO)
        measured = replace(measured, extra={**measured.extra, **waits[case, name].averages()})
        baseline = variants[name].baseline
        if baseline != name:
            # Each round against its baseline's of the same round: how far the rounds spread.
            paired = sorted(
                o.result.requests / o.result.seconds / (f.result.requests / f.result.seconds)
                for o, f in zip(rounds_run, runs[case, baseline], strict=True)
            )
            more = {"round_ratio_median": paired[len(paired) // 2], "round_ratio_min": paired[0]}
            measured = replace(measured, extra={**measured.extra, **more, "round_ratio_max": paired[-1]})
        found.append(measured)
    # Each case's baselines first: the report's ratios are against them.
    order = [variant.contender for pair in PAIRS for variant in pair]
    return sorted(found, key=lambda m: (m.case != PLACE, order.index(m.contender)))


def placed(ctx: Context, server: Server, variant: Variant, seconds: float, waits: Waits) -> Run:
    sizes = ctx.sizes
    load = CommandLoad("place", ctx.write_token, False, sizes.customers, sizes.products, prefix=variant.prefix)
    before, head = asyncio.run(snapshot(ctx.database_url)), asyncio.run(feed.positioned_head(ctx.database_url))
    with sampling(ctx.database_url, waits):
        found = timed(server, load, seconds, ctx.database_url)
    # wrk drops the requests in flight at its deadline; the server still commits them.
    asyncio.run(check_stock(ctx.database_url, before, found.result.requests, cut_off=CLIENTS))
    asyncio.run(check_appended(ctx.database_url, head, found.result.requests if variant.appends else 0))
    return found


def paid(ctx: Context, server: Server, variant: Variant, seconds: float, waits: Waits) -> Run:
    ids = asyncio.run(pending_orders(ctx.database_url, max(1, round(seconds)) * write_floor.PAYS_PER_SECOND))
    listed = ctx.scratch / "pending-orders.txt"
    listed.write_text("".join(f"{order_id}\n" for order_id in ids))
    head = asyncio.run(feed.positioned_head(ctx.database_url))  # after the import, which appends its own events
    load = CommandLoad("pay", ctx.write_token, False, ids=listed, prefix=variant.prefix)
    with sampling(ctx.database_url, waits):
        found = timed(server, load, seconds, ctx.database_url)
    asyncio.run(check_paid(ctx.database_url, ids, found.result.requests))
    asyncio.run(check_appended(ctx.database_url, head, found.result.requests if variant.appends else 0))
    return found


async def check_appended(url: str, head: int, acknowledged: int) -> None:
    """The feed grew by one event a command acknowledged (and those wrk dropped at its deadline)."""
    appended = await feed.positioned_head(url) - head
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

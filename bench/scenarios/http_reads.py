"""HTTP reads: the service against the async-ORM twin, the bare floor and the constant-body
ceiling, with one worker and with as many workers as cores. wrk drives every contender with the
same connections and random ids; within each worker count the contenders take turns, round after
round, so a slow minute of the machine falls on all of them."""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from bench.contenders import CONTENDERS
from bench.core import Context, Measurement
from bench.profile import Profile, record
from bench.servers import Server, serve_contender, serve_service
from bench.wrk import WrkResult, pooled, wrk

SCENARIO = "http-reads"


def cases(ctx: Context) -> list[tuple[str, str, int]]:
    """(name, path with {id}, how many ids exist)."""
    sizes = ctx.sizes
    return [
        ("GET /v1/orders/{id}", "/v1/orders/{id}", sizes.orders),
        ("GET /v1/products/{id}", "/v1/products/{id}", sizes.products),
        ("GET /v1/orders?customer_id={id}&limit=20", "/v1/orders?customer_id={id}&limit=20", sizes.customers),
    ]


def run(ctx: Context) -> tuple[list[Measurement], Profile]:
    measurements: list[Measurement] = []
    for workers in sorted({1, ctx.workers}):
        with ExitStack() as stack:
            servers = [stack.enter_context(serve_service(ctx, workers))]
            servers += [
                stack.enter_context(serve_contender(ctx, name, factory, workers))
                for name, factory in CONTENDERS.items()
            ]
            measurements += measure(ctx, servers, workers)
            if workers == 1:
                profile = profiled(ctx, servers[0])
    return measurements, profile


def profiled(ctx: Context, service: Server) -> Profile:
    """py-spy on the one-worker service while wrk reads orders by id (a run of its own)."""
    _, path, ids = cases(ctx)[0]
    with ThreadPoolExecutor(1) as background:
        load = background.submit(wrk, service.url, path, ids, ctx.sizes.seconds + 2)
        time.sleep(1)
        profile = record(service.pid, ctx.sizes.seconds, ctx.scratch / "reads-profile.txt")
        load.result()
    return profile


def measure(ctx: Context, servers: list[Server], workers: int) -> list[Measurement]:
    runs: dict[tuple[str, str], list[WrkResult]] = defaultdict(list)
    for round_number in range(ctx.sizes.rounds):
        for name, path, ids in cases(ctx):
            for server in servers:
                if round_number == 0:
                    wrk(server.url, path, ids, seconds=1)  # warm-up: connections, statement caches, JIT-free paths
                runs[name, server.name].append(wrk(server.url, path, ids, ctx.sizes.seconds))
    label = f"{workers} worker" + ("s" if workers > 1 else "")
    return [pooled(SCENARIO, f"{case} · {label}", contender, results) for (case, contender), results in runs.items()]

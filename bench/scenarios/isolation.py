"""Isolation: the read p99 alone, and while 200 clients saturate the write pool, in one process
(both sides on one event loop) and with ``--role`` split processes (a reads process and a writes
process on the same database). Reads come from wrk at modest concurrency, so the p99 shows the
interference, not a read queue of wrk's own making."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace

from bench.core import Context, Measurement
from bench.load import post_orders, random_order
from bench.servers import serve_service
from bench.wrk import WrkResult, pooled, wrk

SCENARIO = "isolation"
READ_PATH = "/v1/orders/{id}"
READ_CONNECTIONS = 8
WRITERS = 200
ALONE, LOADED = "reads alone", "reads under write saturation"


@contextmanager
def deployment(ctx: Context, split: bool) -> Iterator[tuple[str, str]]:
    """(reads URL, writes URL): one ``--role all`` process, or a reads and a writes process."""
    with ExitStack() as stack:
        if split:
            reads = stack.enter_context(serve_service(ctx, workers=1, role="reads"))
            writes = stack.enter_context(serve_service(ctx, workers=1, role="writes"))
            yield reads.url, writes.url
        else:
            both = stack.enter_context(serve_service(ctx, workers=1))
            yield both.url, both.url


def run(ctx: Context) -> list[Measurement]:
    runs: dict[tuple[str, str], list[WrkResult]] = defaultdict(list)
    written: dict[str, list[float]] = defaultdict(list)  # orders a second written while the reads ran
    with deployment(ctx, split=False) as one, deployment(ctx, split=True) as split:
        setups = {"one process": one, "--role split": split}
        for round_number in range(ctx.sizes.rounds):
            for setup, (reads_url, writes_url) in setups.items():
                if round_number == 0:
                    read(ctx, reads_url, seconds=1)  # warm-up
                runs[ALONE, setup].append(read(ctx, reads_url, ctx.sizes.seconds))
                result, orders_per_s = asyncio.run(read_while_writing(ctx, reads_url, writes_url))
                runs[LOADED, setup].append(result)
                written[setup].append(orders_per_s)
    measurements = [pooled(SCENARIO, case, setup, results) for (case, setup), results in runs.items()]
    return [
        replace(m, extra={"orders_per_s_meanwhile": sum(written[m.contender]) / len(written[m.contender])})
        if m.case == LOADED
        else m
        for m in measurements
    ]


def read(ctx: Context, url: str, seconds: float) -> WrkResult:
    return wrk(url, READ_PATH, ctx.sizes.orders, seconds, connections=READ_CONNECTIONS)


async def read_while_writing(ctx: Context, reads_url: str, writes_url: str) -> tuple[WrkResult, float]:
    body = random_order(ctx.sizes.customers, ctx.sizes.products)
    writing = asyncio.create_task(
        post_orders(writes_url, ctx.write_token, body, clients=WRITERS, seconds=ctx.sizes.seconds + 2, keyed=False)
    )
    await asyncio.sleep(1)  # the write pool is saturated before the reads start
    result = await asyncio.to_thread(read, ctx, reads_url, ctx.sizes.seconds)
    answers = await writing
    return result, answers.created() / answers.seconds

"""Writes under 200 concurrent clients, against the same service at its write pool's own
concurrency: accepted throughput, accepted and rejected latency, with and without an
``Idempotency-Key``. Clients wait what ``Retry-After`` says, as the contract asks; one more run
shows the storm of clients that do not. After each run the stock invariant is checked: every
product lost exactly the units of the orders acknowledged, none went below zero, and every 201 is
an order in the database."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from bench.core import Context, Measurement, quantile_ms
from bench.load import REJECTED, Answers, accepted, post_orders, random_order
from bench.profile import Profile, record
from bench.servers import Server, serve_service
from shared.config import Settings
from testkit.database import connected

SCENARIO = "writes"
CLIENTS = 200


class InvariantBroken(AssertionError):
    """The benchmark found oversold stock or a lost acknowledgement: a bug, not a slow run."""


def run(ctx: Context) -> tuple[list[Measurement], Profile]:
    pool_size = Settings(database_url=ctx.database_url).write_pool_size
    runs: dict[tuple[str, int], list[Answers]] = defaultdict(list)
    refusals: dict[tuple[str, int], list[float]] = defaultdict(list)  # each 503's time inside the server

    def measure(label: str, server: Server, clients: int, keyed: bool, honour_retry_after: bool = True) -> None:
        logged = server.log.stat().st_size
        runs[label, clients].append(checked(ctx, server.url, clients=clients, keyed=keyed, honour=honour_retry_after))
        refusals[label, clients] += refusal_seconds(server.log, logged)

    # The JSON access log (about 10 µs a request) gives each refusal's time inside the server.
    with serve_service(ctx, workers=1, ACCESS_LOG="json") as server:
        for _ in range(ctx.sizes.rounds):
            for keyed in (False, True):
                for clients in (pool_size, CLIENTS):
                    measure("Idempotency-Key" if keyed else "no key", server, clients, keyed)
        measure("no key, Retry-After ignored", server, CLIENTS, keyed=False, honour_retry_after=False)
        profile = profiled(ctx, server.pid, server.url)
    return [
        measurement(label, clients, answers, sorted(refusals[label, clients]))
        for (label, clients), answers in runs.items()
    ], profile


def refusal_seconds(log: Path, offset: int) -> list[float]:
    """The server's own duration of each 503 it logged after ``offset``."""
    with log.open("rb") as lines:
        lines.seek(offset)
        entries = [json.loads(line) for line in lines if line.startswith(b'{"method"')]
    return [entry["duration_ms"] / 1000 for entry in entries if entry["status"] == REJECTED]


def checked(ctx: Context, url: str, *, clients: int, keyed: bool, honour: bool) -> Answers:
    async def load_and_check() -> Answers:
        before = await snapshot(ctx.database_url)
        body = random_order(ctx.sizes.customers, ctx.sizes.products)
        answers = await post_orders(
            url,
            ctx.write_token,
            body,
            clients=clients,
            seconds=ctx.sizes.seconds,
            keyed=keyed,
            honour_retry_after=honour,
        )
        await check_stock(ctx.database_url, before, answers.created())
        return answers

    return asyncio.run(load_and_check())


def profiled(ctx: Context, pid: int, url: str) -> Profile:
    """py-spy on the worker while 200 clients write (a run of its own: sampling costs a little CPU)."""

    async def load() -> Answers:
        body = random_order(ctx.sizes.customers, ctx.sizes.products)
        return await post_orders(url, ctx.write_token, body, clients=CLIENTS, seconds=ctx.sizes.seconds + 2, keyed=True)

    async def profile_under_load() -> Profile:
        loading = asyncio.create_task(load())
        await asyncio.sleep(1)
        profile = await asyncio.to_thread(record, pid, ctx.sizes.seconds, ctx.scratch / "writes-profile.txt")
        await loading
        return profile

    return asyncio.run(profile_under_load())


async def snapshot(url: str) -> tuple[int, dict[int, int]]:
    async with connected(url) as connection:
        last_order = await connection.fetchval("SELECT coalesce(max(id), 0) FROM orders")
        stock = dict(await connection.fetch("SELECT id, stock FROM products"))
    return last_order, stock


SOLD_SINCE = """
    SELECT i.product_id, sum(i.quantity)::bigint
    FROM order_items i JOIN orders o ON o.id = i.order_id
    WHERE o.id > $1
    GROUP BY i.product_id
"""


async def check_stock(url: str, before: tuple[int, dict[int, int]], created: int, cut_off: int = 0) -> None:
    """Since ``before``: every product lost exactly the units of the new orders, none went below
    zero, and the ``created`` orders acknowledged with 201 are in the database, with at most
    ``cut_off`` more (requests a load generator dropped at its deadline, which the server committed)."""
    last_order, stock_before = before
    async with connected(url) as connection:
        stock_after = dict(await connection.fetch("SELECT id, stock FROM products"))
        sold = dict(await connection.fetch(SOLD_SINCE, last_order))
        new_orders = await connection.fetchval("SELECT count(*) FROM orders WHERE id > $1", last_order)
    wrong = {
        p: (stock_before[p], sold.get(p, 0), s) for p, s in stock_after.items() if s != stock_before[p] - sold.get(p, 0)
    }
    if wrong or min(stock_after.values()) < 0:
        raise InvariantBroken(f"stock does not add up (before, sold, after): {dict(list(wrong.items())[:5])}")
    if not created <= new_orders <= created + cut_off:
        raise InvariantBroken(f"{created} orders acknowledged with 201, {new_orders} in the database")


def measurement(label: str, clients: int, runs: list[Answers], rejected_in_server: list[float]) -> Measurement:
    """The accepted commands (``bench.load.accepted``), and the refused ones as seen by the clients
    (split where their requests left the load generator) and inside the server."""
    refused = frozenset({REJECTED})
    rejected = sorted(t for answers in runs for t in answers.latencies(refused))
    unsent = sorted(t for answers in runs for t in answers.before_sending(refused))
    sent = sorted(t for answers in runs for t in answers.after_sending(refused))
    found = accepted(SCENARIO, label, f"{clients} clients", runs)
    answered = found.count + len(rejected)
    return replace(
        found,
        extra={
            "rejected": len(rejected),
            "rejected_share": len(rejected) / answered if answered else 0.0,
            "rejected_p50_ms": quantile_ms(rejected, 0.5),
            "rejected_p99_ms": quantile_ms(rejected, 0.99),
            "rejected_in_server_p99_ms": quantile_ms(rejected_in_server, 0.99),
            "rejected_before_sending_p99_ms": quantile_ms(unsent, 0.99),
            "rejected_after_sending_p99_ms": quantile_ms(sent, 0.99),
        },
    )

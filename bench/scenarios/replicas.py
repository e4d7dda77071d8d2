"""Replicas: the same service with its reads on the primary, and with one streaming hot standby
behind the read side (READ_DATABASE_URL naming it), side by side. Reads: wrk on an order by id.
Writes: commands at the write pool's own concurrency, where the second setup also reads the
commit's WAL position for its Consistency-Token: that one round trip is the token's cost.

On one machine the standby shares the CPU with everything else, so it adds no capacity here: the
numbers show what choosing a replica and the token cost, not what a replica on its own host would add."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench.core import Context, Measurement
from bench.load import Answers, accepted, post_orders, random_order
from bench.servers import Server, serve_service
from bench.wrk import WrkResult, pooled, wrk
from shared.config import Settings
from testkit.standby import Standby

SCENARIO = "replicas"
PRIMARY_ONLY, WITH_REPLICA = "primary only", "one replica"


def server_url(database_url: str) -> str:
    """The maintenance database's URL on the same server (pg_basebackup connects to the server)."""
    return urlunsplit(urlsplit(database_url)._replace(path="/postgres"))


@contextmanager
def setups(ctx: Context) -> Iterator[dict[str, Server]]:
    standby = Standby(server_url(ctx.database_url))
    try:
        standby.create()
        standby.wait_caught_up(ctx.database_url)
        database = urlsplit(ctx.database_url).path.lstrip("/")
        with ExitStack() as stack:
            yield {
                PRIMARY_ONLY: stack.enter_context(serve_service(ctx, workers=1)),
                WITH_REPLICA: stack.enter_context(
                    serve_service(ctx, workers=1, READ_DATABASE_URL=standby.url(database))
                ),
            }
    finally:
        standby.destroy()


def run(ctx: Context) -> list[Measurement]:
    reads: dict[str, list[WrkResult]] = defaultdict(list)
    writes: dict[str, list[Answers]] = defaultdict(list)
    pool_size = Settings(database_url=ctx.database_url).write_pool_size
    with setups(ctx) as servers:
        for round_number in range(ctx.sizes.rounds):
            for setup, server in servers.items():
                if round_number == 0:
                    wrk(server.url, "/v1/orders/{id}", ctx.sizes.orders, seconds=1)  # warm-up
                reads[setup].append(wrk(server.url, "/v1/orders/{id}", ctx.sizes.orders, ctx.sizes.seconds))
                body = random_order(ctx.sizes.customers, ctx.sizes.products)
                load = post_orders(
                    server.url, ctx.write_token, body, clients=pool_size, seconds=ctx.sizes.seconds, keyed=False
                )
                writes[setup].append(asyncio.run(load))
        by_replica = routed_to_replicas(servers[WITH_REPLICA].url)
    read_rows = [pooled(SCENARIO, "GET /v1/orders/{id}", setup, results) for setup, results in reads.items()]
    return [
        *(
            replace(m, extra={"answered_by_replica": by_replica}) if m.contender == WITH_REPLICA else m
            for m in read_rows
        ),
        *(accepted(SCENARIO, f"POST /v1/orders, {pool_size} clients", setup, runs) for setup, runs in writes.items()),
    ]


def routed_to_replicas(url: str) -> float:
    """How many reads the replica answered, from the service's own counter: a run in which the
    replica answered nothing would compare the primary with itself."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    answered = sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(REPLICA_SERIES))
    if not answered:
        raise RuntimeError("the replica answered no read: the replicas scenario measured the primary twice")
    return answered


REPLICA_SERIES = 'db_reads_routed_total{route="replica"}'

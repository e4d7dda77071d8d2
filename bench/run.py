"""One benchmark run, from scratch: a fresh embedded PostgreSQL, seeded, every scenario in turn,
the report. Scenarios run in an order that keeps each one's data what it says (``SCENARIOS``): the
reads and the stats on the seeded orders, then the stats grow the table tenfold for the rest."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import report
from bench.core import FULL, SCENARIOS, SMOKE, Context, Measurement
from bench.database import scratch_database, seed, settle
from bench.profile import Profile, require_py_spy
from bench.scenarios import bulk, events, http_reads, isolation, query_layer, replicas, stats, write_floor, writes
from bench.servers import SERVICE_SETTINGS
from bench.wrk import require_wrk
from shared.config import Settings

RERUN = "pip install -e '.[bench]' && apt-get install wrk && python -m bench"


class NoNumbers(AssertionError):
    """A scenario finished without measuring anything: the smoke's one assertion."""


def run_benchmark(out: Path, *, smoke: bool, only: tuple[str, ...], say: Callable[[str], None]) -> Path:
    require_wrk(), require_py_spy()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the progress
    sizes = SMOKE if smoke else FULL
    started = time.monotonic()
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="orders-bench-logs-") as scratch:
        say(f"seeding {sizes.customers} customers, {sizes.products} products, {sizes.orders} orders")
        seeded_in = seed(url, sizes.customers, sizes.products, sizes.orders)
        ctx = Context(
            url, sizes, out, workers=os.cpu_count() or 1, write_token=secrets.token_urlsafe(16), scratch=Path(scratch)
        )
        measurements, profiles = run_scenarios(ctx, only or SCENARIOS, say)
    took = time.monotonic() - started
    pool_size = Settings(database_url=url).write_pool_size
    intro = introduction(ctx, seeded_in, took, smoke)
    if smoke:
        check_numbers(measurements, only or SCENARIOS)
    return report.write(out, measurements, profiles, intro, pool_size, smoke=smoke)


def run_scenarios(
    ctx: Context, names: tuple[str, ...], say: Callable[[str], None]
) -> tuple[list[Measurement], dict[str, Profile]]:
    measurements: list[Measurement] = []
    profiles: dict[str, Profile] = {}
    for name in names:
        started = time.monotonic()
        asyncio.run(settle(ctx.database_url))
        say(f"scenario {name} (the database settled in {time.monotonic() - started:.0f} s)")
        started = time.monotonic()
        if name == "query-layer":
            measurements += asyncio.run(query_layer.run(ctx))
        elif name == "http-reads":
            found, profiles[name] = http_reads.run(ctx)
            measurements += found
        elif name == "writes":
            found, profiles[name] = writes.run(ctx)
            measurements += found
        elif name == "events":
            found, profiles[name] = events.run(ctx)
            measurements += found
        else:
            scenario = {
                "isolation": isolation.run,
                "bulk": bulk.run,
                "replicas": replicas.run,
                "stats": stats.run,
                "write-floor": write_floor.run,
            }
            measurements += scenario[name](ctx)
        say(f"scenario {name}: {time.monotonic() - started:.0f} s")
    return measurements, profiles


def check_numbers(measurements: list[Measurement], names: tuple[str, ...]) -> None:
    for name in names:
        rows = [m for m in measurements if m.scenario == name]
        empty = [f"{m.case} / {m.contender}" for m in rows if not m.produced_numbers()]
        if not rows or empty:
            raise NoNumbers(f"scenario {name} produced no numbers for: {empty or 'anything'}")


def introduction(ctx: Context, seeded_in: float, took: float, smoke: bool) -> list[str]:
    s = ctx.sizes
    settings = Settings(database_url=ctx.database_url)
    return [
        f"Reproduce: `{RERUN}` ({took / 60:.1f} min here, from an empty machine state: a fresh embedded PostgreSQL"
        f" in a temporary directory, seeded in {seeded_in:.0f} s through the service's own bulk commands).",
        "",
        f"- Data: {s.customers} customers, {s.products} products, {s.orders} orders (1-4 items each, 90 days).",
        f"- Each load run lasts {s.seconds:g} s; contenders take turns, {s.rounds} round(s); rates pool the rounds"
        " (write-floor and the events' outbox: the median round's rate), p50 is the median round's, p99 the"
        " worst round's. Absolute numbers are noisy here; read the ratios.",
        "- Before each scenario the database is settled: `VACUUM ANALYZE`, then `CHECKPOINT`, so no vacuum or"
        " checkpoint left by the scenario before runs under the next one's contenders.",
        "- Load runs on the same machine as the servers and PostgreSQL: wrk (2 threads) for reads and for the"
        " commands measured against the write floor, `bench/load.py` (httpx, one connection per client) for the"
        " other commands.",
        f"- The service: `orders-api serve`, its defaults plus {SERVICE_SETTINGS}; pools per worker:"
        f" write {settings.write_pool_size} (waiting {settings.write_pool_max_waiting}),"
        f" read {settings.read_pool_min_size}..{settings.read_pool_max_size}"
        f" (waiting {settings.read_pool_max_waiting}).",
        "- The contenders (`bench/contenders/`), under uvicorn with the same workers and no access log: the"
        " async-ORM twin (FastAPI, Pydantic, SQLAlchemy async ORM with `selectinload`, pool 10), the bare floor"
        " (the service's SQL on an asyncpg pool of 10 with its default reset, the JSON text as the body,"
        " Starlette without middleware; in the same process the write floor: place order and pay hand-written,"
        f" one transaction each, on an asyncpg pool of {settings.write_pool_size}, the service's read-model"
        " statements and its order view as the reply, no auth, idempotency or metrics), and a constant-body"
        " ceiling (a bare ASGI callable).",
        *(
            []
            if not smoke
            else ["", "**Smoke run**: seconds-long, tiny data; the numbers prove only that every scenario measures."]
        ),
    ]

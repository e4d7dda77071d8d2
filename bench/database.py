"""The benchmark's own PostgreSQL: the embedded server in a scratch directory, migrated and seeded
through the service's bulk paths (``writes.seed``, the import command), gone when the run ends."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import writes.seed
from bench.servers import process_cpu_seconds
from service import embedded
from service.schema import upgrade_to_head
from shared.config import Settings
from shared.dto import ImportedLine, ImportedOrder
from testkit.database import connected, socket_dir
from writes import events
from writes.db import WritePool
from writes.handlers import OrderImport, import_orders


@contextmanager
def scratch_database() -> Iterator[str]:
    """A migrated, empty database on a fresh embedded server; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="orders-bench-") as scratch:
        server = embedded.start(Path(scratch) / "pgdata", delete_on_exit=True)
        try:
            asyncio.run(embedded.ensure_database(embedded.database_url(server, "postgres"), embedded.DATABASE_NAME))
            url = embedded.database_url(server, embedded.DATABASE_NAME)
            upgrade_to_head(url)
            yield url
        finally:
            server.cleanup()


def seed(url: str, customers: int, products: int, orders: int) -> float:
    """Add demo rows through the service's bulk commands; returns the seconds it took."""
    started = time.perf_counter()
    counts = writes.seed.SeedCounts(customers=customers, products=products, orders=orders)
    asyncio.run(writes.seed.seed(Settings(database_url=url), counts, lambda _: None))
    asyncio.run(analyze(url))
    return time.perf_counter() - started


def add_orders(url: str, orders: int) -> float:
    """More demo orders for the customers and products already seeded."""
    return seed(url, customers=1, products=1, orders=orders)


@dataclass(frozen=True)
class DatabaseCpu:
    """The CPU each process of the benchmark's PostgreSQL (its postmaster and every child: the
    backends, the WAL writer, the checkpointer, autovacuum) has used so far, from ``/proc``."""

    seconds: dict[int, float]  # by pid

    @classmethod
    def now(cls, url: str) -> DatabaseCpu:
        # The embedded server listens on a socket in its data directory.
        directory = socket_dir(url)
        if directory is None:
            raise ValueError(f"not the benchmark's embedded server (no socket directory): {url}")
        data_dir = Path(directory)
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        seconds = {}
        for pid in [postmaster, *map(int, children)]:
            with suppress(FileNotFoundError, ProcessLookupError):  # it exited meanwhile
                seconds[pid] = process_cpu_seconds(pid)
        return cls(seconds)

    def since(self, before: DatabaseCpu) -> float:
        """The CPU the server used from ``before`` to this one. A process that exited in between
        took what it used with it; the pools keep their connections, so under load that is little."""
        return sum(used - before.seconds.get(pid, 0.0) for pid, used in self.seconds.items())


async def analyze(url: str) -> None:
    """Fresh planner statistics, as autovacuum would give a long-running server."""
    async with connected(url) as connection:
        await connection.execute("VACUUM ANALYZE")


async def settle(url: str) -> None:
    """What the scenario before left to do in the background, done now: its dead rows vacuumed,
    its statistics analyzed and its dirty pages written out by a checkpoint. Otherwise autovacuum
    and a checkpoint spread over minutes run under whichever contender the next scenario measures
    at the time (as pgbench vacuums before each run)."""
    await analyze(url)
    async with connected(url) as connection:
        await connection.execute("CHECKPOINT")


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[WritePool]:
    pool = await events.open_pool(settings)
    try:
        yield pool
    finally:
        await pool.close()


async def demo_ids(url: str) -> tuple[list[int], list[int]]:
    async with connected(url) as connection:
        customers = [row[0] for row in await connection.fetch("SELECT id FROM customers ORDER BY id LIMIT 1000")]
        products = [row[0] for row in await connection.fetch("SELECT id FROM products WHERE stock > 1000")]
    return customers, products


async def pending_orders_of_today(url: str, customers: list[int], products: list[int], count: int) -> list[int]:
    """``count`` pending orders placed now, through the import command; their ids, in random order."""
    rng = random.Random(11)
    now = datetime.now(UTC)
    orders = [
        ImportedOrder(
            customer_id=rng.choice(customers),
            status="pending",
            created_at=now,
            items=[ImportedLine(product_id=p, quantity=1, unit_price_cents=500) for p in rng.sample(products, k=2)],
        )
        for _ in range(count)
    ]
    async with opened(Settings(database_url=url)) as pool:
        await pool.run(partial(import_orders, OrderImport(orders, list(range(1, count + 1)))))
    async with connected(url) as connection:
        ids = [
            row[0]
            for row in await connection.fetch("SELECT id FROM orders WHERE status = 'pending' AND created_at = $1", now)
        ]
    rng.shuffle(ids)
    return ids


if __name__ == "__main__":
    # python -m bench.database CUSTOMERS PRODUCTS ORDERS: a seeded scratch database to develop
    # against; prints its URL and keeps it until interrupted.
    customers, products, orders = (int(value) for value in sys.argv[1:4])
    # SIGTERM ends the process the way Ctrl-C does, so the server is stopped and its directory removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with scratch_database() as database_url:
        took = seed(database_url, customers, products, orders)
        print(f"{database_url}  (seeded in {took:.1f} s)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

"""The benchmark's own PostgreSQL: the embedded server in a scratch directory, migrated and seeded
through the service's bulk paths (``writes.seed``), gone when the run ends."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import writes.seed
from service import embedded
from service.schema import upgrade_to_head
from shared.config import Settings
from testkit.database import connected


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


async def analyze(url: str) -> None:
    """Fresh planner statistics, as autovacuum would give a long-running server."""
    async with connected(url) as connection:
        await connection.execute("VACUUM ANALYZE")


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

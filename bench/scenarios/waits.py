"""What the database's busy connections are waiting for while a load runs: ``pg_stat_activity``
sampled every ``PERIOD`` from a thread of its own, each active client backend counted by its wait
(a row lock, the WAL's flush, or none: running). The events scenario reads from it where a
command's outbox append costs more than its statement: commits that queue on ``events_head``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from testkit.database import connected

PERIOD = 0.02  # seconds between samples
SAMPLE_WITHIN = 120.0  # seconds a sampler runs at most, whatever its load does

ACTIVE = """
    SELECT coalesce(wait_event_type || ':' || wait_event, 'running') FROM pg_stat_activity
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state = 'active'
"""
# A commit queued behind another's on the head row waits on that transaction (Lock:transactionid;
# Lock:tuple for the ones queued behind it); one waiting for the WAL to reach the disk, on
# IO:WalSync (its own flush) or LWLock:WALWrite (another's).
KINDS = {
    "Lock:transactionid": "lock",
    "Lock:tuple": "lock",
    "IO:WalSync": "wal",
    "IO:WalWrite": "wal",
    "LWLock:WALWrite": "wal",
    "running": "running",
}
KINDS_SHOWN = ("running", "lock", "wal", "other")


@dataclass
class Waits:
    samples: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # "lock", "wal", "running", "other"

    def averages(self) -> dict[str, float]:
        """The average number of busy connections of each kind in a sample."""
        samples = max(1, self.samples)
        return {f"{kind}_waiting" if kind != "running" else kind: self.kinds[kind] / samples for kind in KINDS_SHOWN}


@contextmanager
def sampling(url: str, into: Waits) -> Iterator[None]:
    """Samples into ``into`` until the block ends."""
    stop = threading.Event()
    sampler = threading.Thread(target=lambda: asyncio.run(sample(url, stop, into)), name="bench waits sampler")
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()


async def sample(url: str, stop: threading.Event, into: Waits) -> None:
    deadline = time.monotonic() + SAMPLE_WITHIN
    async with connected(url) as connection:
        while not stop.is_set() and time.monotonic() < deadline:
            for (wait,) in await connection.fetch(ACTIVE):
                into.kinds[KINDS.get(wait, "other")] += 1
            into.samples += 1
            await asyncio.sleep(PERIOD)

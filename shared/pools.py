"""What the two pools share: a gate that bounds how many requests may wait for a connection, and
publishes the numbers an operator reads off each pool.

A pool without a bounded queue turns overload into latency: 200 writers on a pool of 5 each wait
the whole timeout, and most of them then fail anyway. The gate admits at most ``capacity``
holders (the pool's own ceiling, so the driver's pool never queues) and at most ``max_waiting``
waiters. A request that finds the queue full is refused at once; one that waits past its timeout
is refused then. Both are 503s with ``Retry-After``, named for the pool and the setting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.dbfailures import PoolNames, exhausted
from shared.errors import PoolExhausted
from shared.metrics import pool_series

# A queue-full refusal's Retry-After, in whole seconds (what the header allows): 1 to 3, at random.
# Refused together, clients that honour it would otherwise come back together, a second later, as
# the same burst that was refused; spread over three seconds, each second's burst is a third.
RETRY_SPREAD = 3


class Admission:
    """A command's place at the gate, reserved as it arrives (``Gate.admit``) and given up when it
    enters (``Gate.slot``) or fails before it does. ``release`` may be called any number of times."""

    __slots__ = ("_gate",)

    def __init__(self, gate: Gate) -> None:
        self._gate: Gate | None = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.admitted -= 1


class Gate:
    def __init__(self, names: PoolNames, *, capacity: int, max_waiting: int) -> None:
        self.names = names
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.in_use = 0
        self.waiting = 0
        self.admitted = 0  # admitted on arrival (``admit``), not yet holding or waiting for a place
        self._free = asyncio.Semaphore(capacity)
        # The gate publishes its numbers as they change: with several workers, /metrics sums what
        # every worker published, so a number kept only in memory would show for one worker alone.
        self._series = pool_series(names)
        self._series.max.set(capacity)

    @asynccontextmanager
    async def slot(self, wait: float, *, shed: bool = True, admission: Admission | None = None) -> AsyncIterator[None]:
        """Hold one of the pool's places for the block, waiting ``wait`` seconds at most. ``shed=False``
        is for a caller that must not be turned away at once (an export already streaming, a
        readiness probe): it waits its turn even when the queue is full. So is a caller with an
        ``admission``: its place in the queue was counted since it arrived."""
        if admission is not None:
            admission.release()
            shed = False
        await self._enter(wait, shed=shed)
        try:
            yield
        finally:
            self.in_use -= 1
            self._series.in_use.set(self.in_use)
            self._free.release()

    def admit(self) -> Admission:
        """Refuse a command now (the queue-full 503) if it would find no place, else reserve its
        place until it enters (``slot(admission=...)``). A command calls this as it arrives, before
        reading its body: on a worker busy with the commands it holds, each await before a
        refusal is another turn of the event loop, tens of milliseconds each. A command admitted
        is never refused for a full queue later: the commands admitted but still reading their
        bodies count as waiting, so a burst that arrives in one turn cannot overfill the queue."""
        self.refuse_if_full()
        self.admitted += 1
        return Admission(self)

    def refuse_if_full(self) -> None:
        """Raise the queue-full 503 now if a request arriving now would be refused."""
        if self.in_use + self.waiting + self.admitted >= self.capacity + self.max_waiting:
            self._series.timeouts.inc()
            raise PoolExhausted(
                f"{self.names.pool}: {self.waiting + self.admitted} requests already wait for a connection"
                f" ({self.names.max_waiting}={self.max_waiting})",
                retry_after=random.randint(1, RETRY_SPREAD),  # noqa: S311 - jitter, not a secret
            )

    async def _enter(self, wait: float, *, shed: bool) -> None:
        # A refusal and a timeout are both counted: each is a 503 an operator tunes the pool against.
        # Only acquires that got a place are timed; the count of the others is the counter.
        series = self._series
        if not self._free.locked() and not self.waiting:
            # A free place and no one ahead: taken at once, without arming a timeout (the common
            # case, on every request; a timer armed and cancelled costs more than the rest).
            # Semaphore.acquire returns without suspending when a place is free.
            await self._free.acquire()
            self.in_use += 1
            series.in_use.set(self.in_use)
            series.acquire_seconds.observe(0.0)
            return
        if shed:
            self.refuse_if_full()
        started = time.perf_counter()
        self.waiting += 1
        series.waiting.set(self.waiting)
        try:
            async with asyncio.timeout(wait):
                await self._free.acquire()
        except TimeoutError:
            series.timeouts.inc()
            raise exhausted(self.names, wait) from None
        finally:
            self.waiting -= 1
            series.waiting.set(self.waiting)
        self.in_use += 1
        series.in_use.set(self.in_use)
        series.acquire_seconds.observe(time.perf_counter() - started)

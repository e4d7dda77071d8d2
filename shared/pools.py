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
from collections import deque
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
    """The places of one pool, handed out first come, first served.

    A place freed while requests wait passes straight to the longest waiting (``in_use`` does not
    drop), so an arrival never overtakes the queue. Each waiter holds one future and one timer
    handle: not ``asyncio.Semaphore`` under ``asyncio.timeout``, whose context manager, its timer and
    the semaphore's own waiter took 10 µs of CPU a place where this takes 6 (16 holders on 10
    places, so most wait, as every read does under load; the README's issue 20, round 6)."""

    def __init__(self, names: PoolNames, *, capacity: int, max_waiting: int) -> None:
        self.names = names
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.in_use = 0
        self.waiting = 0
        self.admitted = 0  # admitted on arrival (``admit``), not yet holding or waiting for a place
        # Each waiter's future: set to True when a place is handed to it, False when its wait ran out.
        self._waiters: deque[asyncio.Future[bool]] = deque()
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
        await self.enter(wait, shed=shed)
        try:
            yield
        finally:
            self.leave()

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
                # In places, not in requests waiting: a command admitted while it reads its body holds
                # a place before it takes a connection or joins the queue.
                f"{self.names.pool}: its {self.capacity} connections and the {self.max_waiting} places in its queue"
                f" are all taken ({self.names.max_waiting}={self.max_waiting})",
                retry_after=random.randint(1, RETRY_SPREAD),  # noqa: S311 - jitter, not a secret
            )

    async def enter(self, wait: float, *, shed: bool = True) -> None:
        """Take a place, waiting ``wait`` seconds at most (``slot`` without its block: the caller
        must ``leave`` once, whatever happens after this returns)."""
        # A refusal and a timeout are both counted: each is a 503 an operator tunes the pool against.
        # Only acquires that got a place are timed; the count of the others is the counter.
        series = self._series
        if self.in_use < self.capacity and not self._waiters:
            # A free place and no one ahead: taken at once, without a timer or a suspension (the
            # common case on a pool that keeps up).
            self.in_use += 1
            series.acquire_seconds.observe(0.0)
            return
        if shed:
            self.refuse_if_full()
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        place: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(place)
        self.waiting += 1
        expiry = loop.call_later(wait, _run_out, place)
        try:
            handed = await place
        except BaseException:
            # Cancelled while waiting; or just after a place was handed over, before it resumed:
            # that place goes on to the next in line.
            expiry.cancel()
            if _handed(place):
                self.leave()
            else:
                self._stop_waiting(place)
            raise
        expiry.cancel()
        if not handed:  # the wait ran out
            self._stop_waiting(place)
            series.timeouts.inc()
            raise exhausted(self.names, wait)
        # A place handed over stopped counting as waiting then (``leave``).
        series.acquire_seconds.observe(time.perf_counter() - started)

    def leave(self) -> None:
        """Give a place back: to the longest waiting, else to the pool."""
        while self._waiters:
            place = self._waiters.popleft()
            if not place.done():
                place.set_result(True)  # in_use stays: the place changes hands
                self.waiting -= 1  # at once, so the queue is never counted one longer than it is
                return
        self.in_use -= 1

    def publish(self) -> None:
        """Set the pool's ``in_use`` and ``waiting`` gauges to the numbers now. Not at every change:
        that was two gauge writes on every query's way in and out, 8 of the 85 Python calls a
        product read made beyond the bare floor's. A process publishes its pools every second and
        at each scrape it answers (``shared.metrics.publish_pools``), so with several workers the
        sum /metrics reads is at most a second old for the others, and exact for the one answering."""
        self._series.in_use.set(self.in_use)
        self._series.waiting.set(self.waiting)

    def _stop_waiting(self, place: asyncio.Future[bool]) -> None:
        """A waiter leaves the queue without a place."""
        if place in self._waiters:  # else ``leave`` took it off already
            self._waiters.remove(place)
        self.waiting -= 1


def _handed(place: asyncio.Future[bool]) -> bool:
    return place.done() and not place.cancelled() and place.result()


def _run_out(place: asyncio.Future[bool]) -> None:
    if not place.done():
        place.set_result(False)

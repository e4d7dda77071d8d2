"""The gate in front of each pool (``shared.pools.Gate``): its places go first come, first served, a
wait that runs out is a 503, and no way of leaving the queue loses a place: a place lost would
shrink the pool for the life of the process."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from shared.dbfailures import READ
from shared.errors import PoolExhausted
from shared.pools import Gate


async def hold(gate: Gate, name: str, order: list[str], release: asyncio.Event, wait: float = 5.0) -> None:
    async with gate.slot(wait):
        order.append(name)
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_freed_place_goes_to_the_longest_waiting_not_to_a_later_arrival() -> None:
    gate = Gate(READ, capacity=1, max_waiting=10)
    order: list[str] = []
    releases = {name: asyncio.Event() for name in ("second", "third", "late")}
    await gate.enter(5.0)
    tasks = [asyncio.create_task(hold(gate, name, order, releases[name])) for name in ("second", "third")]
    await settle()
    assert (order, gate.in_use, gate.waiting) == ([], 1, 2)

    # The late arrival's first step runs before the longest waiting resumes: a gate that freed the
    # place and let whoever came next take it would let the late arrival in first.
    late = asyncio.create_task(hold(gate, "late", order, releases["late"]))
    gate.leave()
    await settle()
    assert order == ["second"]
    for name in ("second", "third", "late"):
        releases[name].set()
    await asyncio.gather(*tasks, late)

    assert order == ["second", "third", "late"]
    assert (gate.in_use, gate.waiting) == (0, 0)


async def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue() -> None:
    gate = Gate(READ, capacity=1, max_waiting=10)
    async with gate.slot(5.0):
        with pytest.raises(PoolExhausted, match="READ_POOL_ACQUIRE_TIMEOUT"):
            async with gate.slot(0.05):
                pytest.fail("entered a full gate")
        assert (gate.in_use, gate.waiting) == (1, 0)
    async with gate.slot(0.05):  # the place the refused waiter never took is free
        assert gate.in_use == 1
    assert gate.in_use == 0


async def test_a_waiter_cancelled_while_waiting_leaves_the_queue() -> None:
    gate = Gate(READ, capacity=1, max_waiting=10)
    order: list[str] = []
    release = asyncio.Event()
    holder = asyncio.create_task(hold(gate, "holder", order, release))
    gone = asyncio.create_task(hold(gate, "gone", order, release))
    await settle()
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert gate.waiting == 0

    release.set()
    await holder
    assert order == ["holder"]
    assert (gate.in_use, gate.waiting) == (0, 0)


async def test_a_waiter_cancelled_after_a_place_was_handed_to_it_passes_the_place_on() -> None:
    gate = Gate(READ, capacity=1, max_waiting=10)
    order: list[str] = []
    after = asyncio.Event()
    await gate.enter(5.0)
    handed = asyncio.create_task(hold(gate, "handed", order, after))
    next_in_line = asyncio.create_task(hold(gate, "next", order, after))
    await settle()
    assert gate.waiting == 2

    gate.leave()  # hands the place to "handed", which is cancelled before it resumes
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    await settle()
    assert order == ["next"]  # the place went on, not lost
    after.set()
    await next_in_line

    assert (gate.in_use, gate.waiting) == (0, 0)
    async with gate.slot(0.05):
        pass


async def test_a_place_handed_over_stops_counting_as_waiting_at_once() -> None:
    """Between the hand-over and the waiter's resuming, the queue is not counted one longer than it
    is: an arrival in that moment is not refused for a queue that is not full."""
    gate = Gate(READ, capacity=1, max_waiting=1)
    await gate.enter(5.0)
    waiter = asyncio.create_task(gate.enter(5.0))
    await settle()
    assert gate.waiting == 1

    gate.leave()  # the place goes to the waiter, which has not resumed yet
    assert (gate.in_use, gate.waiting) == (1, 0)
    gate.refuse_if_full()  # one holds, none waits: an arrival may queue
    await waiter
    gate.leave()
    assert (gate.in_use, gate.waiting) == (0, 0)


async def test_under_random_holds_cancels_and_timeouts_no_place_is_lost_or_overused() -> None:
    """Many requests at once, holding for random times, some with waits short enough to run out and
    some cancelled: at random moments, and right as a holder leaves (when the place it frees has just
    been handed to the longest waiting): never more holders than places, and every place back."""
    gate = Gate(READ, capacity=3, max_waiting=1000)
    rng = random.Random(20)  # noqa: S311 - a repeatable schedule, not a secret
    holding = 0
    most = 0
    outcomes: Counter[str] = Counter()
    queued: list[asyncio.Task[None]] = []  # the requests waiting for a place, longest waiting first

    async def request(wait: float, hold: float) -> None:
        nonlocal holding, most
        me = asyncio.current_task()
        assert me is not None
        queued.append(me)
        try:
            async with gate.slot(wait):
                queued.remove(me)
                holding += 1
                most = max(most, holding)
                try:
                    await asyncio.sleep(hold)
                finally:
                    holding -= 1
            if queued and rng.random() < 0.3:
                queued[0].cancel()  # most likely the one just handed this place, not yet resumed
        except PoolExhausted:
            outcomes["ran out"] += 1
        else:
            outcomes["served"] += 1
        finally:
            if me in queued:
                queued.remove(me)

    tasks = [asyncio.create_task(request(rng.choice([0.001, 0.01, 1.0]), rng.uniform(0, 0.003))) for _ in range(300)]
    for _ in range(30):
        await asyncio.sleep(rng.uniform(0, 0.002))
        rng.choice(tasks).cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    cancelled = sum(isinstance(result, asyncio.CancelledError) for result in results)
    assert most <= gate.capacity
    assert (gate.in_use, gate.waiting, holding) == (0, 0, 0)
    assert outcomes["served"] > 0, outcomes
    assert outcomes["ran out"] > 0, outcomes
    assert cancelled > 0
    assert outcomes["served"] + outcomes["ran out"] + cancelled == len(tasks)
    async with gate.slot(0.05), gate.slot(0.05), gate.slot(0.05):  # all three places are free again
        assert gate.in_use == gate.capacity

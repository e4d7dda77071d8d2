"""Overload is answered at once, never with a hang: each pool has a bounded queue of waiting
requests. Past it a request is refused immediately; one that waits past the pool's timeout is
refused then; a held request completes when what held it goes; the other pool is unaffected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

import asyncpg
import httpx
import msgspec

from service.app import create_app
from shared.config import Settings
from shared.dbfailures import WRITE
from shared.errors import PoolExhausted
from shared.pools import Gate
from tests.support import AUTH, eventually, serving
from tests.writes.support import assert_problem, new_customer, new_product

POOL, QUEUE, TIMEOUT = 2, 3, 1.0


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def test_a_full_write_queue_is_refused_at_once_and_held_commands_complete_when_the_lock_goes(
    settings: Settings, db: asyncpg.Connection
) -> None:
    app = create_app(
        msgspec.structs.replace(
            settings, write_pool_size=POOL, write_pool_max_waiting=QUEUE, write_pool_timeout=TIMEOUT
        )
    )
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        customer, product = await new_customer(http), await new_product(http, stock=100)
        gate: Gate = app.state.resources.pools["writes"].gate
        order = {"customer_id": customer, "items": [{"product_id": product, "quantity": 1}]}

        def place() -> Coroutine[Any, Any, httpx.Response]:
            return http.post("/v1/orders", json=order, headers=AUTH)

        async with db.transaction():
            # An outside row lock: every order for this product now holds its connection and waits.
            await db.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product)
            held = [asyncio.create_task(place()) for _ in range(POOL)]
            await eventually(lambda: gate.in_use == POOL)

            # Room in the queue: the next command waits its turn, and gets a 503 at the timeout.
            waited, waited_for = await timed(place())
            queued = [asyncio.create_task(place()) for _ in range(QUEUE)]
            await eventually(lambda: gate.waiting == QUEUE)

            # The queue is full: refused at once (the queue is still full when the answer comes, and
            # the answer names the queue's setting, not the timeout's), naming the setting.
            refused = await place()
            still_queued = gate.waiting
            # The read pool is another pool: reads are served while the write pool is full.
            busy_reads = [await http.get(f"/v1/products/{product}") for _ in range(5)]
        # The lock is gone: the held commands complete.
        completed = await asyncio.gather(*held)
        late = await asyncio.gather(*queued)

    assert_problem(waited, 503, "write pool", "WRITE_POOL_TIMEOUT")
    # Bounded: it waited the timeout, not the lock (which outlives it by the whole test).
    assert TIMEOUT <= waited_for < TIMEOUT + 5
    assert_problem(refused, 503, "write pool", "WRITE_POOL_MAX_WAITING")
    assert refused.headers["retry-after"] in {"1", "2", "3"}
    assert still_queued == QUEUE
    assert [response.status_code for response in completed] == [201] * POOL
    assert {response.status_code for response in late} <= {201, 503}
    assert [response.status_code for response in busy_reads] == [200] * len(busy_reads)
    assert await db.fetchval("SELECT stock FROM products WHERE id = $1", product) == 100 - sum(
        response.status_code == 201 for response in [*completed, *late]
    )


async def test_commands_admitted_while_their_bodies_arrive_keep_their_places_and_later_ones_are_refused(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """A command is admitted (or refused) as its head arrives: one still sending its body holds its
    place in the queue, so the queue cannot overfill with a burst, and it is never refused later."""
    app = create_app(
        msgspec.structs.replace(settings, write_pool_size=POOL, write_pool_max_waiting=QUEUE, write_pool_timeout=10)
    )
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
        customer, product = await new_customer(http), await new_product(http, stock=100)
        gate: Gate = app.state.resources.pools["writes"].gate
        body = msgspec.json.encode({"customer_id": customer, "items": [{"product_id": product, "quantity": 1}]})
        head = (
            f"POST /v1/orders HTTP/1.1\r\nHost: test\r\nAuthorization: {AUTH['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        host, port = url.removeprefix("http://").split(":")
        slow = [await asyncio.open_connection(host, int(port)) for _ in range(QUEUE)]
        try:
            async with db.transaction():
                await db.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product)
                order = {"customer_id": customer, "items": [{"product_id": product, "quantity": 1}]}
                held = [asyncio.create_task(http.post("/v1/orders", json=order, headers=AUTH)) for _ in range(POOL)]
                await eventually(lambda: gate.in_use == POOL)
                for _, writer in slow:  # heads only: admitted, their bodies still to come
                    writer.write(head)
                await eventually(lambda: gate.admitted == QUEUE)
                refused = await http.post("/v1/orders", json=order, headers=AUTH)
                for _, writer in slow:  # the bodies: each admitted command now waits, none is refused
                    writer.write(body)
                await eventually(lambda: gate.waiting == QUEUE and gate.admitted == 0)
            answers = [await one_status(reader) for reader, _ in slow]
            completed = await asyncio.gather(*held)
        finally:
            for _, writer in slow:
                writer.close()
        # A body that fails to decode gives its place up.
        bad = await http.post("/v1/orders", content=b"{", headers={**AUTH, "Content-Type": "application/json"})

    assert_problem(refused, 503, "write pool", "WRITE_POOL_MAX_WAITING")
    assert answers == [201] * QUEUE
    assert [response.status_code for response in completed] == [201] * POOL
    assert bad.status_code == 400
    assert gate.admitted == 0
    assert gate.waiting == 0


async def one_status(reader: asyncio.StreamReader) -> int:
    """The status of the HTTP response ``reader`` receives (its head is enough)."""
    line = await asyncio.wait_for(reader.readline(), 20)
    return int(line.split()[1])


def test_a_full_queue_spreads_its_refusals_retry_after_over_three_seconds() -> None:
    """Clients refused together must not all come back together a second later."""
    gate = Gate(WRITE, capacity=1, max_waiting=0)
    gate.in_use = 1
    seen = set()
    for _ in range(200):
        try:
            gate.admit()
        except PoolExhausted as refused:
            seen.add(refused.headers["Retry-After"])
    assert seen == {"1", "2", "3"}
    assert gate.admitted == 0


async def test_a_full_read_queue_is_refused_at_once(settings: Settings) -> None:
    # A long acquire timeout: a refusal that had waited in the queue could not arrive while the
    # connection is still held.
    app = create_app(
        msgspec.structs.replace(settings, read_pool_max_size=1, read_pool_max_waiting=2, read_pool_acquire_timeout=60.0)
    )
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        reads = app.state.resources.pools["reads"]
        async with reads.connection():
            waiting = [asyncio.create_task(http.get("/v1/orders")) for _ in range(2)]
            await eventually(lambda: reads.gate.waiting == 2)
            refused = await http.get("/v1/orders")
            still_waiting = reads.gate.waiting
            command = await http.post("/v1/customers", json={"email": "w@x.co", "name": "W"}, headers=AUTH)
        served = await asyncio.gather(*waiting)

    assert_problem(refused, 503, "read pool", "READ_POOL_MAX_WAITING")
    assert still_waiting == 2
    assert command.status_code == 201  # the write pool is not the read pool
    assert [response.status_code for response in served] == [200, 200]

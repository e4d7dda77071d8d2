"""Idempotency-Key: one effect per key, replays byte for byte, scoped to the caller's token."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from asyncpg.connection import LoggedQuery
from sqlalchemy import event
from starlette.applications import Starlette

from service.app import create_app
from service.schema import head_revision
from shared.config import Settings
from tests.support import AUTH, WRITE_TOKEN, eventually, running_client
from tests.writes.support import assert_problem, new_customer, new_product, place
from writes import idempotency
from writes.db import WritePool
from writes.side import IDEMPOTENCY_PURGE, open_write_side


async def test_a_retry_with_the_same_key_replays_the_stored_response_and_runs_nothing_twice(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    product_id = await new_product(client, stock=10)
    first = await place(client, customer_id, (product_id, 2), **{"Idempotency-Key": "order-1"})
    again = await place(client, customer_id, (product_id, 2), **{"Idempotency-Key": "order-1"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await db.fetchval("SELECT count(*) FROM orders") == 1
    assert await db.fetchval("SELECT stock FROM products") == 8


async def test_50_concurrent_requests_with_one_key_make_one_order_and_50_identical_201s(
    settings: Settings, db: asyncpg.Connection
) -> None:
    # Room for all 50 in the queue: this is about the key, not shedding (see tests/test_shedding.py).
    app = create_app(msgspec.structs.replace(settings, write_pool_max_waiting=50))
    async with running_client(app) as client:
        customer_id = await new_customer(client)
        product_id = await new_product(client, stock=100)
        responses = await asyncio.gather(
            *(place(client, customer_id, (product_id, 1), **{"Idempotency-Key": "same"}) for _ in range(50))
        )
    assert [response.status_code for response in responses] == [201] * 50
    assert len({response.content for response in responses}) == 1
    assert sum(response.headers.get("idempotent-replayed") == "true" for response in responses) == 49
    assert await db.fetchval("SELECT count(*) FROM orders") == 1
    assert await db.fetchval("SELECT stock FROM products") == 99


async def test_the_same_key_with_another_body_or_path_is_422_and_runs_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    key = {"Idempotency-Key": "k"}
    customer_id = await new_customer(client)
    product_id = await new_product(client, stock=10)
    assert (await place(client, customer_id, (product_id, 1), **key)).status_code == 201
    assert_problem(await place(client, customer_id, (product_id, 2), **key), 422, "Idempotency-Key")
    other_path = await client.post(f"/v1/products/{product_id}/restock", json={"quantity": 1}, headers={**AUTH, **key})
    assert_problem(other_path, 422, "Idempotency-Key")
    assert await db.fetchval("SELECT count(*) FROM orders") == 1
    assert await db.fetchval("SELECT stock FROM products") == 9


async def test_a_failed_request_stores_nothing_so_its_retry_runs(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    key = {"Idempotency-Key": "k"}
    customer_id = await new_customer(client)
    product_id = await new_product(client, stock=1)
    assert_problem(await place(client, customer_id, (product_id, 2), **key), 409, "has 1 in stock")
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    await client.post(f"/v1/products/{product_id}/restock", json={"quantity": 1}, headers=AUTH)
    retry = await place(client, customer_id, (product_id, 2), **key)
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers


async def test_keys_are_scoped_to_the_callers_token(settings: Settings, db: asyncpg.Connection) -> None:
    app = create_app(msgspec.structs.replace(settings, write_api_tokens=(WRITE_TOKEN, "other-token")))
    async with running_client(app) as client:
        body = {"email": "a@example.com", "name": "A"}
        first = await client.post("/v1/customers", json=body, headers={**AUTH, "Idempotency-Key": "k"})
        other = {"Authorization": "Bearer other-token", "Idempotency-Key": "k"}
        second = await client.post("/v1/customers", json=body, headers=other)
    assert first.status_code == 201
    assert_problem(second, 409, "a@example.com")  # it ran, and met the first one's row
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1


async def test_an_expired_key_is_taken_over_by_the_next_request_which_runs_again(
    app: Starlette, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    key = {**AUTH, "Idempotency-Key": "k"}
    product_id = await new_product(client, stock=0)
    assert (await client.post(f"/v1/products/{product_id}/restock", json={"quantity": 1}, headers=key)).is_success
    await db.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
    await insert_expired_keys(db, ["stale"])
    with statements(app) as seen:
        again = await client.post(f"/v1/products/{product_id}/restock", json={"quantity": 1}, headers=key)
    assert again.status_code == 200
    assert "idempotent-replayed" not in again.headers
    assert await db.fetchval("SELECT stock FROM products") == 2
    # Taken over in place by the claim itself: no DELETE on the request path, and another caller's
    # expired key is left to the purge task.
    assert not [statement for statement in seen if "DELETE" in statement]
    rows = await db.fetch("SELECT key, expires_at > now() AS live FROM idempotency_keys ORDER BY key")
    assert [tuple(row) for row in rows] == [("k", True), ("stale", False)]
    ttl = await db.fetchval("SELECT extract(epoch FROM expires_at - created_at) FROM idempotency_keys WHERE key = 'k'")
    assert ttl == app.state.resources.settings.idempotency_ttl
    replay = await client.post(f"/v1/products/{product_id}/restock", json={"quantity": 1}, headers=key)
    assert (replay.headers["idempotent-replayed"], replay.content) == ("true", again.content)


async def test_a_key_costs_a_command_two_statements_and_a_replay_needs_one(
    app: Starlette, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    product_id = await new_product(client, stock=10)
    with statements(app) as unkeyed:
        assert (await place(client, customer_id, (product_id, 1))).status_code == 201
    with statements(app) as keyed:
        assert (await place(client, customer_id, (product_id, 1), **{"Idempotency-Key": "k"})).status_code == 201
    with statements(app) as replay:
        again = await place(client, customer_id, (product_id, 1), **{"Idempotency-Key": "k"})
    assert again.headers["idempotent-replayed"] == "true"
    # The claim (which bounds its own wait and reads a stored response) and the store of the response.
    assert len(keyed) == len(unkeyed) + 2
    assert [statement for statement in replay if not transaction_control(statement)] == [idempotency.CLAIM.sql]
    assert "lock_timeout" not in " ".join(unkeyed)


async def test_a_keyed_commands_own_lock_waits_are_not_cut_short_by_the_wait_for_a_first_request(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    product_id = await new_product(client, stock=10)
    # Longer than the 2 s a retry waits for its first request, within WRITE_STATEMENT_TIMEOUT_MS.
    held = 2.5
    async with db.transaction():
        await db.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", product_id)
        order = asyncio.create_task(place(client, customer_id, (product_id, 1), **{"Idempotency-Key": "k"}))
        await asyncio.sleep(held)
        assert not order.done()
    response = await order
    assert response.status_code == 201, response.text
    assert await db.fetchval("SELECT stock FROM products") == 9


async def test_a_purge_deletes_expired_keys_a_bounded_batch_at_a_time_and_skips_locked_ones(
    app: Starlette, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await client.post(
        "/v1/customers", json={"email": "a@example.com", "name": "A"}, headers={**AUTH, "Idempotency-Key": "live"}
    )
    await insert_expired_keys(db, [f"expired-{n:02}" for n in range(25)])
    pool = write_pool(app)
    assert await pool.run(partial(idempotency.purge_expired, batch=10)) == 10
    assert await idempotency.purge_round(pool, batch=10, batches=1) == 10
    async with db.transaction():
        # A row a claim is taking over: the purge goes around it rather than waiting.
        await db.execute("SELECT 1 FROM idempotency_keys WHERE key = 'expired-24' FOR UPDATE")
        async with asyncio.timeout(1):
            assert await idempotency.purge_round(pool, batch=2, batches=10) == 4
    rows = await db.fetch("SELECT key FROM idempotency_keys ORDER BY key")
    assert [row["key"] for row in rows] == ["expired-24", "live"]


async def test_the_write_pool_purges_expired_keys_while_open_and_stops_when_closed(
    settings: Settings, db: asyncpg.Connection
) -> None:
    pool = await open_write_side(settings, head_revision(), purge_every=0.05)
    try:
        await insert_expired_keys(db, ["a", "b", "c"])

        async def purged() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0)

        await eventually(purged, within=5)
    finally:
        await pool.close()
    [purger] = [task for task in pool.tasks if task.get_name() == IDEMPOTENCY_PURGE]
    assert purger.done()
    await insert_expired_keys(db, ["after-close"])
    await asyncio.sleep(0.3)
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 1


async def test_the_apps_write_pool_runs_the_purge_task_for_as_long_as_the_app_runs(settings: Settings) -> None:
    app = create_app(settings)
    async with running_client(app):
        [purger] = [task for task in write_pool(app).tasks if task.get_name() == IDEMPOTENCY_PURGE]
        assert not purger.done()
    assert purger.done()


async def insert_expired_keys(db: asyncpg.Connection, keys: list[str]) -> None:
    """Keys of another caller that expired a day ago."""
    await db.executemany(
        "INSERT INTO idempotency_keys (token_hash, key, fingerprint, status_code, headers, body, expires_at)"
        " VALUES ('\\x00', $1, '\\x00', 200, '{}', '', now() - interval '1 day')",
        [(key,) for key in keys],
    )


def write_pool(app: Starlette) -> WritePool:
    pool = app.state.resources.pools["writes"]
    assert isinstance(pool, WritePool)
    return pool


def transaction_control(statement: str) -> bool:
    return statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))


@contextmanager
def statements(app: Starlette) -> Iterator[list[str]]:
    """The statements the app's write pool sends while the block runs, BEGIN and COMMIT too: the
    session's and those sent on its driver (``writes.ondriver``), as asyncpg sees them."""
    engine = write_pool(app).engine.sync_engine
    seen: list[str] = []
    logged: set[asyncpg.Connection] = set()

    def record(query: LoggedQuery) -> None:
        seen.append(query.query)

    def checkout(dbapi_connection: Any, *_: object) -> None:
        driver = dbapi_connection.driver_connection
        if driver not in logged:
            logged.add(driver)
            driver.add_query_logger(record)

    event.listen(engine, "checkout", checkout)
    try:
        yield seen
    finally:
        event.remove(engine, "checkout", checkout)
        for driver in logged:
            driver.remove_query_logger(record)


async def test_a_key_is_kept_for_idempotency_ttl_seconds(
    app: Starlette, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await client.post(
        "/v1/customers", json={"email": "a@example.com", "name": "A"}, headers={**AUTH, "Idempotency-Key": "k"}
    )
    ttl = await db.fetchval("SELECT extract(epoch FROM expires_at - created_at) FROM idempotency_keys")
    assert ttl == app.state.resources.settings.idempotency_ttl


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
async def test_a_malformed_key_is_422_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, key: str
) -> None:
    headers = {name.encode(): value.encode() for name, value in {**AUTH, "Idempotency-Key": key}.items()}
    response = await client.post("/v1/customers", json={"email": "a@example.com", "name": "A"}, headers=headers)
    assert_problem(response, 422, "Idempotency-Key")
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


BODY = b'{"email": "a@example.com", "name": "A"}'


async def hold_key(db: asyncpg.Connection) -> None:
    """Insert, inside ``db``'s open transaction, the row a first request with key ``k`` would hold."""
    token_hash = hashlib.sha256(WRITE_TOKEN.encode()).digest()
    fingerprint = hashlib.sha256(b"POST\n/v1/customers\n" + BODY).digest()
    await db.execute(
        "INSERT INTO idempotency_keys (token_hash, key, fingerprint, status_code, headers, body, expires_at)"
        " VALUES ($1, 'k', $2, 201, $3, $4, now() + interval '1 hour')",
        token_hash,
        fingerprint,
        b'{"Location": "/v1/customers/99"}',
        b'{"stored": true}',
    )


async def post_with_key(client: httpx.AsyncClient) -> httpx.Response:
    headers = {**AUTH, "Idempotency-Key": "k", "Content-Type": "application/json"}
    return await client.post("/v1/customers", content=BODY, headers=headers)


async def test_a_retry_while_the_first_request_runs_waits_for_it_and_replays_its_response(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = db.transaction()
    await first.start()
    await hold_key(db)
    retry = asyncio.create_task(post_with_key(client))
    await asyncio.sleep(0.3)
    assert not retry.done()
    await first.commit()
    response = await retry
    assert (response.status_code, response.content) == (201, b'{"stored": true}')
    assert response.headers["location"] == "/v1/customers/99"
    assert response.headers["idempotent-replayed"] == "true"
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_a_retry_is_409_when_the_first_request_runs_longer_than_the_wait(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    async with db.transaction():
        await hold_key(db)
        response = await post_with_key(client)
    assert_problem(response, 409, "still running")
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_a_transition_retried_with_its_key_is_replayed_instead_of_refused(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    order = (await place(client, customer_id, (await new_product(client), 1))).json()
    headers = {**AUTH, "Idempotency-Key": "pay-once"}
    first = await client.post(f"/v1/orders/{order['id']}/pay", headers=headers)
    retry = await client.post(f"/v1/orders/{order['id']}/pay", headers=headers)
    assert (first.status_code, retry.status_code) == (200, 200)
    assert retry.content == first.content
    assert retry.headers["etag"] == first.headers["etag"] == '"2"'
    assert await db.fetchval("SELECT version FROM orders") == 2

"""The standby the replica tests read from (tests/replica.py) is a real one: it is in recovery and
refuses writes, it streams the primary's commits, it holds them back under an apply delay, and it
resumes streaming after a stop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import asyncpg
import pytest

from shared.config import asyncpg_dsn
from tests.replica import Standby


def _database(url: str) -> str:
    return urlsplit(url).path.strip("/")


async def _connect(standby: Standby, database_url: str) -> asyncpg.Connection:
    """A connection to this run's database on the standby. The database was created on the primary
    moments ago, maybe after the standby started: wait until the standby has replayed that far."""
    standby.wait_caught_up(database_url, timeout=10)
    return await asyncpg.connect(standby.url(_database(database_url)))


async def _insert(database_url: str) -> str:
    """A customer committed on the primary; returns its email."""
    email = f"{uuid.uuid4().hex}@replica.test"
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("INSERT INTO customers (email, name) VALUES ($1, 'replica probe')", email)
    finally:
        await connection.close()
    return email


async def _seen(connection: asyncpg.Connection, email: str) -> bool:
    # Outside a transaction every statement takes a new snapshot: each poll sees the latest replay.
    return bool(await connection.fetchval("SELECT count(*) FROM customers WHERE email = $1", email))


async def _until_seen(connection: asyncpg.Connection, email: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await _seen(connection, email):
        assert time.monotonic() < deadline, f"the standby did not show the row within {within} s"
        await asyncio.sleep(0.02)


async def test_the_standby_is_a_read_only_hot_standby_that_streams(standby: Standby, database_url: str) -> None:
    connection = await _connect(standby, database_url)
    primary = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        assert await connection.fetchval("SELECT pg_is_in_recovery()")
        assert await connection.fetchval("SELECT status FROM pg_stat_wal_receiver") == "streaming"
        assert int(await connection.fetchval("SHOW max_connections")) >= int(
            await primary.fetchval("SHOW max_connections")
        )
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await connection.execute("INSERT INTO customers (email, name) VALUES ('no@replica.test', 'no')")

        email = await _insert(database_url)
        await _until_seen(connection, email)
    finally:
        await primary.close()
        await connection.close()


async def test_an_apply_delay_holds_commits_back_until_it_passes(
    standby: Standby, replay_delay: Callable[[int], None], database_url: str
) -> None:
    connection = await _connect(standby, database_url)
    try:
        replay_delay(2000)
        started = time.monotonic()
        email = await _insert(database_url)
        assert not await _seen(connection, email)
        await _until_seen(connection, email)
        # Applied no sooner than 2 s after its commit (the clocks are the same machine's).
        assert time.monotonic() - started >= 1.9

        replay_delay(0)
        started = time.monotonic()
        await _until_seen(connection, await _insert(database_url))
        assert time.monotonic() - started < 1.5
    finally:
        await connection.close()


async def test_a_stopped_standby_starts_again_on_its_port_and_catches_up(standby: Standby, database_url: str) -> None:
    url = standby.url(_database(database_url))
    standby.stop()
    try:
        assert not standby.running
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(url, timeout=5)
        # Committed while it is down: its slot keeps the WAL until it is back.
        email = await _insert(database_url)
    finally:
        standby.start()
    # Back on the same port, streaming again: it gets what was committed while it was down.
    connection = await asyncpg.connect(url)
    try:
        await _until_seen(connection, email)
    finally:
        await connection.close()

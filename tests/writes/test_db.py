"""writes.db.run, the one seam between units of work and the database's ways of failing."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.errors import DatabaseUnavailable, ServiceUnavailable
from writes.db import create_session_maker, create_write_engine, ping, run
from writes.models import Product


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_write_engine(settings)
    yield engine
    await engine.dispose()


async def test_an_unreachable_database_is_database_unavailable(settings: Settings) -> None:
    nowhere = create_write_engine(msgspec.structs.replace(settings, database_url="postgresql://u:p@127.0.0.1:1/db"))
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        await run(lambda: ping(nowhere))
    await nowhere.dispose()


async def test_a_connection_lost_mid_transaction_is_database_unavailable(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    async def killed() -> None:
        async with engine.connect() as connection:
            pid = await connection.scalar(text("SELECT pg_backend_pid()"))
            await db.execute("SELECT pg_terminate_backend($1)", pid)
            await connection.execute(text("SELECT 1"))

    with pytest.raises(DatabaseUnavailable, match="lost"):
        await run(killed)


async def test_a_statement_past_the_statement_timeout_is_service_unavailable(settings: Settings) -> None:
    impatient = create_write_engine(msgspec.structs.replace(settings, write_statement_timeout_ms=100))

    async def slow() -> None:
        async with impatient.connect() as connection:
            await connection.execute(text("SELECT pg_sleep(2)"))

    with pytest.raises(ServiceUnavailable, match="WRITE_STATEMENT_TIMEOUT_MS"):
        await run(slow)
    await impatient.dispose()


async def test_a_deadlock_is_retried_and_both_units_of_work_complete(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    first, second = [
        await db.fetchval(
            "INSERT INTO products (sku, name, price_cents, stock) VALUES ($1, 'x', 1, 0) RETURNING id", sku
        )
        for sku in ("A", "B")
    ]
    sessions = create_session_maker(engine)
    attempts: Counter[str] = Counter()
    both_hold_one_row = asyncio.Barrier(2)

    async def restock(name: str, one: int, other: int) -> None:
        attempts[name] += 1
        async with sessions.begin() as session:
            await session.execute(update(Product).where(Product.id == one).values(stock=Product.stock + 1))
            if attempts[name] == 1:
                await both_hold_one_row.wait()  # each now waits for the other's row: a deadlock
            await session.execute(update(Product).where(Product.id == other).values(stock=Product.stock + 1))

    await asyncio.gather(run(lambda: restock("a", first, second)), run(lambda: restock("b", second, first)))
    assert sorted(attempts.values()) == [1, 2]
    assert await db.fetchval("SELECT array_agg(stock) FROM products") == [2, 2]


async def test_a_server_refusing_connections_is_database_unavailable(
    settings: Settings, db: asyncpg.Connection
) -> None:
    role = f"refused_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    parts = urlsplit(settings.write_url)
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
    refused = create_write_engine(msgspec.structs.replace(settings, database_url=as_role))
    try:
        with pytest.raises(DatabaseUnavailable, match="no connection slot") as refusal:
            await run(lambda: ping(refused))
        assert role not in str(refusal.value)  # the driver's message, naming the role, is for the log
    finally:
        await refused.dispose()
        await db.execute(f"DROP ROLE {role}")

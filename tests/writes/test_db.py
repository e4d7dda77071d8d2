"""WritePool.run, the one seam between units of work and the database's ways of failing."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest
import sqlalchemy.exc
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession

import writes.db
from service.app import create_app
from service.schema import current_revision, head_revision, upgrade_to_head
from shared.config import Settings
from shared.dto import OrderLine, PlaceOrder
from shared.errors import DatabaseUnavailable, ServiceUnavailable
from tests.support import AUTH, running_client
from writes.db import WritePool, create_write_engine
from writes.handlers.orders import place_order
from writes.models import Product

WRITE_APPLICATION = "orders-api:write"  # the write pool's application_name (shared.roles)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[WritePool]:
    pool = await WritePool.open(settings)
    yield pool
    await pool.close()


async def select_one(session: AsyncSession) -> None:
    await session.execute(text("SELECT 1"))


async def select_value(session: AsyncSession) -> object:
    return await session.scalar(text("SELECT 1"))


async def test_an_unreachable_database_is_database_unavailable(settings: Settings) -> None:
    nowhere = WritePool(
        create_write_engine(msgspec.structs.replace(settings, database_url="postgresql://u:p@127.0.0.1:1/db")), settings
    )
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        await nowhere.run(select_one)
    await nowhere.close()


async def test_a_connection_lost_mid_transaction_is_database_unavailable(
    pool: WritePool, db: asyncpg.Connection
) -> None:
    async def killed(session: AsyncSession) -> None:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        await db.execute("SELECT pg_terminate_backend($1)", pid)
        await session.execute(text("SELECT 1"))

    with pytest.raises(DatabaseUnavailable, match="lost"):
        await pool.run(killed)


async def test_pooled_connections_that_died_while_idle_are_replaced_at_checkout(
    pool: WritePool, db: asyncpg.Connection
) -> None:
    """WRITE_POOL_PRE_PING (on by default): after a restart of the server's backends, every unit of
    work gets a live connection, not a 503."""
    await asyncio.sleep(writes.db.PING_BYPASS)  # idle: tested at checkout (the bypass window is past)
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        WRITE_APPLICATION,
    )
    assert killed == 5  # the whole pool, opened at start-up
    for _ in range(10):
        assert await pool.run(select_value) == 1


async def test_a_connection_given_back_a_moment_ago_is_not_tested_again_and_an_idle_one_is(
    pool: WritePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WRITE_POOL_PRE_PING's bypass window (``PING_BYPASS``): under load every checkout is a
    connection that worked a moment ago, and testing it would cost each command a round trip."""
    pinged = 0
    execute = asyncpg.Connection.execute

    async def counting(self: asyncpg.Connection, query: str, *args: object, **kwargs: object) -> str:
        nonlocal pinged
        pinged += query == "SELECT 1"
        status: str = await execute(self, query, *args, **kwargs)
        return status

    monkeypatch.setattr(asyncpg.Connection, "execute", counting)
    monkeypatch.setattr(writes.db, "PING_BYPASS", 0.3)
    await asyncio.sleep(0.3)
    for _ in range(5):  # the pool hands out the connection idle longest: each of the five, tested
        await pool.run(select_one)
    assert pinged == 5
    for _ in range(20):  # each given back a moment ago
        await pool.run(select_one)
    assert pinged == 5
    await asyncio.sleep(0.3)
    await pool.run(select_one)
    assert pinged == 6


async def test_a_connection_the_server_closed_a_moment_after_its_use_is_replaced_without_a_test(
    pool: WritePool, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside the bypass window, a connection whose server closed it is still replaced: the driver
    saw its socket close (``is_closed``), at no cost."""
    monkeypatch.setattr(writes.db, "PING_BYPASS", 60.0)
    for _ in range(5):
        await pool.run(select_one)
    await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", WRITE_APPLICATION
    )
    await asyncio.sleep(1.0)  # the backends' exits reach the pool's sockets, well inside the window
    for _ in range(10):
        assert await pool.run(select_value) == 1


async def test_a_statement_past_the_statement_timeout_is_service_unavailable(settings: Settings) -> None:
    impatient = await WritePool.open(msgspec.structs.replace(settings, write_statement_timeout_ms=100))

    async def slow(session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_sleep(2)"))

    with pytest.raises(ServiceUnavailable, match="WRITE_STATEMENT_TIMEOUT_MS"):
        await impatient.run(slow)
    await impatient.close()


async def test_a_deadlock_is_retried_and_both_units_of_work_complete(pool: WritePool, db: asyncpg.Connection) -> None:
    first, second = [
        await db.fetchval(
            "INSERT INTO products (sku, name, price_cents, stock) VALUES ($1, 'x', 1, 0) RETURNING id", sku
        )
        for sku in ("A", "B")
    ]
    attempts: Counter[str] = Counter()
    both_hold_one_row = asyncio.Barrier(2)

    async def restock(name: str, one: int, other: int, session: AsyncSession) -> None:
        attempts[name] += 1
        await session.execute(update(Product).where(Product.id == one).values(stock=Product.stock + 1))
        if attempts[name] == 1:
            await both_hold_one_row.wait()  # each now waits for the other's row: a deadlock
        await session.execute(update(Product).where(Product.id == other).values(stock=Product.stock + 1))

    await asyncio.gather(pool.run(partial(restock, "a", first, second)), pool.run(partial(restock, "b", second, first)))
    assert sorted(attempts.values()) == [1, 2]
    assert await db.fetchval("SELECT array_agg(stock) FROM products") == [2, 2]


async def test_a_server_refusing_connections_is_database_unavailable(
    settings: Settings, db: asyncpg.Connection
) -> None:
    role = f"refused_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    parts = urlsplit(settings.write_url)
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
    refused = WritePool(create_write_engine(msgspec.structs.replace(settings, database_url=as_role)), settings)
    try:
        with pytest.raises(DatabaseUnavailable, match="no connection slot") as refusal:
            await refused.run(select_one)
        assert role not in str(refusal.value)  # the driver's message, naming the role, is for the log
    finally:
        await refused.close()
        await db.execute(f"DROP ROLE {role}")


async def test_a_read_model_statement_no_event_took_along_is_sent_before_the_commit(
    pool: WritePool, db: asyncpg.Connection
) -> None:
    """``readmodels.record_placed`` defers its statement to the event's round trip
    (``writes.ondriver.OnDriver.defer``); a unit of work that appends no event still commits it."""
    customer = await db.fetchval("INSERT INTO customers (email, name) VALUES ('ada@example.com', 'Ada') RETURNING id")
    product = await db.fetchval(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ('A-1', 'a', 100, 5) RETURNING id"
    )
    command = PlaceOrder(customer_id=customer, items=[OrderLine(product_id=product, quantity=2)])
    view = await pool.run(partial(place_order, command))
    assert view.total_cents == 200
    totals = await db.fetchrow(
        "SELECT order_count, lifetime_value_cents FROM customer_totals WHERE customer_id = $1", customer
    )
    assert tuple(totals) == (1, 0)
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_a_connection_lost_before_a_command_on_the_driver_begins_is_database_unavailable(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """A place's first statement goes on the driver, so its BEGIN is sent there
    (``writes.ondriver.driver_connection``). With the pre-ping off, a connection whose backend
    died while it sat in the pool fails at that BEGIN: a 503 naming the lost connection, as a
    statement through the session would be, never an unclassified error (a 500)."""
    pool = await WritePool.open(msgspec.structs.replace(settings, write_pool_pre_ping=False))
    try:
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE application_name = $1",
            WRITE_APPLICATION,
        )
        assert killed == 5
        command = PlaceOrder(customer_id=1, items=[OrderLine(product_id=1, quantity=1)])
        with pytest.raises(DatabaseUnavailable, match="lost"):
            await pool.run(partial(place_order, command))
    finally:
        await pool.close()


def with_parameter(url: str, parameter: str) -> str:
    return url + ("&" if "?" in url else "?") + parameter


async def test_libpq_parameters_in_the_url_reach_every_connection(settings: Settings) -> None:
    # SQLAlchemy's dialect handed the URL's query to asyncpg.connect as keywords, and sslmode was a
    # TypeError at the first command: no URL could ask for TLS. Each connection reads it from the URL.
    url = settings.database_url or ""
    plain = msgspec.structs.replace(settings, database_url=with_parameter(url, "sslmode=disable"))
    async with running_client(create_app(plain)) as client:
        created = await client.post("/v1/customers", json={"email": "tls@example.com", "name": "T"}, headers=AUTH)
        assert created.status_code == 201, created.text
        assert (await client.get(created.headers["location"])).status_code == 200

    # Over the tests' Unix socket TLS does not apply; a parameter that does, read from the URL: this
    # primary is no standby, so no connection is made, a clean 503.
    required = msgspec.structs.replace(settings, database_url=with_parameter(url, "target_session_attrs=standby"))
    pool = WritePool(create_write_engine(required), required)
    try:
        with pytest.raises(DatabaseUnavailable):
            await pool.run(select_one)
    finally:
        await pool.close()


def test_migrate_reads_libpq_parameters_from_the_url(empty_database: str) -> None:
    upgrade_to_head(with_parameter(empty_database, "sslmode=disable"))
    assert asyncio.run(current_revision(empty_database)) == head_revision()
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="target attribute"):  # a primary is no standby
        upgrade_to_head(with_parameter(empty_database, "target_session_attrs=standby"))

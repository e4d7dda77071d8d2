"""A real PostgreSQL for every test: the embedded one (or TEST_DATABASE_URL), a fresh database per
run, migrations applied once, tables emptied between tests, and an httpx client over the ASGI app
with its lifespan (both pools) running."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from service import embedded
from service.app import create_app
from service.schema import upgrade_to_head
from shared.config import Settings, asyncpg_dsn
from tests.reads.factories import Shop
from tests.replica import replay_delay, standby  # noqa: F401  (fixtures: a streaming standby)
from tests.support import WRITE_TOKEN, running_client

TABLES = (
    "sales_daily, product_sales, customer_totals, order_items, orders, products, customers, idempotency_keys, events"
)
# What emptying the tables leaves: the feed's one-row tables back at their start (migration 0007).
EMPTY_TABLES = (
    f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE;"
    " UPDATE events_head SET last = 0; UPDATE events_horizon SET purged_through = 0"
)


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to a maintenance database on the test server."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    server = embedded.start(tmp_path_factory.mktemp("embedded") / "pgdata", delete_on_exit=True)
    yield embedded.database_url(server, "postgres")
    server.cleanup()


def _fresh_database(server_url: str) -> Iterator[str]:
    name = f"orders_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    yield with_database(server_url, name)
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """This run's database, migrated to head once."""
    for url in _fresh_database(server_url):
        upgrade_to_head(url)
        yield url


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    """A database with no schema at all, for migration and start-up checks."""
    yield from _fresh_database(server_url)


# A client's transaction in this run's database. Between two tests none should be open: one an
# earlier test left open (a connection never closed, a command that never finished) keeps its
# locks, so emptying the tables would wait for it for ever, and a later command on a row it holds
# (product_sales_versions is never emptied) would wait until its statement timeout and answer 503.
OPEN_TRANSACTIONS = """
    SELECT pid, application_name, state, xact_start, left(query, 300) AS query
      FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid()
       AND backend_type = 'client backend' AND xact_start IS NOT NULL
"""
# A process still serving (a module's server, its positioner's once-a-second sweep) may be inside a
# short transaction at any moment: only one that stays open this long is a leftover.
LEFTOVER_AFTER = 5.0


async def _empty(url: str) -> None:
    """Empty the tables, once no transaction an earlier test left is still open; name it if one is."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        deadline = time.monotonic() + LEFTOVER_AFTER
        while left_open := await connection.fetch(OPEN_TRANSACTIONS):
            if time.monotonic() > deadline:
                pytest.fail(f"an earlier test left a transaction open: {[dict(row) for row in left_open]}")
            await asyncio.sleep(0.05)
        await connection.execute(EMPTY_TABLES)
    finally:
        await connection.close()


@pytest.fixture(autouse=True)
def _empty_tables(request: pytest.FixtureRequest) -> None:
    if "database_url" not in request.fixturenames:
        return
    asyncio.run(_empty(request.getfixturevalue("database_url")))


@pytest.fixture
def settings(database_url: str) -> Settings:
    # Queries open, as on the embedded demo database: the tests of queries are about their answers.
    # tests/reads/test_pool.py and tests/test_openapi.py test the tokens.
    return Settings(
        database_url=database_url,
        write_api_tokens=(WRITE_TOKEN,),
        read_api_open=True,
        read_pool_min_size=1,
        write_pool_size=5,
    )


@pytest.fixture
def app(settings: Settings) -> Starlette:
    return create_app(settings)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(app) as http:
        yield http


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for checking the rows a request left behind."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def shop(client: httpx.AsyncClient, db: asyncpg.Connection) -> Shop:
    """Rows made through the commands (``tests.reads.factories``)."""
    return Shop(client, db)


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at INFO, also fed by uvicorn's error logger (which does not propagate to the root)."""
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        yield caplog
    finally:
        uvicorn_error.removeHandler(caplog.handler)

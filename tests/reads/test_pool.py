"""Pool discipline and read auth: bounded acquires, connections returned on cancel, bearer tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
import pytest
from starlette.applications import Starlette

from reads import db as read_db
from reads.db import ReadPool
from service.app import create_app
from shared.config import Settings
from tests.support import running_client

QUERY_URLS = [
    "/v1/customers/1",
    "/v1/products/1",
    "/v1/products",
    "/v1/orders/1",
    "/v1/orders",
    "/v1/stats/revenue/daily",
    "/v1/stats/products/top",
    "/v1/exports/orders",
]


@pytest.fixture
def one_connection_app(settings: Settings) -> Starlette:
    """An app whose read pool has a single connection and gives up waiting for it after 0.2 s."""
    return create_app(msgspec.structs.replace(settings, read_pool_max_size=1, read_pool_acquire_timeout=0.2))


@pytest.fixture
async def orders_locked(db: asyncpg.Connection) -> AsyncIterator[None]:
    """Every query touching orders waits while this is held."""
    async with db.transaction():
        await db.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        yield


async def waiting_reads(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'orders-api:read' AND wait_event_type = 'Lock'"
    )
    return count


@pytest.mark.parametrize("url", QUERY_URLS)
async def test_an_exhausted_read_pool_is_a_prompt_503_with_retry_after(one_connection_app: Starlette, url: str) -> None:
    async with (
        running_client(one_connection_app) as client,
        one_connection_app.state.resources.pools["reads"].connection(),
    ):
        started = time.monotonic()
        response = await client.get(url)
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "READ_POOL_ACQUIRE_TIMEOUT" in response.json()["detail"]
    assert elapsed < 1.0


@pytest.mark.usefixtures("orders_locked")
async def test_a_cancelled_request_returns_its_connection_to_the_pool(
    one_connection_app: Starlette, db: asyncpg.Connection
) -> None:
    async with running_client(one_connection_app) as client:
        stuck = asyncio.create_task(client.get("/v1/orders"))
        for _ in range(100):
            if await waiting_reads(db):
                break
            await asyncio.sleep(0.02)
        assert await waiting_reads(db) == 1
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck

        # orders is still locked: the pool's only connection must be free, its query abandoned.
        response = await client.get("/v1/products/1")
        pool = one_connection_app.state.resources.pools["reads"].pool

        assert response.status_code == 404
        assert pool.get_size() - pool.get_idle_size() == 0


@pytest.mark.usefixtures("orders_locked")
async def test_a_query_past_the_statement_timeout_is_a_503(settings: Settings) -> None:
    app = create_app(msgspec.structs.replace(settings, read_statement_timeout_ms=200))
    async with running_client(app) as client:
        response = await client.get("/v1/orders")
        # The query that timed out gave its connection back, and the next query has one.
        assert (await client.get("/v1/products/1")).status_code == 404
        pool = app.state.resources.pools["reads"].pool
        assert pool.get_size() - pool.get_idle_size() == 0

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "READ_STATEMENT_TIMEOUT_MS" in response.json()["detail"]


async def test_every_read_gives_its_connection_back_whatever_it_answers(settings: Settings) -> None:
    # ReadPool.release gives a connection back in the request's own task (reads.db._release_in_place),
    # not in asyncpg's: none may stay taken, after answers, refusals and queries run side by side.
    # The installed asyncpg has the private names it takes (else every release would go through
    # Pool.release: correct, and a task a query slower).
    assert read_db.IN_PLACE
    app = create_app(msgspec.structs.replace(settings, read_pool_min_size=1, read_pool_max_size=3))
    urls = [*QUERY_URLS, "/v1/orders/999999", "/v1/orders?limit=0", "/v1/orders?cursor=forged", "/v1/events"]
    async with running_client(app) as client:
        # Bounded: with connections lost, the reads would wait for them for ever (the gate counts a
        # place given back, asyncpg's pool waits for the connection), and the test would hang.
        async with asyncio.timeout(30):
            for _ in range(3):
                answers = await asyncio.gather(*(client.get(url) for url in urls * 2))
                failed = [answer.text for answer in answers if answer.status_code >= 500]
                assert not failed, failed
        pool = app.state.resources.pools["reads"].pool
        idle, size = pool.get_idle_size(), pool.get_size()

    assert size >= 1
    assert idle == size


async def test_with_read_tokens_every_query_needs_one_of_them(settings: Settings) -> None:
    tokens = ("reader-1", "reader-2")
    app = create_app(msgspec.structs.replace(settings, read_api_tokens=tokens, read_api_open=False))
    async with running_client(app) as client:
        for url in QUERY_URLS:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic reader-1"}):
                response = await client.get(url, headers=headers)
                assert response.status_code == 401, (url, headers)
                assert response.headers["www-authenticate"] == "Bearer"
            allowed = await client.get(url, headers={"Authorization": "Bearer reader-2"})
            assert allowed.status_code in (200, 404), (url, allowed.text)


async def test_read_api_open_opens_every_query_without_a_token(client: httpx.AsyncClient) -> None:
    # The settings fixture sets READ_API_OPEN=true.
    for url in QUERY_URLS:
        assert (await client.get(url)).status_code in (200, 404), url


async def test_releasing_a_read_connection_costs_no_round_trip(settings: Settings) -> None:
    # asyncpg's default reset (RESET ALL, UNLISTEN *, advisory unlock) would be a second round trip
    # for every query; the read side never changes its session, so it sends nothing on release.
    app = create_app(msgspec.structs.replace(settings, read_pool_min_size=1, read_pool_max_size=1))
    sent: list[str] = []
    async with running_client(app) as client:
        reads = app.state.resources.pools["reads"]
        async with reads.connection() as connection:
            connection.add_query_logger(lambda record: sent.append(record.query))
        for url in QUERY_URLS:
            assert (await client.get(url)).status_code in (200, 404), url

    # One statement a request, and nothing on release. Query loggers do not see the export's statement:
    # it is replanned (ReadPool.find), run as a prepared statement.
    assert len(sent) == len(QUERY_URLS) - 1
    assert not [query for query in sent if "RESET" in query or "UNLISTEN" in query], sent


async def test_a_closing_pool_cuts_a_connection_never_given_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Only a bug could lose a connection; the shutdown must end all the same (asyncpg's close waits
    # for ever). The loss is made here by taking one from asyncpg's pool past the read pool.
    monkeypatch.setattr(read_db, "CLOSE_WITHIN", 0.3)
    pool = await ReadPool.open(settings)
    lost = await pool.pool.acquire()
    started = time.monotonic()
    await asyncio.wait_for(pool.close(), timeout=10)

    assert time.monotonic() - started < 5
    assert read_db._is_dead(lost)  # closed, and taken back by the pool
    assert "still taken" in caplog.text

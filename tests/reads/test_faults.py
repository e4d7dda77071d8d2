"""The read side under database faults, over real sockets: a backend killed under a query is one
transparent retry, a server out of connection slots is a 503 in our words, and an export is whole
or visibly cut, never a 200 that merely stops."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from service.app import create_app
from shared.config import Settings
from tests.reads.factories import Shop
from tests.reads.test_export import insert_orders
from tests.support import serving

KILL_SERVICE_BACKENDS = """
    SELECT count(pg_terminate_backend(pid))
    FROM pg_stat_activity
    WHERE application_name LIKE 'orders-api:%' AND pid <> pg_backend_pid()
"""


async def test_killing_every_service_backend_under_read_load_is_never_a_500(
    settings: Settings, shop: Shop, db: asyncpg.Connection
) -> None:
    customer, product = await shop.customer(), await shop.product()
    order = await shop.order(customer["id"], [(product["id"], 2)])
    await shop.pay(order["id"])
    urls = [
        "/v1/orders",
        f"/v1/orders/{order['id']}",
        f"/v1/products/{product['id']}",
        "/v1/products?q=wid",
        f"/v1/customers/{customer['id']}",
        "/v1/stats/products/top",
        "/v1/stats/revenue/daily",
        "/v1/exports/orders",
    ]
    statuses: Counter[int] = Counter()
    app = create_app(msgspec.structs.replace(settings, read_pool_min_size=4, read_pool_max_size=4))

    async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        deadline = time.monotonic() + 4

        async def reader(offset: int) -> None:
            for n in range(2000):  # bounded by count and by the deadline
                if time.monotonic() > deadline:
                    return
                statuses[(await http.get(urls[(offset + n) % len(urls)])).status_code] += 1

        async def killer() -> int:
            killed = 0
            for _ in range(6):
                await asyncio.sleep(0.4)
                killed += await db.fetchval(KILL_SERVICE_BACKENDS)
            return killed

        kills = asyncio.create_task(killer())
        await asyncio.gather(*(reader(offset) for offset in range(8)))
        killed = await kills

    assert killed >= 6  # every round found backends to kill
    assert statuses[500] == 0, statuses
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 100 * max(1, statuses[503]), statuses  # the retry absorbs nearly every kill


@pytest.fixture
async def limited_role(db: asyncpg.Connection) -> AsyncIterator[str]:
    """A login role the service can work as, whose connection limit a test can take away."""
    role = f"limited_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {role} LOGIN")
    await db.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    yield role
    await db.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
    await db.execute(f"DROP OWNED BY {role}")
    await db.execute(f"DROP ROLE {role}")


async def test_a_server_out_of_connection_slots_is_a_503_that_names_no_role_or_host(
    settings: Settings, db: asyncpg.Connection, limited_role: str
) -> None:
    parts = urlsplit(settings.read_url)
    as_role = urlunsplit(parts._replace(netloc=f"{limited_role}@{parts.netloc.rpartition('@')[2]}"))
    app = create_app(msgspec.structs.replace(settings, database_url=as_role))

    async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        assert (await http.get("/v1/orders")).status_code == 200
        await db.execute(f"ALTER ROLE {limited_role} CONNECTION LIMIT 0")
        await db.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{limited_role}'")
        query = await http.get("/v1/orders")
        ready = await http.get("/readyz")

    assert query.status_code == 503, query.text
    assert query.headers["retry-after"]
    assert "read pool" in query.json()["detail"]
    assert "max_connections" in query.json()["detail"]
    assert ready.status_code == 503
    for text in (query.text, ready.text):
        assert limited_role not in text
        assert settings.read_url.rpartition("host=")[2] not in text  # the server's socket directory
        assert "too many" not in text  # the driver's wording stays in the log


async def test_concurrent_exports_on_a_two_connection_pool_are_whole_or_refused(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_orders(db, 2500)  # three batches each
    app = create_app(
        msgspec.structs.replace(settings, read_pool_min_size=2, read_pool_max_size=2, read_pool_acquire_timeout=0.5)
    )
    statuses: Counter[int] = Counter()

    async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=60) as http:

        async def export() -> None:
            response = await http.get("/v1/exports/orders")
            statuses[response.status_code] += 1
            if response.status_code == 200:
                ids = [msgspec.json.decode(line)["id"] for line in response.content.splitlines()]
                assert ids == list(range(1, 2501))
                assert response.content.endswith(b"\n")

        await asyncio.gather(*(export() for _ in range(100)))

    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 2, statuses


def pause_after_first_chunk(app: Starlette, paused: asyncio.Event, resume: asyncio.Event) -> Starlette:
    """``app`` whose response stops after its first body chunk until ``resume`` is set: the export
    is then between batches, with the headers and one batch sent, at a moment the test chooses."""

    async def paused_app(scope: Scope, receive: Receive, send: Send) -> None:
        async def pausing_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and message.get("body") and not paused.is_set():
                paused.set()
                await resume.wait()

        await app(scope, receive, pausing_send if scope["type"] == "http" else send)

    return paused_app  # type: ignore[return-value]


async def export_while_the_pool_is_held(
    app: Starlette, hold_for: float, headers: Mapping[str, str] | None = None, encoding: str | None = None
) -> tuple[bytes, Exception | None]:
    """Start an export (with ``headers``; answered in the content ``encoding`` when one is given),
    hold the read pool's only connection between its batches for ``hold_for`` seconds, then read
    the rest: the bytes received, and the error the client saw, if any."""
    paused, resume = asyncio.Event(), asyncio.Event()
    received = b""
    async with (
        serving(pause_after_first_chunk(app, paused, resume)) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as http,
        http.stream("GET", "/v1/exports/orders", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert encoding is None or response.headers.get("content-encoding") == encoding
        await asyncio.wait_for(paused.wait(), 10)
        async with app.state.resources.pools["reads"].connection():
            resume.set()
            await asyncio.sleep(hold_for)
        try:
            async for chunk in response.aiter_bytes():
                received += chunk
        except httpx.RemoteProtocolError as exc:
            return received, exc
    return received, None


async def test_an_export_that_cannot_finish_ends_as_an_incomplete_response(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_orders(db, 2500)
    app = create_app(
        msgspec.structs.replace(settings, read_pool_max_size=1, read_pool_acquire_timeout=0.2, read_export_wait=0.3)
    )
    received, error = await export_while_the_pool_is_held(app, hold_for=1.0)

    assert error is not None, "the client was not told the export was cut"
    assert "incomplete" in str(error)
    assert received.count(b"\n") == 1000  # the first batch, and nothing after it


async def test_a_started_export_waits_for_a_busy_pool_instead_of_cutting_short(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_orders(db, 2500)
    app = create_app(msgspec.structs.replace(settings, read_pool_max_size=1, read_pool_acquire_timeout=0.2))
    received, error = await export_while_the_pool_is_held(app, hold_for=1.0)  # 5 x the acquire timeout

    assert error is None
    assert [msgspec.json.decode(line)["id"] for line in received.splitlines()] == list(range(1, 2501))

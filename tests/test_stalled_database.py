"""A database that stops answering (``tests/stall.py``: the connections stay open, nothing comes
back) is a 503 within the configured bounds for a query, a command and the readiness probe, the
service serves again as soon as it answers, and the pools still close at shutdown (shared.driver)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import msgspec
import pytest

from service.app import create_app
from shared.config import Settings
from shared.driver import ANSWER_MARGIN, HANG_UP_WITHIN
from tests.stall import Stall
from tests.support import AUTH, running_client
from tests.writes.support import new_customer, new_product

STATEMENT_MS = 300
# A statement's bound, and for a command the pre-ping's, plus a reconnect or two (their connect
# timeouts below): generous, since only a hang would take much longer.
WITHIN = 2 * (STATEMENT_MS / 1000 + ANSWER_MARGIN) + 2 * 0.5 + 2.0


def stalled_settings(settings: Settings, url: str) -> Settings:
    return msgspec.structs.replace(
        settings,
        database_url=url,
        read_statement_timeout_ms=STATEMENT_MS,
        write_statement_timeout_ms=STATEMENT_MS,
        read_pool_acquire_timeout=0.5,
        write_pool_timeout=0.5,
    )


async def test_a_query_and_a_command_are_503_within_their_bounds_and_served_again_after(
    settings: Settings, database_url: str, db: asyncpg.Connection
) -> None:
    async with (
        Stall(database_url) as stall,
        running_client(create_app(stalled_settings(settings, stall.url))) as client,
    ):
        customer = await new_customer(client)
        product = await new_product(client, stock=5)
        order = {"customer_id": customer, "items": [{"product_id": product, "quantity": 1}]}
        stall.stall()
        started = time.monotonic()
        read = await client.get(f"/v1/products/{product}")
        read_took = time.monotonic() - started
        placed = await client.post("/v1/orders", json=order, headers=AUTH)
        place_took = time.monotonic() - started - read_took
        stall.resume()
        assert (read.status_code, placed.status_code) == (503, 503), (read.text, placed.text)
        assert "retry-after" in read.headers
        assert "retry-after" in placed.headers
        assert read_took < WITHIN, read_took
        assert place_took < WITHIN, place_took
        # The connections given up were closed: fresh ones serve at once.
        assert (await client.get(f"/v1/products/{product}")).status_code == 200
        assert (await client.post("/v1/orders", json=order, headers=AUTH)).status_code == 201
    # The command that met the silence committed nothing: one order, one unit of stock taken.
    assert await db.fetchval("SELECT count(*) FROM orders") == 1
    assert await db.fetchval("SELECT stock FROM products WHERE id = $1", product) == 4


async def test_readiness_answers_within_its_bounds_while_the_database_is_silent(
    settings: Settings, database_url: str
) -> None:
    async with (
        Stall(database_url) as stall,
        running_client(create_app(stalled_settings(settings, stall.url))) as client,
    ):
        assert (await client.get("/readyz")).status_code == 200
        stall.stall()
        started = time.monotonic()
        ready = await client.get("/readyz")
        took = time.monotonic() - started
        stall.resume()
    assert ready.status_code == 503, ready.text
    assert took < 0.5 + 0.5 + 1.0, took  # the two pools' acquire timeouts, and a margin


async def test_the_pools_close_at_shutdown_while_the_database_is_silent(settings: Settings, database_url: str) -> None:
    async with Stall(database_url) as stall:
        app = create_app(stalled_settings(settings, stall.url))
        async with running_client(app) as client:
            customer = await new_customer(client)  # both pools have connections open, and used
            assert (await client.get(f"/v1/customers/{customer}")).status_code == 200
            stall.stall()
            started = time.monotonic()
        took = time.monotonic() - started
        stall.resume()
    # The positioner's last round gives up after a statement's bound; then each connection waits
    # HANG_UP_WITHIN for the server to hang up, the write pool's one by one.
    print(f"shutdown took {took:.2f} s")
    assert took < STATEMENT_MS / 1000 + ANSWER_MARGIN + (settings.write_pool_size + 2) * HANG_UP_WITHIN + 1.0, took


async def test_a_request_cancelled_mid_statement_does_not_wait_for_the_silent_database(
    settings: Settings, database_url: str
) -> None:
    """What a shutdown does to a request past SHUTDOWN_TIMEOUT, or a readiness probe to its check:
    the statement is given up, and its connection goes with it at once."""
    async with (
        Stall(database_url) as stall,
        running_client(create_app(stalled_settings(settings, stall.url))) as client,
    ):
        product = await new_product(client)
        stall.stall()
        request = asyncio.create_task(client.get(f"/v1/products/{product}"))
        await asyncio.sleep(0.2)  # its statement sent, no answer coming
        started = time.monotonic()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        took = time.monotonic() - started
        stall.resume()
        assert took < 0.5, took
        assert (await client.get(f"/v1/products/{product}")).status_code == 200

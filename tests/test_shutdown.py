"""SIGTERM as an orchestrator sends it, to a real `orders-api serve`: the process stops accepting,
every request already in flight gets its whole answer, the pools close, and it exits 0; a request
that outlasts SHUTDOWN_TIMEOUT is cut so the exit stays bounded. With --workers too."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.processes import serve_env, serving_process, wait_ready
from tests.support import AUTH
from tests.test_events_live import clients_waiting
from tests.writes.support import new_customer, new_product

IN_FLIGHT = 4  # of each kind per test: within one worker's write pool (5) and read pool (10)
SHUTDOWN_TIMEOUT = 10.0


async def until(condition: str, db: asyncpg.Connection, expected: int, within: float = 10.0) -> None:
    for _ in range(int(within / 0.05)):
        # Inside a transaction PostgreSQL keeps showing the activity it saw first; look afresh.
        await db.execute("SELECT pg_stat_clear_snapshot()")
        if await db.fetchval(condition) == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{condition} did not reach {expected} within {within} s")


# The service's statements now waiting on the test's lock: requests in flight, not yet answered.
WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name LIKE 'orders-api:%' AND wait_event_type = 'Lock'"
)


async def exit_code(process: subprocess.Popen[bytes], within: float) -> int:
    for _ in range(int(within / 0.05)):
        if process.poll() is not None:
            return process.returncode
        await asyncio.sleep(0.05)
    raise AssertionError(f"serve did not exit within {within} s of SIGTERM")


async def served(url: str) -> bool:
    """Whether a new connection gets an answer (within a second)."""
    try:
        async with httpx.AsyncClient(timeout=1.0) as fresh:
            await fresh.get(f"{url}/healthz")
    except httpx.TransportError:
        return False
    return True


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_answers_every_request_in_flight_then_exits_0(
    database_url: str, db: asyncpg.Connection, tmp_path: Path, workers: int
) -> None:
    log = tmp_path / "serve.log"
    # Long statement timeouts: the requests wait on the lock for as long as the test holds it.
    env = serve_env(
        database_url,
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        READ_STATEMENT_TIMEOUT_MS="30000",
        WRITE_STATEMENT_TIMEOUT_MS="30000",
    )
    with serving_process("--workers", str(workers), env=env, log=log) as (process, url):
        await asyncio.to_thread(wait_ready, url, process, log)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            customer, product = await new_customer(http), await new_product(http, stock=100)
            order = {"customer_id": customer, "items": [{"product_id": product, "quantity": 1}]}
            async with db.transaction():
                await db.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
                queries = [asyncio.create_task(http.get("/v1/orders")) for _ in range(IN_FLIGHT)]
                commands = [
                    asyncio.create_task(http.post("/v1/orders", json=order, headers=AUTH)) for _ in range(IN_FLIGHT)
                ]
                await until(WAITING, db, 2 * IN_FLIGHT)
                process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                await asyncio.sleep(1.5)  # long enough for the signal to reach every worker
                # Refused (one process), or left unanswered in the backlog of the listening socket
                # uvicorn's supervisor keeps open until it exits (--workers).
                assert not await served(url), "a stopping server must not take new requests"
                assert process.poll() is None, "serve must wait for its requests in flight"
            # The lock is gone: every request in flight completes, then the process exits.
            answers = await asyncio.wait_for(asyncio.gather(*queries, *commands), 15)
        code = await exit_code(process, within=SHUTDOWN_TIMEOUT - (time.monotonic() - signalled))

    assert [answer.status_code for answer in answers] == [200] * IN_FLIGHT + [201] * IN_FLIGHT
    assert all(answer.json() for answer in answers)  # whole bodies: each parses
    assert code == 0, log.read_text()
    assert await db.fetchval("SELECT count(*) FROM orders") == IN_FLIGHT
    # Each worker ran its lifespan's shutdown: its pools are closed.
    assert log.read_text().count("Application shutdown complete") == workers, log.read_text()


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_request_that_outlasts_shutdown_timeout_is_cut_and_the_exit_stays_bounded(
    database_url: str, db: asyncpg.Connection, tmp_path: Path, workers: int
) -> None:
    log = tmp_path / "serve.log"
    bound = 2.0
    env = serve_env(database_url, SHUTDOWN_TIMEOUT=str(bound), READ_STATEMENT_TIMEOUT_MS="60000")
    with serving_process("--workers", str(workers), env=env, log=log) as (process, url):
        await asyncio.to_thread(wait_ready, url, process, log)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http, db.transaction():
            await db.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            stuck = asyncio.create_task(http.get("/v1/orders"))
            await until(WAITING, db, 1)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # The lock stays held: only SHUTDOWN_TIMEOUT ends the wait.
            code = await exit_code(process, within=bound + 5)
            took = time.monotonic() - signalled
            cut = await asyncio.wait_for(stuck, 5)

    # uvicorn answers a request it cancels with its own 500 and closes the connection: never a
    # success the client could mistake for an answer.
    assert cut.status_code >= 500
    assert cut.headers["connection"] == "close"
    assert code == 0, log.read_text()
    assert bound <= took < bound + 3, took
    assert log.read_text().count("Application shutdown complete") == workers, log.read_text()


def test_a_clean_shutdown_logs_no_lifespan_error(database_url: str, tmp_path: Path) -> None:
    # uvicorn raises the signal again once it has shut down; exiting on that inside its event loop
    # cancelled the lifespan's task, and uvicorn then logged the protocol as unsupported.
    log = tmp_path / "serve.log"
    with serving_process(env=serve_env(database_url), log=log) as (process, url):
        wait_ready(url, process, log)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=SHUTDOWN_TIMEOUT)
    output = log.read_text()
    assert code == 0, output
    assert "Application shutdown complete" in output
    assert "Finished server process" in output
    assert "lifespan" not in output, output


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_ends_waiting_long_polls_and_streams_at_once_with_what_they_have(
    database_url: str, tmp_path: Path, workers: int
) -> None:
    """A long-poll or an event stream waits for events that may be long in coming: a stopping server
    answers the long-poll's empty page and ends the stream cleanly (its client resumes elsewhere),
    rather than holding its exit up for SHUTDOWN_TIMEOUT and cutting them with 500s."""
    log = tmp_path / "serve.log"
    env = serve_env(database_url, SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT), EVENTS_STREAM_SECONDS="300")
    with serving_process("--workers", str(workers), env=env, log=log) as (process, url):
        await asyncio.to_thread(wait_ready, url, process, log)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await new_customer(http)
            after = (await http.get("/v1/events")).json()["next_cursor"]

            async def stream() -> str:
                async with http.stream("GET", "/v1/events", params={"after": after}, headers=SSE) as response:
                    return "".join([chunk async for chunk in response.aiter_text()])

            polls = [asyncio.create_task(http.get("/v1/events", params={"after": after, "wait": 30})) for _ in range(3)]
            streams = [asyncio.create_task(stream()) for _ in range(2)]
            for mode, count in (("long-poll", 3), ("stream", 2)):
                await clients_waiting(http, mode, count)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            answers = await asyncio.wait_for(asyncio.gather(*polls), SHUTDOWN_TIMEOUT / 2)
            streamed = await asyncio.wait_for(asyncio.gather(*streams), SHUTDOWN_TIMEOUT / 2)
            code = await exit_code(process, within=SHUTDOWN_TIMEOUT / 2)
        took = time.monotonic() - signalled

    empty = {"items": [], "next_cursor": after}
    assert [(answer.status_code, answer.json()) for answer in answers] == [(200, empty)] * 3
    assert streamed == ["retry: 1000\n\n"] * 2  # whole: the chunked body ended properly
    assert code == 0, log.read_text()
    assert took < SHUTDOWN_TIMEOUT / 2, took
    assert "Cancel" not in log.read_text(), log.read_text()


SSE = {"Accept": "text/event-stream"}

"""Logs (issue 8): the access log in each ACCESS_LOG mode, each request's id, one log line per
unexpected error, the per-pool slow-statement log, and the logs of ``serve --workers`` processes."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reads.db import ReadPool
from service.app import create_app
from service.cli import uvicorn_options
from service.logs import RequestContext
from service.tracing import Tracing
from shared.config import Settings
from testkit.database import positioned_head
from tests.processes import serve_env, serving_process, wait_ready
from tests.support import AUTH, WRITE_TOKEN, running_client, serving
from tests.writes import support as writes_support
from tests.writes.support import NDJSON, ndjson, new_product
from writes import events
from writes.events import NewEvent
from writes.ondriver import execute_on_driver

GENERATED_ID = re.compile(r"[0-9a-f]{16}")
PERSONAL = "alice@example.com"  # a parameter value that must never reach the log


def from_logger(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == name]


def access_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON access lines written to stdout so far."""
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


async def test_json_access_lines_carry_route_status_and_request_id(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = msgspec.structs.replace(settings, access_log="json")
    app = create_app(settings)
    async with serving(app, **uvicorn_options(settings)) as url, httpx.AsyncClient(base_url=url) as http:
        product = await new_product(http)
        before = datetime.now(UTC)
        given = await http.get(f"/v1/products/{product}", headers={"X-Request-Id": "edge-7f3a.1"})
        after = datetime.now(UTC)
        # Not a sane token (a space, and far too long): replaced by one of ours, never logged.
        forged = await http.get(f"/v1/products/{product}", headers={"X-Request-Id": "x y" * 40})
        missing = await http.get("/nowhere")
    assert given.headers["X-Request-Id"] == "edge-7f3a.1"
    assert GENERATED_ID.fullmatch(forged.headers["X-Request-Id"])
    assert GENERATED_ID.fullmatch(missing.headers["X-Request-Id"])

    lines = access_lines(capsys)
    by_id = {line["request_id"]: line for line in lines}
    line = by_id["edge-7f3a.1"]
    # No trace_id or span_id: tracing is off.
    fields = ["method", "route", "path", "status", "duration_ms", "request_id", "client", "timestamp", "level"]
    assert list(line) == fields  # "method" first: bench/scenarios/writes.py finds the lines by it
    assert line["timestamp"].endswith("Z")  # RFC 3339 in UTC, as the API writes instants
    assert before <= datetime.fromisoformat(line["timestamp"]) <= after
    assert line["level"] == "INFO"
    assert line["method"] == "GET"
    assert line["route"] == "/v1/products/{id}"
    assert line["path"] == f"/v1/products/{product}"
    assert line["status"] == 200
    assert 0 < line["duration_ms"] < 10_000
    assert line["client"].startswith("127.0.0.1:")
    assert by_id[forged.headers["X-Request-Id"]]["status"] == 200
    assert by_id[missing.headers["X-Request-Id"]] | {"timestamp": "", "duration_ms": 0, "client": ""} == {
        "timestamp": "",
        "level": "INFO",
        "method": "GET",
        "route": None,
        "path": "/nowhere",
        "status": 404,
        "duration_ms": 0,
        "request_id": missing.headers["X-Request-Id"],
        "client": "",
    }
    # The create, the three reads: one line each, and uvicorn wrote none of its own.
    assert len(lines) == 4
    assert logging.getLogger("uvicorn.access").hasHandlers() is False


async def test_with_tracing_on_json_access_lines_name_the_requests_trace_and_span(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = msgspec.structs.replace(settings, access_log="json")
    caller = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    async with running_client(create_app(settings, tracing=Tracing(provider))) as client:
        await client.get("/v1/products/1", headers={**caller, "X-Request-Id": "traced"})
        await client.get("/v1/products/1", headers={"X-Request-Id": "own-trace"})
        await client.get("/healthz", headers={"X-Request-Id": "probe"})  # untraced (service.tracing.UNTRACED)

    by_id = {line["request_id"]: line for line in access_lines(capsys)}
    servers = {span.context.trace_id: span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER}
    traced, own = by_id["traced"], by_id["own-trace"]
    assert traced["trace_id"] == "0af7651916cd43dd8448eb211c80319c"  # the caller's
    assert own["trace_id"] != traced["trace_id"]  # a trace of its own
    for line in (traced, own):
        server = servers[int(line["trace_id"], 16)]
        assert line["span_id"] == f"{server.context.span_id:016x}"  # the request's server span
    assert by_id["probe"]["level"] == "INFO"
    assert "trace_id" not in by_id["probe"]
    assert "span_id" not in by_id["probe"]


async def test_access_log_off_writes_no_line_and_uvicorn_builds_none(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = msgspec.structs.replace(settings, access_log="off")
    async with serving(create_app(settings), **uvicorn_options(settings)) as url, httpx.AsyncClient() as http:
        # uvicorn formats its access line only when its logger has a handler somewhere.
        assert logging.getLogger("uvicorn.access").hasHandlers() is False
        response = await http.get(f"{url}/healthz")
    assert response.status_code == 200
    assert GENERATED_ID.fullmatch(response.headers["X-Request-Id"])  # the id does not depend on the log
    assert access_lines(capsys) == []


async def test_access_log_text_is_uvicorns_line_alone(
    settings: Settings, server_log: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = msgspec.structs.replace(settings, access_log="text")
    uvicorn_access = logging.getLogger("uvicorn.access")
    async with serving(create_app(settings), **uvicorn_options(settings)) as url, httpx.AsyncClient() as http:
        # After start-up: uvicorn's log config resets its handlers, and serving() sets it to warnings.
        uvicorn_access.addHandler(server_log.handler)
        server_log.set_level(logging.INFO, logger="uvicorn.access")
        try:
            await http.get(f"{url}/healthz")
        finally:
            uvicorn_access.removeHandler(server_log.handler)
    [line] = [record.getMessage() for record in from_logger(server_log, "uvicorn.access")]
    assert re.fullmatch(r'127\.0\.0\.1:\d+ - "GET /healthz HTTP/1\.1" 200', line)
    assert access_lines(capsys) == []


async def test_an_unexpected_error_is_logged_once_with_its_route_method_and_request_id(
    settings: Settings, server_log: pytest.LogCaptureFixture
) -> None:
    # No real route fails with a 500 (issue 7 made sure), so a test route raises inside the app that
    # create_app builds, with its middleware and handlers, behind a real uvicorn.
    app = create_app(settings)

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    app.router.routes.append(Route("/broken/{part}", broken))
    async with serving(app, **uvicorn_options(settings)) as url, httpx.AsyncClient() as http:
        response = await http.get(f"{url}/broken/7", headers={"X-Request-Id": "req-500"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["X-Request-Id"] == "req-500"
    assert "a bug" not in response.text

    errors = [record for record in server_log.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]  # not again by Starlette or uvicorn
    [error] = errors
    assert error.request == " [request req-500 GET /broken/{part}]"  # type: ignore[attr-defined]
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], RuntimeError)


async def test_a_503_log_line_names_the_request_that_met_it(
    database_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        database_url=database_url, read_api_open=True, read_pool_min_size=1, read_statement_timeout_ms=50
    )
    # The filter every process's log handler has (service.logs.configure_logging).
    caplog.handler.addFilter(RequestContext())
    async with running_client(create_app(settings)) as client, db.transaction():
        await db.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        response = await client.get("/v1/products/1", headers={"X-Request-Id": "req-503"})
    assert response.status_code == 503
    [line] = [record for record in caplog.records if record.name == "orders_api.database"]
    assert "read pool: statement timeout" in line.getMessage()
    assert line.request == " [request req-503 GET /v1/products/{id}]"  # type: ignore[attr-defined]


async def test_slow_statements_are_logged_per_pool_without_their_parameters(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database_url=database_url, read_api_open=True, read_pool_min_size=1, slow_statement_ms=100)
    app = create_app(settings)

    async def sleep_then_select(session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_sleep(0.15), CAST(:email AS text)"), {"email": PERSONAL})
        await session.execute(text("SELECT 1 AS fast_write"))

    caplog.set_level(logging.WARNING)
    async with running_client(app):
        pools = app.state.resources.pools
        await pools["writes"].run(sleep_then_select)
        reads = pools["reads"]
        assert isinstance(reads, ReadPool)
        async with reads.connection() as connection:
            await connection.fetchval("SELECT pg_sleep(0.15), $1::text", PERSONAL)
            await connection.fetchval("SELECT 1 AS fast_read")
        await reads.find("SELECT pg_sleep(0.15), $1::text AS replanned", str, PERSONAL, replan=True)  # pool-timed
        await asyncio.sleep(0.05)  # asyncpg calls its query loggers soon after the query, not during it
    lines = [record.getMessage() for record in caplog.records if record.name == "orders_api.database.slow"]
    assert [line.split(":")[0] for line in lines] == ["write pool", "read pool", "read pool"]  # not the fast ones
    for line in lines:
        found = re.fullmatch(
            r".* pool: statement took (\d+) ms \(SLOW_STATEMENT_MS=100\): SELECT pg_sleep\(0.15\), .+", line
        )
        assert found is not None, line
        assert int(found[1]) >= 100
    assert PERSONAL not in caplog.text


async def test_slow_statements_sent_on_the_driver_and_slow_positioning_rounds_are_logged_too(
    database_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A unit of work sends its read-model and event statements on the driver, past SQLAlchemy's
    hooks, and the event positioner has a connection of its own: their slow statements are logged
    like the session's (without their parameters)."""
    settings = Settings(database_url=database_url, read_api_open=True, read_pool_min_size=1, slow_statement_ms=100)
    app = create_app(settings)

    async def slow_on_the_driver(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1 AS begins"))
        await execute_on_driver(session, "SELECT pg_sleep(0.15), $1::text", [PERSONAL])

    async def appending(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1 AS begins"))
        await events.append(session, [NewEvent("customer.updated", 1, '{"id": 1}')])

    caplog.set_level(logging.WARNING)
    async with running_client(app):
        pool = app.state.resources.pools["writes"]
        await pool.run(slow_on_the_driver)
        async with db.transaction():
            await db.execute("SELECT FROM events_head FOR UPDATE")  # the round waits for this row
            await pool.run(appending)  # answers at its commit, before its round
            await asyncio.sleep(0.3)
        await positioned_head(db)
        await asyncio.sleep(0.05)  # asyncpg calls its query loggers soon after the query, not during it
    lines = [record.getMessage() for record in caplog.records if record.name == "orders_api.database.slow"]
    assert [line.split(":")[0] for line in lines] == ["write pool", "events positioner"]
    assert re.fullmatch(
        r"write pool: statement took \d+ ms \(SLOW_STATEMENT_MS=100\): "
        r"SELECT pg_sleep\(0.15\), .+",
        lines[0],
    )
    assert re.fullmatch(r"events positioner: statement took \d+ ms .*: SELECT events_position\(\$1\)", lines[1])
    assert PERSONAL not in caplog.text


async def test_an_imports_slow_copy_is_logged_by_its_table_and_columns_not_its_rows(
    database_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """The order import writes its rows with COPY on the driver, past SQLAlchemy's hooks and
    asyncpg's query loggers: a slow COPY is logged too (here held behind a lock on the table)."""
    settings = Settings(
        database_url=database_url, read_api_open=True, write_api_tokens=(WRITE_TOKEN,), slow_statement_ms=100
    )
    caplog.set_level(logging.WARNING)
    async with running_client(create_app(settings)) as client:
        created = await client.post("/v1/customers", json={"email": PERSONAL, "name": "C"}, headers=AUTH)
        product = await new_product(client, stock=1)
        body = ndjson(writes_support.line(created.json()["id"], (product, 1, 100)))
        async with db.transaction():
            await db.execute("LOCK TABLE orders IN SHARE MODE")  # COPY waits for this
            importing = asyncio.create_task(client.post("/v1/orders/import", content=body, headers=NDJSON))
            await asyncio.sleep(0.3)
        response = await importing
    assert response.status_code == 200, response.text
    lines = [record.getMessage() for record in caplog.records if record.name == "orders_api.database.slow"]
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"write pool: statement took \d+ ms \(SLOW_STATEMENT_MS=100\): "
        r"COPY orders \(id, customer_id, .*\) FROM STDIN",
        lines[0],
    )
    assert PERSONAL not in caplog.text


async def test_with_slow_statement_ms_0_no_statement_is_logged(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database_url=database_url, read_api_open=True, read_pool_min_size=1, slow_statement_ms=0)
    app = create_app(settings)
    caplog.set_level(logging.INFO)
    async with running_client(app):
        await app.state.resources.pools["writes"].run(lambda session: session.execute(text("SELECT pg_sleep(0.05)")))
        async with app.state.resources.pools["reads"].connection() as connection:
            assert connection._query_loggers == set()  # nothing installed: no query is timed
            await connection.fetchval("SELECT pg_sleep(0.05)")
        await asyncio.sleep(0.05)
    assert [record for record in caplog.records if record.name == "orders_api.database.slow"] == []


async def test_workers_log_their_requests_too(database_url: str, tmp_path: Path) -> None:
    # A --workers process is a fresh interpreter that uvicorn starts with only its own loggers set
    # up: its orders_api INFO lines (here, a refused request head) were lost.
    log = tmp_path / "serve.log"
    env = serve_env(database_url, ACCESS_LOG="json", MAX_HEADERS="8")
    with serving_process("--workers", "2", env=env, log=log) as (process, url):
        await asyncio.to_thread(wait_ready, url, process, log)
        async with httpx.AsyncClient(base_url=url) as http:
            for n in range(6):
                assert (await http.get("/healthz", headers={"X-Request-Id": f"worker-check-{n}"})).status_code == 200
            crowded = await http.get("/healthz", headers={f"X-Extra-{n}": "1" for n in range(10)})
            assert crowded.status_code == 431
    output = log.read_text()
    logged = {json.loads(line)["request_id"] for line in output.splitlines() if line.startswith("{")}
    assert {f"worker-check-{n}" for n in range(6)} <= logged
    assert re.search(r"INFO orders_api\.http: refused a request from 127\.0\.0\.1:\d+: .*\(MAX_HEADERS\)", output)

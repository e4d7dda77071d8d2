"""Tracing (issue 22): off unless OpenTelemetry's variables ask, and then nothing is imported or
installed; on, a request joins its caller's W3C trace, and its statements show under it, on the pool
they ran on. Traced through the SDK's in-memory exporter on the real database, and, for
``serve --workers``, exported over OTLP/HTTP to a collector this test runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import wrapt
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.engine import Engine
from starlette.applications import Starlette

from service import tracing
from service.app import create_app
from service.tracing import Tracing, requested
from shared.config import ConfigError, Settings
from tests.processes import serve_env, serving_process, wait_ready, wait_until
from tests.support import running_client
from tests.writes.support import new_customer, new_product, place

CALLER_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN = 0xB7AD6B7169203331
TRACEPARENT = {"traceparent": f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"}
POOL = "db.client.connection.pool.name"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced_app(settings: Settings, exporter: InMemorySpanExporter) -> Starlette:
    """The app with tracing on, into ``exporter``: a provider of its own, never the global one."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return create_app(settings, tracing=Tracing(provider))


def in_callers_trace(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.context.trace_id == CALLER_TRACE]


def statement(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("db.statement") or attributes.get("db.query.text") or "")


def scope(span: ReadableSpan) -> str:
    assert span.instrumentation_scope is not None
    return span.instrumentation_scope.name


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def the_server_span(spans: list[ReadableSpan]) -> ReadableSpan:
    [server] = [span for span in spans if span.kind is SpanKind.SERVER]
    return server


async def test_a_command_joins_the_callers_trace_with_its_statements_on_the_write_pool(
    traced_app: Starlette, exporter: InMemorySpanExporter
) -> None:
    async with running_client(traced_app) as client:
        customer = await new_customer(client)
        product = await new_product(client)
        response = await place(client, customer, (product, 2), **TRACEPARENT)
    assert response.status_code == 201, response.text

    spans = in_callers_trace(exporter)
    server = the_server_span(spans)
    assert parent_id(server) == CALLER_SPAN
    assert server.name == "POST /v1/orders"
    assert (server.attributes or {})["http.route"] == "/v1/orders"
    database = [span for span in spans if span is not server]
    # Under the request: the statements, and the checkout ("connect"; its pre-ping under it when the
    # connection sat idle past writes.db.PING_BYPASS).
    [checkout] = [span for span in database if span.name == "connect"]
    assert server.context.span_id in {parent_id(span) for span in database}
    assert {parent_id(span) for span in database} <= {server.context.span_id, checkout.context.span_id}
    inserts = [span for span in database if statement(span).startswith("INSERT INTO orders ")]
    assert [scope(span) for span in inserts] == ["opentelemetry.instrumentation.sqlalchemy"]
    # Every span of the command names the write pool: SQLAlchemy's statements, and asyncpg's round
    # trips on the same connection outside them (the pre-ping, COMMIT), never a statement twice.
    assert {(span.attributes or {})[POOL] for span in database} == {"write"}
    by_asyncpg = [statement(span) for span in database if scope(span) == "opentelemetry.instrumentation.asyncpg"]
    assert any(text.startswith("COMMIT") for text in by_asyncpg), by_asyncpg
    # The statements sent on the driver directly (the read model's, writes.readmodels, and the
    # event's, writes.events.append) are asyncpg's alone.
    on_driver = ("INTO customer_totals", "INTO events")
    assert not any(text.startswith("INSERT") and not any(to in text for to in on_driver) for text in by_asyncpg), (
        by_asyncpg
    )
    assert any("INTO customer_totals" in text for text in by_asyncpg), by_asyncpg


async def test_a_query_joins_the_callers_trace_with_its_statement_on_the_read_pool(
    traced_app: Starlette, exporter: InMemorySpanExporter
) -> None:
    async with running_client(traced_app) as client:
        customer = await new_customer(client)
        product = await new_product(client)
        order = (await place(client, customer, (product, 1))).json()["id"]
        response = await client.get(f"/v1/orders/{order}", headers=TRACEPARENT)
    assert response.status_code == 200, response.text

    spans = in_callers_trace(exporter)
    server = the_server_span(spans)
    assert parent_id(server) == CALLER_SPAN
    assert server.name == "GET /v1/orders/{id}"
    [select] = [span for span in spans if span is not server]
    assert scope(select) == "opentelemetry.instrumentation.asyncpg"
    assert select.kind is SpanKind.CLIENT
    assert parent_id(select) == server.context.span_id
    assert statement(select).lstrip().startswith("SELECT")
    assert "FROM orders" in statement(select)
    assert (select.attributes or {})[POOL] == "read"


async def test_a_server_span_holds_no_query_string_and_no_unmatched_path(
    traced_app: Starlette, exporter: InMemorySpanExporter
) -> None:
    # A search or a filter may hold personal data, which the access log leaves out too; and a path no
    # route matched would let any client make as many span names as it likes.
    async with running_client(traced_app) as client:
        customer = await new_customer(client)
        listed = await client.get(f"/v1/orders?customer_id={customer}&limit=1", headers=TRACEPARENT)
        searched = await client.get("/v1/products?q=alice%40example.com", headers=TRACEPARENT)
        unmatched = await client.get("/totally/random/1796447575849081618", headers=TRACEPARENT)
    # The app still read the query string.
    assert listed.status_code == 200, listed.text
    assert searched.status_code == 200, searched.text
    assert unmatched.status_code == 404

    servers = [span for span in in_callers_trace(exporter) if span.kind is SpanKind.SERVER]
    assert sorted(span.name for span in servers) == ["GET", "GET /v1/orders", "GET /v1/products"]
    for span in servers:
        values = " ".join(str(value) for value in (span.attributes or {}).values())
        for personal in ("alice", "customer_id", "limit"):
            assert personal not in values, span.attributes
        assert "1796447575849081618" not in span.name
    assert "http.route" not in (next(s for s in servers if s.name == "GET").attributes or {})


async def test_probes_and_statements_outside_requests_start_no_trace(
    traced_app: Starlette, exporter: InMemorySpanExporter
) -> None:
    async with running_client(traced_app) as client:
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        await traced_app.state.resources.pools["writes"].ping()
        await traced_app.state.resources.pools["reads"].ping()
        # The same pings inside a traced request would be recorded: this request is.
        assert (await client.get("/v1/products/1", headers=TRACEPARENT)).status_code == 404
    assert list(exporter.get_finished_spans()) == in_callers_trace(exporter)
    assert the_server_span(in_callers_trace(exporter)).name == "GET /v1/products/{id}"


def patched(cls: type, method: str) -> bool:
    return isinstance(vars(cls)[method], wrapt.FunctionWrapper)


def tracing_listeners(app: Starlette) -> list[str]:
    """The modules of the write engine's statement listeners that tracing added."""
    listeners = app.state.resources.pools["writes"].engine.sync_engine.dispatch.before_cursor_execute
    modules = [listener.__module__ for listener in listeners]
    return [module for module in modules if module.startswith(("service.tracing", "opentelemetry"))]


async def test_the_drivers_are_unpatched_when_the_app_stops(traced_app: Starlette) -> None:
    async with running_client(traced_app):
        assert patched(asyncpg.connection.Connection, "fetchval")
        assert patched(Engine, "connect")
        assert tracing_listeners(traced_app)
    assert not patched(asyncpg.connection.Connection, "fetchval")
    assert not patched(asyncpg.prepared_stmt.PreparedStatement, "fetch")
    assert not patched(Engine, "connect")
    assert tracing_listeners(traced_app) == []


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_SERVICE_NAME": "orders"}, True),
        ({"OTEL_SERVICE_NAME": ""}, False),
        ({"OTEL_SERVICE_NAME": "orders", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_SERVICE_NAME": "orders", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_SERVICE_NAME": "orders", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
        ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"}, False),
    ],
)
def test_opentelemetrys_own_variables_turn_tracing_on(environ: Mapping[str, str], on: bool) -> None:
    assert requested(environ) is on


def test_an_otlp_protocol_other_than_http_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc"):
        requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_a_switch_without_the_otel_extra_stops_start_up_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the extra, the package "opentelemetry" itself is missing: find_spec("opentelemetry.sdk")
    # raises instead of answering None, and serve printed that traceback (a newcomer's finding).
    monkeypatch.setattr(tracing, "PACKAGES", ("orders_api_absent_package.sdk",))
    with pytest.raises(ConfigError, match=r"OTEL_SERVICE_NAME asks for traces: install the otel extra"):
        requested({"OTEL_SERVICE_NAME": "orders"})


# In a fresh interpreter, as `serve` runs: the app built, its lifespan run and a request served,
# with tracing off. Then no OpenTelemetry module has been imported, no middleware of theirs is in
# the app, and asyncpg is not patched.
OFF = """
import asyncio, json, os, sys
import asyncpg, httpx
from asgi_lifespan import LifespanManager
from service.app import create_app
from service.tracing import from_environment
from shared.config import Settings

async def main():
    settings = Settings(database_url=sys.argv[1], read_api_open=True, read_pool_min_size=1, write_pool_size=1)
    app = create_app(settings, tracing=from_environment(os.environ))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            status = (await client.get("/v1/products/1")).status_code
        stack = [type(layer).__name__ for layer in iter_stack(app.middleware_stack)]
        patched = type(asyncpg.connection.Connection.fetchval).__name__
    print(json.dumps({"status": status, "stack": stack, "fetchval": patched,
                      "otel": sorted(name for name in sys.modules if name.startswith("opentelemetry"))}))

def iter_stack(layer):
    while layer is not None:
        yield layer
        layer = getattr(layer, "app", None)

asyncio.run(main())
"""


def test_off_nothing_is_imported_and_nothing_installed(database_url: str) -> None:
    env = serve_env(database_url)
    env = {name: value for name, value in env.items() if not name.startswith("OTEL_")}
    found = subprocess.run(
        [sys.executable, "-c", OFF, database_url], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    off = json.loads(found.stdout.splitlines()[-1])  # after the request's access line
    assert off["status"] == 404
    assert off["otel"] == []
    assert off["fetchval"] == "function"
    assert "RequestLog" in off["stack"]
    assert not any("Telemetry" in name for name in off["stack"]), off["stack"]


# A span as the collector received it, with its process's resource attributes.
Exported = tuple[dict[str, AnyValue], Span]


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps each export's resource and spans."""

    received: list[Exported]

    def do_POST(self) -> None:
        export = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource_spans in export.resource_spans:
            resource = {attribute.key: attribute.value for attribute in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.received.extend((resource, span) for span in scope_spans.spans)
        body = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[Exported]]]:
    received: list[Exported] = []
    handler = type("Handler", (Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_each_worker_exports_its_requests_traces_over_otlp(
    database_url: str, tmp_path: Path, collector: tuple[str, list[Exported]]
) -> None:
    endpoint, received = collector
    log = tmp_path / "serve.log"
    env = serve_env(
        database_url,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
        # Each worker names its process in its spans' resource.
        OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="otel,process",
    )
    with serving_process("--workers", "2", env=env, log=log) as (process, url):
        await asyncio.to_thread(wait_ready, url, process, log)
        # Both workers say so once their lifespan has instrumented their pools.
        await asyncio.to_thread(wait_until, lambda: log.read_text().count("tracing on:") == 2, process, log)
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(4):
                response = await http.get("/v1/products/1", headers=TRACEPARENT)
                assert response.status_code == 404

        def exported() -> bool:
            return sum(span.kind == Span.SPAN_KIND_SERVER for _, span in received if is_callers(span)) == 4

        await asyncio.to_thread(wait_until, exported, process, log)
    ours = [(resource, span) for resource, span in received if is_callers(span)]
    servers = [span for _, span in ours if span.kind == Span.SPAN_KIND_SERVER]
    assert {span.name for span in servers} == {"GET /v1/products/{id}"}
    assert {span.parent_span_id for span in servers} == {CALLER_SPAN.to_bytes(8, "big")}
    assert {resource["service.name"].string_value for resource, _ in ours} == {"orders-api"}
    # Every worker is a process of its own, and none is the supervisor.
    assert process.pid not in {resource["process.pid"].int_value for resource, _ in ours}


def is_callers(span: Span) -> bool:
    return span.trace_id == CALLER_TRACE.to_bytes(16, "big")


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A collector that accepts connections and never answers: each export waits out its timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


def test_a_collector_that_never_answers_does_not_hold_the_shutdown_up(
    database_url: str, tmp_path: Path, blackhole: str
) -> None:
    # The SDK's flush ignores its timeout: each queued batch waited out the exporter's 10 s, and the
    # process stopped 9 to 46 s after SIGTERM (an outside probe). FLUSH_MILLIS bounds it: 5 s.
    log = tmp_path / "serve.log"
    env = serve_env(database_url, OTEL_EXPORTER_OTLP_ENDPOINT=blackhole, OTEL_BSP_SCHEDULE_DELAY="50")
    with serving_process(env=env, log=log) as (process, url):
        wait_ready(url, process, log)
        with httpx.Client(base_url=url) as http:
            for _ in range(200):  # more than one batch (512 spans), statements included
                assert http.get("/v1/products/1", headers=TRACEPARENT).status_code == 404
        time.sleep(0.5)  # the first batch is on its way to the collector, and waits
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        stopped = time.monotonic() - started

    assert process.returncode == 0, log.read_text()[-2000:]
    assert stopped < 8, f"stopped {stopped:.1f} s after SIGTERM"
    assert "not exported within 5.0 s; given up" in log.read_text()

"""Tracing with OpenTelemetry: optional (the ``otel`` extra), switched on by OpenTelemetry's own variables.

Off, it costs nothing: no OpenTelemetry package is imported (this module imports them only once
tracing is on), the app gets no middleware and no driver is patched. On, each process that builds
an app (``serve``, or each ``serve --workers`` worker, which builds its own) has its own
TracerProvider. The SDK and the OTLP exporter read the other ``OTEL_*`` variables themselves: where
to export, headers, sampling, resource attributes, batching.

A request's trace: the ASGI instrumentation's server span, named by the route template
(``GET /v1/orders/{id}``) and joining the caller's trace when it sent a W3C ``traceparent``; under it
one span per statement, SQLAlchemy's on the write pool and asyncpg's on the read pool, each naming
its pool (``db.client.connection.pool.name``: ``write`` or ``read``, as /metrics labels them).

The provider is never made OpenTelemetry's global one: it is handed to each instrumentation, so a
test can trace one app with a provider of its own and take the instrumentation off afterwards. The
drivers' instrumentation is process-wide, so one traced app runs in a process at a time, as ``serve``
runs one.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import METHODS
from shared.config import ConfigError
from shared.dbfailures import READ, WRITE
from shared.paths import route_template
from shared.sides import Pool, SideName
from writes.db import WritePool

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import PoolProxiedConnection

log = logging.getLogger("orders_api.tracing")

# Any of these turns tracing on: where to send spans, or what to call this service in them.
SWITCHES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME")
# What the ``otel`` extra installs; a switch without them stops start-up rather than tracing nothing.
PACKAGES = (
    "opentelemetry.sdk",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.instrumentation.asgi",
    "opentelemetry.instrumentation.asyncpg",
    "opentelemetry.instrumentation.sqlalchemy",
)
# Probes and scrapes, every few seconds from every orchestrator and Prometheus: no trace of their own.
# Patterns searched in the request's URL, comma-separated, as OpenTelemetry's Python instrumentations
# take them; OTEL_PYTHON_ASGI_EXCLUDED_URLS (or OTEL_PYTHON_EXCLUDED_URLS) replaces the list.
UNTRACED = "/healthz$,/readyz$,/metrics$"
UNTRACED_VARIABLES = ("OTEL_PYTHON_ASGI_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS")
POOL_NAME = "db.client.connection.pool.name"
# At shutdown the last spans go out, or are given up, within this long: a collector that is down
# must not hold the process past its kill deadline.
FLUSH_MILLIS = 5_000


def requested(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: one of ``SWITCHES`` is set, and neither
    ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none``. A ConfigError when they ask for
    what this process cannot do: without the ``otel`` extra, or over OTLP other than HTTP."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if not any(environ.get(name, "").strip() for name in SWITCHES):
        return False
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in (None, "", "http/protobuf"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: traces are exported as OTLP over HTTP (http/protobuf);"
            " point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"
        )
    if not all(_installed(package) for package in PACKAGES):
        found = ", ".join(name for name in SWITCHES if environ.get(name, "").strip())
        raise ConfigError(f"{found} asks for traces: install the otel extra (pip install 'orders-api[otel]')")
    return True


def _installed(package: str) -> bool:
    # find_spec imports a dotted name's parents, and a missing parent raises rather than giving None:
    # without the extra, "opentelemetry.sdk" was a traceback instead of the message above.
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:
        return False


def from_environment(environ: Mapping[str, str]) -> Tracing | None:
    """This process's tracing as the ``OTEL_*`` variables ask (``requested``), or None."""
    if not requested(environ):
        return None
    untraced = next((environ[name] for name in UNTRACED_VARIABLES if environ.get(name)), UNTRACED)
    return Tracing.exporting(untraced=untraced)


class Tracing:
    """One app's tracing: the server spans (``middleware``), the statement spans while its pools
    are open (``instrumenting``), and the trace and span ids its access lines carry (``ids``)."""

    def __init__(self, provider: TracerProvider, *, untraced: str = UNTRACED) -> None:
        from opentelemetry import trace

        self.provider = provider
        self.untraced = untraced
        self._current_span = trace.get_current_span

    @classmethod
    def exporting(cls, *, untraced: str = UNTRACED) -> Tracing:
        """A provider that batches spans to the OTLP/HTTP endpoint the ``OTEL_*`` variables name."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "orders-api"}))
        # Its sampler: OTEL_TRACES_SAMPLER, parent-based by default. Not shut down at exit by the SDK:
        # that waits for every queued batch, each up to the exporter's timeout (``flush_within``).
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider, untraced=untraced)

    def middleware(self) -> Middleware:
        return Middleware(_server_spans, tracer_provider=self.provider, untraced=self.untraced)

    def ids(self) -> tuple[str, str] | None:
        """The current span's trace and span ids, in hex as ``traceparent`` writes them; None
        outside a trace (a request with no span of its own, such as a probe)."""
        context = self._current_span().get_span_context()
        if not context.is_valid:
            return None
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"

    @contextmanager
    def instrumenting(self, pools: Mapping[SideName, Pool]) -> Iterator[None]:
        """Statement spans on ``pools`` until the block ends, then the last spans flushed."""
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        with ExitStack() as stack:
            stack.callback(flush_within, self.provider, FLUSH_MILLIS / 1000)
            # asyncpg is patched process-wide: it sees the write pool's driver too (the pre-ping, COMMIT).
            asyncpg_spans = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]  # an unannotated __init__
            asyncpg_spans.instrument(tracer_provider=PoolTracers(self.provider, _asyncpg_pool))
            stack.callback(asyncpg_spans.uninstrument)
            writes = pools.get("writes")
            if isinstance(writes, WritePool):
                stack.enter_context(_following_write_connections(writes.engine))
                # It declares SQLAlchemy below 2.1, which it predates; tests/test_tracing.py checks it on ours.
                sqlalchemy_spans = SQLAlchemyInstrumentor()
                sqlalchemy_spans.instrument(
                    engine=writes.engine.sync_engine,
                    tracer_provider=PoolTracers(self.provider, lambda: WRITE.label),
                    skip_dep_check=True,
                )
                stack.callback(sqlalchemy_spans.uninstrument)
            log.info("tracing on: spans of %s", ", ".join(sorted(pools)))
            yield


def flush_within(provider: TracerProvider, seconds: float) -> None:
    """Send the spans still queued, waiting ``seconds`` at most. The SDK's ``force_flush`` ignores its
    own timeout (opentelemetry-python#4568): with the collector down each queued batch waited out
    the exporter's 10 s, and a stopping process stayed up for 46 s with its pools open. The flush
    runs in a thread of its own; past the bound it is left to finish or not (its thread, like the
    exporter's, is a daemon: it does not hold the exit)."""
    flushing = threading.Thread(target=provider.force_flush, name="orders-api span flush", daemon=True)
    flushing.start()
    flushing.join(seconds)
    if flushing.is_alive():
        log.warning("tracing: the last spans were not exported within %s s; given up", seconds)


def _server_spans(app: ASGIApp, *, tracer_provider: TracerProvider, untraced: str) -> ASGIApp:
    """The ASGI instrumentation's server span around ``app``, named by the route once the router
    has chosen it. Without its spans for each message received and sent: a request's trace is
    its statements."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.trace import get_current_span
    from opentelemetry.util.http import parse_excluded_urls

    async def named_by_route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        server = get_current_span()
        # The app gets the query string the instrumentation was not shown (``without_query``).
        scope = {**scope, "query_string": scope.pop(HIDDEN_QUERY, b"")}

        async def send_named(message: Message) -> None:
            # The router has chosen by now, and the span ends with the response's last message.
            if message["type"] == "http.response.start":
                # The path would make each order its own name: ``GET /v1/orders/{id}``, as /metrics
                # says. A path no route matched is named by its method alone (OpenTelemetry's rule
                # without a route): any client could otherwise make as many span names as it likes.
                route = route_template(scope)
                method = scope["method"] if scope["method"] in METHODS else "HTTP"
                server.update_name(method if route is None else f"{method} {route}")
                if route is not None:
                    server.set_attribute("http.route", route)
            await send(message)

        await app(scope, receive, send_named)

    traced: ASGIApp = OpenTelemetryMiddleware(
        named_by_route,
        excluded_urls=parse_excluded_urls(untraced),
        tracer_provider=tracer_provider,
        exclude_spans=["receive", "send"],
    )

    async def without_query(scope: Scope, receive: Receive, send: Send) -> None:
        # The instrumentation writes the query string into the span (``http.url``, ``http.target``):
        # a search or a filter may hold personal data, which the access log leaves out too. It is
        # shown a scope without it, and the app gets it back (``named_by_route``).
        if scope["type"] == "http":
            scope = {**scope, "query_string": b"", HIDDEN_QUERY: scope.get("query_string", b"")}
        await traced(scope, receive, send)

    return without_query


# Where the request's query string waits while the instrumentation sees a scope without it.
HIDDEN_QUERY = "orders_api.query_string"


@dataclass(frozen=True, slots=True)
class WriteConnection:
    """The write connection this task checked out, and whether one of SQLAlchemy's statements is
    running on it."""

    connection: PoolProxiedConnection
    in_statement: bool = False


# Set by the write engine's events, which run in SQLAlchemy's greenlet: it shares the task's
# context, so the asyncpg calls that follow see it.
WRITE_CONNECTION: ContextVar[WriteConnection | None] = ContextVar("orders_api_write_connection", default=None)


def _asyncpg_pool() -> str | None:
    """The pool an asyncpg span is on: the write pool while this task holds a write connection,
    else the read pool. Inside a SQLAlchemy statement, none: SQLAlchemy's span is that statement."""
    held = WRITE_CONNECTION.get()
    # Checked in, its dbapi_connection is None. SQLAlchemy closes a connection in a task of its
    # own, so no event here says when.
    if held is None or held.connection.dbapi_connection is None:
        return READ.label
    return None if held.in_statement else WRITE.label


@contextmanager
def _following_write_connections(engine: AsyncEngine) -> Iterator[None]:
    """Keeps ``WRITE_CONNECTION`` while the block runs."""
    from sqlalchemy import event

    def checked_out(_driver: object, _record: object, connection: PoolProxiedConnection) -> None:
        WRITE_CONNECTION.set(WriteConnection(connection))

    def in_statement(running: bool) -> Callable[..., None]:
        def listener(*_: object) -> None:
            held = WRITE_CONNECTION.get()
            if held is not None:
                WRITE_CONNECTION.set(WriteConnection(held.connection, running))

        return listener

    listeners = [
        # First among the checkout listeners, so the pre-ping (writes.db) is seen on the write pool.
        ("checkout", checked_out, {"insert": True}),
        ("before_cursor_execute", in_statement(True), {}),
        ("after_cursor_execute", in_statement(False), {}),
        ("handle_error", in_statement(False), {}),
    ]
    for name, listener, options in listeners:
        event.listen(engine.sync_engine, name, listener, **options)
    try:
        yield
    finally:
        for name, listener, _ in listeners:
            event.remove(engine.sync_engine, name, listener)


class PoolTracers:
    """What a driver's instrumentation takes as its tracer provider: ``provider``'s tracers, as
    ``PoolTracer``s naming the pool ``pool_of`` says."""

    def __init__(self, provider: TracerProvider, pool_of: Callable[[], str | None]) -> None:
        self.provider = provider
        self.pool_of = pool_of

    def get_tracer(self, *args: Any, **kwargs: Any) -> PoolTracer:
        return PoolTracer(self.provider.get_tracer(*args, **kwargs), self.pool_of)


class PoolTracer:
    """A tracer as the instrumentations call one (``start_span``, ``start_as_current_span``) that
    adds the span's pool to its attributes. It starts no span where ``pool_of`` says None, nor
    outside a trace: the idempotency-key purge would start a trace of its own on every run, and
    the untraced probes' pings would too."""

    def __init__(self, tracer: Tracer, pool_of: Callable[[], str | None]) -> None:
        from opentelemetry import trace

        self.tracer = tracer
        self.pool_of = pool_of
        self.trace = trace

    def start_span(self, name: str, context: Context | None = None, **options: Any) -> Span:
        pool = self.pool_of()
        if pool is None or not self.trace.get_current_span(context).get_span_context().is_valid:
            return self.trace.INVALID_SPAN
        options["attributes"] = {**(options.get("attributes") or {}), POOL_NAME: pool}
        return self.tracer.start_span(name, context, **options)

    @contextmanager
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        *,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
        **options: Any,
    ) -> Iterator[Span]:
        recording = {"record_exception": record_exception, "set_status_on_exception": set_status_on_exception}
        span = self.start_span(name, context, **recording, **options)
        with self.trace.use_span(span, end_on_exit=end_on_exit, **recording) as current:
            yield current

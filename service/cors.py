"""CORS: the web pages of ``CORS_ALLOW_ORIGINS`` may call the API from a browser (Starlette's
CORSMiddleware). Unset, nothing is installed: no header is added and no request pays for a check."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Send

from shared.config import Settings

# The service has no other methods: a preflight for any other is refused.
ALLOWED_METHODS = ("GET", "HEAD", "POST")
# Every request header the service reads. Content-Type is listed because only form types are
# CORS-safelisted, and a JSON body needs it; X-Request-Id lets a page name its own requests.
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-Match",
    "If-None-Match",
    "Consistency-Token",
    "X-Request-Id",
    # GET /v1/events: where a page's own fetch of the event stream resumes (EventSource sends it itself).
    "Last-Event-ID",
    # W3C Trace Context: a traced page (OpenTelemetry's browser instrumentation adds them to the calls
    # it traces) joins its trace to the server's, with tracing on (service.tracing). Without them in
    # the list its every traced call failed its preflight.
    "traceparent",
    "tracestate",
)
# Response headers a page may read beyond the safelisted ones (Cache-Control, Content-Type, ...).
EXPOSED_HEADERS = ("ETag", "Location", "Consistency-Token", "Idempotent-Replayed", "Retry-After", "X-Request-Id")
# Seconds a browser may reuse a preflight's answer for its URL. The answer depends on nothing but
# this configuration; Chromium caps it at 2 hours (Firefox at 24), so more would change nothing.
PREFLIGHT_MAX_AGE = 7200


def cors(settings: Settings) -> list[Middleware]:
    """The middleware answering preflights and marking answers readable for the allowed origins;
    none when ``CORS_ALLOW_ORIGINS`` is unset.

    Cookies are never allowed (``allow_credentials=False``): a page sends its bearer token in
    ``Authorization``, which a preflight allows by name, so no browser ever attaches a user's
    cookies or HTTP credentials to a cross-origin call."""
    if not settings.cors_allow_origins:
        return []
    return [
        Middleware(
            OwnOriginsCORS,
            allow_origins=settings.cors_allow_origins,
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            allow_credentials=False,
            max_age=PREFLIGHT_MAX_AGE,
        )
    ]


def refusal_headers(settings: Settings, origin: bytes | None) -> list[tuple[bytes, bytes]]:
    """The headers this policy puts on an answer to ``origin``, for one no middleware sees: what the
    HTTP protocol refuses before any app runs (a head too large, one it cannot parse,
    ``service.server``). Without CORS none; to an allowed origin, as ``OwnOriginsCORS`` marks an
    answer (``Access-Control-Allow-Origin``, the exposed headers, ``Vary: Origin``); to another, or
    when the origin is unknown, ``Vary: Origin`` alone."""
    if not settings.cors_allow_origins:
        return []
    if origin is None or origin.decode("latin-1") not in settings.cors_allow_origins:
        return [(b"vary", b"Origin")]
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode()),
        (b"vary", b"Origin"),
    ]


class OwnOriginsCORS(CORSMiddleware):
    """Starlette's CORSMiddleware, except that an answer to another origin carries no CORS header,
    only ``Vary: Origin``, its refused preflight included. Starlette listed the exposed headers (and,
    refusing a preflight, the allowed methods and headers) to every origin: harmless without
    ``Access-Control-Allow-Origin``, but not what docs/http.md says of another origin's answers."""

    def preflight_response(self, request_headers: Headers) -> Response:
        origin = request_headers.get("Origin", "")
        if not self.is_allowed_origin(origin):
            return PlainTextResponse("Disallowed CORS origin", status_code=400, headers={"Vary": "Origin"})
        return super().preflight_response(request_headers)

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        origin = request_headers.get("Origin")
        if message["type"] == "http.response.start" and origin is not None and not self.is_allowed_origin(origin):
            message.setdefault("headers", [])
            MutableHeaders(scope=message).add_vary_header("Origin")
            await send(message)
            return
        await super().send(message, send, request_headers)

"""gzip for the answers worth it, when the client accepts it (Starlette's GZipMiddleware).

Measured here (docs/http.md, Compression): compressing costs about 14 µs of CPU for any body,
most of it the compressor's set-up, and a page of 20 orders (2.6 kB) shrinks to 0.5 kB for about
20 µs; a single product or order of a few lines is a few hundred bytes either way.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware, GZipResponder
from starlette.types import Receive, Scope, Send

from service.logs import RESPONSE_HEADERS
from shared.http import weights

# A body under this size, with the response's head, fits in one TCP segment (1460 bytes on
# Ethernet): compressing it would save no packet and cost about 14 µs. Single products, orders
# of a few lines (about 150 bytes each) and a customer's detail stay as they are; pages, stats and
# exports shrink.
MINIMUM_SIZE = 1024
# zlib's default. Level 9 (Starlette's default) took 93 µs for a page of 100 orders (12.7 kB) where
# 6 took 53 for 3 % more bytes, and 48 ms for an export of 10 000 orders where 6 took 14.
LEVEL = 6

VARY = (b"vary", b"Accept-Encoding")


class Compression(GZipMiddleware):
    """Starlette's GZipMiddleware, except for a client that does not accept gzip: its response goes
    out as the app sends it, with ``Vary: Accept-Encoding`` (a cache in between must neither give it
    a compressed answer nor give this one to a client that would have had one). Starlette passes
    such a request through a responder that parses every response's headers to add the same Vary
    to the large ones only: on a small read that layer cost about 10 % of its rate (measured with
    the metrics' layer, since merged into service.logs.RequestLog). Here the Vary is left to
    RequestLog (``RESPONSE_HEADERS``), which wraps every answer's ``send`` anyway."""

    # Not a coroutine: it only chooses what answers, and hands back that one's awaitable, so it is no
    # frame of the request's coroutine chain (each frame runs again at every resumption of it).
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:  # type: ignore[override]
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        if accepts_gzip(scope):
            # Starlette's own test is for the bytes "gzip" in the header: it compressed for
            # "gzip;q=0" (not acceptable) and not for "GZIP" (codings compare case-insensitively).
            responder = GZipResponder(
                self.app,
                self.minimum_size,
                compresslevel=self.compresslevel,
                thread_minimum_size=self.thread_minimum_size,
                exclude_content_types=self.exclude_content_types,
            )
            return responder(scope, receive, send)
        # service.logs.RequestLog, outside, adds it as the answer starts: no wrapper around send here.
        scope.setdefault(RESPONSE_HEADERS, []).append(VARY)
        return self.app(scope, receive, send)


def accepts_gzip(scope: Scope) -> bool:
    """Whether the request's ``Accept-Encoding`` takes gzip (RFC 9110 §12.5.3): ``gzip`` (or its
    alias ``x-gzip``) with a q above 0, or, naming neither, ``*`` with one."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, _ in headers:  # a plain loop first: most requests name no coding, and then this is all
        if name == b"accept-encoding":
            break
    else:
        return False
    found = weights(",".join(value.decode("latin-1") for name, value in headers if name == b"accept-encoding"))
    if "gzip" in found or "x-gzip" in found:
        return max(found.get("gzip", 0.0), found.get("x-gzip", 0.0)) > 0
    return found.get("*", 0.0) > 0


COMPRESSION = Middleware(Compression, minimum_size=MINIMUM_SIZE, compresslevel=LEVEL)

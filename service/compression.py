"""gzip for the answers worth it, when the client accepts it (Starlette's GZipMiddleware).

Measured here (docs/http.md, Compression): compressing costs about 14 µs of CPU for any body,
most of it the compressor's set-up, and a page of 20 orders (2.6 kB) shrinks to 0.5 kB for about
20 µs; a single product or order of a few lines is a few hundred bytes either way.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import Message, Receive, Scope, Send

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
    the metrics' layer, since merged into service.logs.RequestLog)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or accepts_gzip(scope):
            await super().__call__(scope, receive, send)
            return

        async def send_varied(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), VARY]
            await send(message)

        await self.app(scope, receive, send_varied)


def accepts_gzip(scope: Scope) -> bool:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    return any(name == b"accept-encoding" and b"gzip" in value for name, value in headers)


COMPRESSION = Middleware(Compression, minimum_size=MINIMUM_SIZE, compresslevel=LEVEL)

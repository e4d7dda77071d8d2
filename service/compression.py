"""gzip for the answers worth it, when the client accepts it (Starlette's GZipMiddleware).

Measured here (docs/http.md, Compression): compressing costs about 14 µs of CPU for any body,
most of it the compressor's set-up, and a page of 20 orders (2.6 kB) shrinks to 0.5 kB for about
20 µs; a single product or order of a few lines is a few hundred bytes either way.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware

# A body under this size, with the response's head, fits in one TCP segment (1460 bytes on
# Ethernet): compressing it would save no packet and cost about 14 µs. Single products, orders
# of a few lines (about 150 bytes each) and a customer's detail stay as they are; pages, stats and
# exports shrink.
MINIMUM_SIZE = 1024
# zlib's default. Level 9 (Starlette's default) took 93 µs for a page of 100 orders (12.7 kB) where
# 6 took 53 for 3 % more bytes, and 48 ms for an export of 10 000 orders where 6 took 14.
LEVEL = 6

COMPRESSION = Middleware(GZipMiddleware, minimum_size=MINIMUM_SIZE, compresslevel=LEVEL)

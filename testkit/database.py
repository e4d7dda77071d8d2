"""Plain connections to a test or benchmark database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import asyncpg


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    """One plain connection to ``url``, closed on the way out: how the benchmark looks at its data."""
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


def socket_dir(url: str) -> str | None:
    """The server's Unix socket directory (the embedded server's ``?host=/...``, its data
    directory), if ``url`` connects through one."""
    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or ""])[0]
    return host if host.startswith("/") else None


POSITIONED_WITHIN = 10.0  # seconds


async def positioned_head(connection: asyncpg.Connection, within: float = POSITIONED_WITHIN) -> int:
    """The feed's head once every committed event has its position: commands answer before their
    positioning round (``writes.events.Positioner``), so the last ones' events may be on their way."""
    deadline = time.monotonic() + within
    while await connection.fetchval("SELECT EXISTS (SELECT FROM events WHERE position IS NULL)"):
        if time.monotonic() > deadline:
            raise AssertionError(f"events were still unpositioned {within:g} s after the commands")
        await asyncio.sleep(0.01)
    head: int = await connection.fetchval("SELECT last FROM events_head")
    return head

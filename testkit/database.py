"""Plain connections to a test or benchmark database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    """One plain connection to ``url``, closed on the way out: how the benchmark looks at its data."""
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()

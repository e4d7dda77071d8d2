"""The read pool: a raw asyncpg pool, reached only through ``ReadPool.connection()``.

Every acquire is bounded by ``READ_POOL_ACQUIRE_TIMEOUT``: when the pool is exhausted the client
gets a 503 with ``Retry-After`` instead of a request that hangs. This seam is where pool metrics
and load shedding hook in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from shared.config import Settings
from shared.errors import DatabaseUnavailable, PoolExhausted, ServiceUnavailable
from shared.http import decoder_for
from shared.schema import CURRENT_REVISION_SQL

T = TypeVar("T")

# The driver's ways of saying "the server is not there (any more)".
CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)


async def create_read_pool(settings: Settings) -> Any:
    """Open the asyncpg pool; ``min_size`` connections are opened (warmed) before it returns."""
    return await asyncpg.create_pool(
        settings.read_dsn,
        min_size=settings.read_pool_min_size,
        max_size=settings.read_pool_max_size,
        max_inactive_connection_lifetime=settings.read_pool_max_inactive_lifetime,
        # PgBouncer in transaction mode cannot keep a prepared statement across transactions.
        statement_cache_size=0 if settings.pgbouncer else settings.read_statement_cache_size,
        timeout=settings.read_pool_acquire_timeout,
        server_settings={
            "statement_timeout": str(settings.read_statement_timeout_ms),
            "application_name": "orders-api:read",
            # Nothing on the read side writes; a bug that tries is an error, not a silent change.
            "default_transaction_read_only": "on",
            # Views are built as JSON in SQL; UTC offsets there decode to the same datetimes the
            # write side returns, so both sides encode a timestamp identically (…Z).
            "TimeZone": "UTC",
            # The list queries take optional filters as "$1 IS NULL OR col = $1". PostgreSQL may
            # switch a prepared statement to a generic plan, which cannot fold those away and
            # would walk all orders newest-first for any filter; planning each execution with its
            # values (tens of microseconds) picks the filter's index every time.
            "plan_cache_mode": "force_custom_plan",
        },
    )


class ReadPool:
    def __init__(self, pool: Any, acquire_timeout: float) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """One connection for one round trip or batch, released even when the request is cancelled."""
        try:
            connection = await self.pool.acquire(timeout=self.acquire_timeout)
        except TimeoutError:
            raise PoolExhausted(
                f"no read connection free within {self.acquire_timeout} s (READ_POOL_ACQUIRE_TIMEOUT)"
            ) from None
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(f"read database unreachable: {exc}") from None
        try:
            yield connection
        except asyncpg.QueryCanceledError:
            raise ServiceUnavailable("query exceeded READ_STATEMENT_TIMEOUT_MS") from None
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(f"read database connection lost: {exc}") from None
        finally:
            await self.pool.release(connection)

    async def find(self, sql: str, view: type[T], *args: object) -> T | None:
        """Run ``sql`` (one round trip) whose one value is ``view`` as JSON text; None for no row."""
        async with self.connection() as connection:
            text: str | None = await connection.fetchval(sql, *args)
        return None if text is None else decoder_for(view).decode(text)

    async def fetch(self, sql: str, view: type[T], *args: object) -> T:
        """``find`` for a statement that always yields its value (an aggregate or a list)."""
        found = await self.find(sql, view, *args)
        if found is None:
            raise LookupError(f"statement returned no value, expected {view}: {sql}")
        return found

    async def schema_revision(self) -> str | None:
        """The database's migration revision; None when it was never migrated."""
        async with self.connection() as connection:
            try:
                revision: str | None = await connection.fetchval(CURRENT_REVISION_SQL)
            except asyncpg.UndefinedTableError:
                return None
        return revision

    async def close(self) -> None:
        await self.pool.close()

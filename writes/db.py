"""The write pool: a small SQLAlchemy AsyncEngine and the session maker handlers receive.

Small on purpose: writes are short transactions, and every write connection is one PostgreSQL
backend that the read side cannot use. ``WRITE_POOL_SIZE`` x workers must fit ``max_connections``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared.config import Settings
from shared.errors import ApiError, DatabaseUnavailable, PoolExhausted, ServiceUnavailable

T = TypeVar("T")


def connect_args(settings: Settings) -> dict[str, Any]:
    args: dict[str, Any] = {
        # asyncpg's connect timeout defaults to 60 s; a dead server must not hang a request that long.
        "timeout": settings.write_pool_timeout,
        "server_settings": {
            "statement_timeout": str(settings.write_statement_timeout_ms),
            "application_name": "orders-api:write",
        },
    }
    if settings.pgbouncer:
        # In transaction pooling a prepared statement may land on another server connection:
        # no statement cache, and unique names for the statements asyncpg still prepares.
        args["statement_cache_size"] = 0
        args["prepared_statement_name_func"] = lambda: f"__orders_api_{uuid.uuid4().hex}__"
    return args


def create_write_engine(settings: Settings) -> AsyncEngine:
    url = settings.write_sqlalchemy_url
    if settings.pgbouncer:
        url += ("&" if "?" in url else "?") + "prepared_statement_cache_size=0"
    return create_async_engine(
        url,
        pool_size=settings.write_pool_size,
        max_overflow=settings.write_pool_max_overflow,
        pool_timeout=settings.write_pool_timeout,
        pool_recycle=settings.write_pool_recycle,
        pool_pre_ping=settings.write_pool_pre_ping,
        connect_args=connect_args(settings),
    )


def create_session_maker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # Views are built from objects after commit; expiring them would force a lazy reload.
    return async_sessionmaker(engine, expire_on_commit=False)


async def warm(engine: AsyncEngine, connections: int) -> None:
    """Open ``connections`` at once so the first requests do not pay for connecting."""
    async with AsyncExitStack() as stack:
        for _ in range(connections):
            connection = await stack.enter_async_context(engine.connect())
            await connection.exec_driver_sql("SELECT 1")


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.exec_driver_sql("SELECT 1")


# Conflicts between concurrent transactions that a fresh attempt usually resolves.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
QUERY_CANCELED = "57014"  # statement_timeout fired
# SQLSTATE classes that mean the server is away, not ready yet (57P03 while starting up), shutting
# down, or out of connections: nothing the request did wrong, so a 503 to retry, never a 500.
UNAVAILABLE_CLASSES = ("08", "57P", "53")
ATTEMPTS = 3


async def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run one unit of work: retry it whole on a serialization failure or deadlock, and turn the
    database's ways of failing into 503s a client can retry. Every write request goes through here."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await work()
        except DBAPIError as exc:
            if sqlstate(exc) not in RETRYABLE_SQLSTATES or attempt == ATTEMPTS:
                error = unavailable(exc)
                if error is None:
                    raise
                raise error from exc
        except sqlalchemy.exc.TimeoutError:
            raise PoolExhausted("no write connection free within WRITE_POOL_TIMEOUT") from None
        except OSError as exc:
            raise DatabaseUnavailable(f"write database unreachable: {exc}") from None
        # Jittered, so two transactions that collided do not collide again in step.
        await asyncio.sleep(random.uniform(0.005, 0.05) * attempt)  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable: the last attempt returns or raises")


def sqlstate(exc: DBAPIError) -> str | None:
    code: str | None = getattr(exc.orig, "sqlstate", None)
    return code


def unavailable(exc: DBAPIError) -> ServiceUnavailable | None:
    """The 503 a driver failure amounts to; None for anything else, which is a bug (a 500)."""
    code = sqlstate(exc)
    if exc.connection_invalidated:
        return DatabaseUnavailable("write database connection lost")
    if code is not None and code.startswith(UNAVAILABLE_CLASSES):
        return DatabaseUnavailable(f"write database unavailable ({code}): {exc.orig}")
    if code == QUERY_CANCELED:
        return ServiceUnavailable("statement exceeded WRITE_STATEMENT_TIMEOUT_MS")
    if code in RETRYABLE_SQLSTATES:
        return ServiceUnavailable(f"transaction kept conflicting with others ({ATTEMPTS} attempts)")
    return None


async def add_unique(session: AsyncSession, row: object, taken: ApiError) -> None:
    """Insert ``row`` now; a unique violation (the only constraint a valid command can break) is ``taken``."""
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        raise taken from None

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
from shared.dbfailures import WRITE, Failure, classify, exhausted, unavailable
from shared.errors import ApiError

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


ATTEMPTS = 3


async def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run one unit of work: retry it whole on a serialization failure or deadlock, and turn the
    database's ways of failing (``shared.dbfailures``) into 503s a client can retry. Every write
    request goes through here."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await work()
        except sqlalchemy.exc.TimeoutError:
            raise exhausted(WRITE) from None
        except (DBAPIError, OSError, TimeoutError) as exc:
            invalidated = isinstance(exc, DBAPIError) and exc.connection_invalidated
            failure = classify(exc, connection_closed=invalidated)
            if failure is None:
                raise
            if failure is not Failure.CONFLICT or attempt == ATTEMPTS:
                # A write is not repeated on a lost connection: its commit may have landed.
                # The client retries, with its Idempotency-Key if it sent one.
                raise unavailable(failure, WRITE, exc) from None
        # Jittered, so two transactions that collided do not collide again in step.
        await asyncio.sleep(random.uniform(0.005, 0.05) * attempt)  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable: the last attempt returns or raises")


async def add_unique(session: AsyncSession, row: object, taken: ApiError) -> None:
    """Insert ``row`` now; a unique violation (the only constraint a valid command can break) is ``taken``."""
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        raise taken from None

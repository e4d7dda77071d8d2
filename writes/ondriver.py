"""Statements a unit of work sends on the asyncpg connection under its session, inside its
transaction: the ones a command sends on every call that are not the ORM's bookkeeping (the stock's
and the status's changes, the idempotency key's, the read models', the events'), and an import's
COPY. SQLAlchemy's execution costs several times the statement itself there; errors are wrapped as
SQLAlchemy wraps them, so ``WritePool.run`` treats them alike.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy import TextClause
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.slowlog import SlowStatements


async def driver_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under the session's, inside the transaction the session began, for
    a statement the caller sends on the driver directly (in ``wrapped_like_sqlalchemy``). Reaching
    it is attribute access: the session's connection is the transaction's already (``WritePool``
    binds it), where the async API's two awaits cost 30 microseconds (measured).

    SQLAlchemy's asyncpg adapter sends BEGIN lazily, before its first statement; a statement sent
    here before any would commit on its own, outside the unit of work. So when the adapter has not
    begun yet, it begins here, as its cursor would (``_start_transaction``, its one way to begin,
    private: SQLAlchemy has no public call that sends BEGIN without a statement after it). Then a
    command's first statement can go on the driver too, and SQLAlchemy's later ones, its flush and
    its COMMIT, find the transaction begun, as after a statement of its own."""
    adapted: Any = session.sync_session.connection().connection.dbapi_connection
    driver = adapted.driver_connection
    if adapted._transaction is None:
        try:
            await adapted._start_transaction()
        except adapted.dbapi.Error as exc:
            # The adapter's own exception, which SQLAlchemy wraps only around its statements: wrapped
            # here as there, so WritePool.run classifies a BEGIN on a dead connection (a 503).
            raise DBAPIError("BEGIN", None, exc, connection_invalidated=driver.is_closed()) from exc
    assert isinstance(driver, asyncpg.Connection)
    assert driver.is_in_transaction(), "a statement on the driver must run inside the command's transaction"
    return driver


ASYNCPG_DIALECT = make_url("postgresql+asyncpg://").get_dialect()()


class OnDriver:
    """A Core ``text()`` statement of a unit of work, compiled once for asyncpg and sent on the
    session's driver connection, inside its transaction (``driver_connection``). For the statements
    a command sends on every call that are not the unit of work's bookkeeping (the stock and status
    changes, the idempotency key's, read models, events): through ``session.execute`` one costs
    about 90 microseconds of CPU more (measured), for the compile-cache lookup, the execution
    context and the result wrapping. Errors are SQLAlchemy's, as on the session
    (``wrapped_like_sqlalchemy``); rows are asyncpg's records."""

    def __init__(self, statement: TextClause) -> None:
        compiled = statement.compile(dialect=ASYNCPG_DIALECT)
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())
        self._preceded: dict[str, str] = {}

    async def fetch(self, session: AsyncSession, parameters: Mapping[str, Any]) -> list[asyncpg.Record]:
        """Its rows, after what ``defer`` left (sent first, on its own)."""
        await send_deferred(session)
        return await _on_driver(session, self.sql, self.arguments(parameters))

    async def execute(self, session: AsyncSession, parameters: Mapping[str, Any]) -> None:
        """Send this, with what ``defer`` left in the same round trip (``execute_on_driver``)."""
        await execute_on_driver(session, self.sql, self.arguments(parameters))

    async def defer(self, session: AsyncSession, parameters: Mapping[str, Any]) -> None:
        """Send this with the unit of work's next statement on the driver (``execute_on_driver``),
        or alone just before its commit (``send_deferred``): a round trip fewer. For a command's
        last statement, the read models', whose effects nothing after it in the unit of work reads."""
        await send_deferred(session)  # one at a time
        session.info[DEFERRED] = Deferred(self, self.arguments(parameters))

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        """``parameters``, by name, in the order of the compiled statement's $1...$n."""
        return [parameters[name] for name in self.names]

    def preceded_by(self, statement: str) -> str:
        """One statement that runs ``statement`` (data-modifying, $1...$n, no WITH of its own), then
        this: ``statement`` becomes an unreferenced data-modifying CTE, which PostgreSQL runs to
        completion whatever the main statement reads. Its parameters follow this one's."""
        found = self._preceded.get(statement)
        if found is None:
            shift = len(self.names)
            shifted = re.sub(r"\$(\d+)", lambda number: f"${int(number[1]) + shift}", statement)
            body = self.sql.lstrip()
            if body[: len("WITH ")].upper() == "WITH ":
                found = f"WITH preceding AS ({shifted}),{body[len('WITH') :]}"
            else:
                found = f"WITH preceding AS ({shifted})\n{body}"
            self._preceded[statement] = found
        return found


class Deferred(NamedTuple):
    statement: OnDriver
    arguments: list[Any]


DEFERRED = "orders_api.deferred"  # the session's info key: a statement left for a later round trip


async def send_deferred(session: AsyncSession) -> None:
    """Send what ``OnDriver.defer`` left, alone. ``WritePool.run`` calls this before each commit."""
    deferred = session.info.pop(DEFERRED, None)
    if deferred is not None:
        await _on_driver(session, deferred.statement.sql, deferred.arguments)


async def execute_on_driver(session: AsyncSession, statement: str, arguments: Sequence[Any]) -> None:
    """``statement`` on the session's driver, inside its transaction, with what ``OnDriver.defer``
    left in the same round trip (``OnDriver.preceded_by``)."""
    deferred = session.info.pop(DEFERRED, None)
    if deferred is not None:
        statement, arguments = deferred.statement.preceded_by(statement), [*deferred.arguments, *arguments]
    await _on_driver(session, statement, arguments)


SLOW_STATEMENTS = "orders_api.slow_statements"  # the session's info key: the pool's SlowStatements, if any


async def _on_driver(session: AsyncSession, statement: str, arguments: Sequence[Any]) -> list[asyncpg.Record]:
    driver = await driver_connection(session)
    # SLOW_STATEMENT_MS: SQLAlchemy's hooks (``writes.db``) never see a statement sent here, so it is
    # timed here, failures included, like the session's.
    started = time.perf_counter()
    try:
        async with wrapped_like_sqlalchemy(driver, statement):
            rows: list[asyncpg.Record] = await driver.fetch(statement, *arguments)
            return rows
    finally:
        observe_slow(session, statement, started)


def observe_slow(session: AsyncSession, statement: str, started: float) -> None:
    """SLOW_STATEMENT_MS for a statement sent on the driver (``started``: its ``time.perf_counter()``)."""
    slow: SlowStatements | None = session.info.get(SLOW_STATEMENTS)
    if slow is not None:
        slow.observe(statement, time.perf_counter() - started)


@asynccontextmanager
async def wrapped_like_sqlalchemy(driver: asyncpg.Connection, statement: str) -> AsyncIterator[None]:
    """asyncpg's exceptions wrapped as SQLAlchemy wraps them on the session's statements, so
    ``WritePool.run`` treats a failed COPY like any failed statement: a conflict is retried, a
    timeout or a lost connection becomes a 503. Unwrapped they would escape it as a 500."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DBAPIError(statement, None, exc, connection_invalidated=driver.is_closed()) from exc

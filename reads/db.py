"""The read pool: a raw asyncpg pool, reached only through ``ReadPool.connection()``.

Every acquire is bounded by ``READ_POOL_ACQUIRE_TIMEOUT``: when the pool is exhausted the client
gets a 503 with ``Retry-After`` instead of a request that hangs. A query whose connection dies under
it is retried once on a fresh one. This seam is where pool metrics and load shedding hook in.

With streaming replicas there is one ``ReadPool`` per replica and one on the primary
(``reads.replicas``); a query function sees only a ``Reader``, which a ``ReadPool`` is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg
import asyncpg.connection
import asyncpg.pool

from reads.answers import AnswerCache
from shared.config import Settings
from shared.dbfailures import READ, Failure, PoolNames, classify, exhausted, unavailable
from shared.driver import bounded
from shared.errors import ConnectionLost
from shared.http import decoder_for
from shared.pools import Gate
from shared.roles import read_session
from shared.sides import CURRENT_REVISION_SQL
from shared.slowlog import SlowStatements

T = TypeVar("T")

log = logging.getLogger("orders_api.database")

CLOSE_WITHIN = 5.0  # seconds a closing pool waits for a connection still taken (``ReadPool.close``)


class Reader(Protocol):
    """What a query function runs its statement on: a ``ReadPool``, or the database
    ``reads.replicas`` chose for the request. The arguments are ``ReadPool.find``'s. ``answers``
    are the read side's kept answers (``reads.answers``), one store for all its databases."""

    answers: AnswerCache

    async def find(
        self, sql: str, view: type[T], *args: object, wait: float | None = None, shed: bool = True, replan: bool = False
    ) -> T | None: ...

    async def value(
        self, sql: str, view: type[T], *args: object, wait: float | None = None, shed: bool = True, replan: bool = False
    ) -> T: ...


@dataclass(frozen=True)
class Database:
    """Where a read pool connects, how many connections it keeps and opens at most, and its names."""

    dsn: str
    names: PoolNames
    min_size: int
    max_size: int

    @classmethod
    def of(cls, settings: Settings) -> Database:
        """The read database: READ_DATABASE_URL (one host), else DATABASE_URL."""
        return cls(settings.read_dsn, READ, settings.read_pool_min_size, settings.read_pool_max_size)


async def create_read_pool(settings: Settings, database: Database) -> Any:
    """Open the asyncpg pool; ``min_size`` connections are opened (warmed) before it returns.

    Behind PgBouncer the session settings are the read role's defaults (``shared.roles``), so the
    pool first checks, on one connection, that they hold: a misconfigured role stops start-up."""
    session = read_session(settings)
    pool = await asyncpg.create_pool(
        database.dsn,
        min_size=database.min_size,
        max_size=database.max_size,
        max_inactive_connection_lifetime=settings.read_pool_max_inactive_lifetime,
        # PgBouncer in transaction mode cannot keep a prepared statement across transactions.
        statement_cache_size=0 if settings.pgbouncer else settings.read_statement_cache_size,
        timeout=settings.read_pool_acquire_timeout,
        # Every wait on the database bounded, and a statement given up closes its connection.
        **bounded(settings.read_statement_timeout_ms),
        # Run once on each new connection. With the log off nothing is installed, so nothing is timed.
        init=_log_slow_statements(database.names, settings.slow_statement_ms) if settings.slow_statement_ms else None,
        reset=_keep_session,
        server_settings=session.startup_parameters(settings.pgbouncer),
    )
    if settings.pgbouncer:
        try:
            async with pool.acquire(timeout=settings.read_pool_acquire_timeout) as connection:
                session.check(await connection.fetch(session.check_sql))
        except BaseException:
            await pool.close()
            raise
    return pool


async def _keep_session(connection: Any) -> None:
    """The read pool's reset on release: nothing. asyncpg's default sends ``RESET ALL``, ``UNLISTEN *``
    and an advisory-lock release on every release, a second round trip for every query (about a
    seventh of a read, measured). The read side never changes its session: no SET, no LISTEN, no
    advisory lock, no transaction left open (asyncpg rolls one back before calling this anyway).
    Behind PgBouncer, RESET ALL even cleared application_name for the next query."""


def _log_slow_statements(names: PoolNames, threshold_ms: int) -> Callable[[Any], Awaitable[None]]:
    """The pool's ``init`` hook: each connection times its queries (``SlowStatements.observe_query``)."""
    slow = SlowStatements(names.pool, threshold_ms)

    async def init(connection: Any) -> None:
        connection.add_query_logger(slow.observe_query)

    return init


# The private names ``_release_in_place`` takes from asyncpg. An asyncpg without them (a later
# release may rename them) gives every connection back through ``Pool.release``, its shield and all.
IN_PLACE = all(
    hasattr(owner, name)
    for owner, name in (
        (asyncpg.pool.PoolConnectionProxy, "_con"),
        (asyncpg.pool.PoolConnectionProxy, "_holder"),
        (asyncpg.pool.PoolConnectionHolder, "release"),
        (asyncpg.connection.Connection, "_on_release"),
    )
)


async def _release_in_place(connection: Any) -> None:
    """asyncpg's ``Pool.release`` without the task it runs the release in.

    ``Pool.release`` wraps its holder's release in ``asyncio.shield``, so that a caller cancelled
    meanwhile still gives the connection back: a task, and two more turns of the event loop, on
    every query. In process that was 9 µs of a product read's 72 (the README's issue 20, round 10).
    A read connection in no transaction has nothing to roll back, and this pool's reset does nothing
    (``_keep_session``), so the holder's release runs to its end without suspending: a cancellation
    cannot fall between its steps, and it is awaited here, in the caller's task. A connection left
    in a transaction goes through ``Pool.release`` and its shield (``ReadPool.release``).

    The two steps are ``Pool.release``'s own, after its checks (the proxy is this pool's, not
    released yet: ``Checkout`` releases each connection once): the connection's housekeeping, then
    its holder's release. Both are asyncpg's private names, so the tests pin them down: every read
    goes this way, and ``tests/reads/test_pool.py`` checks each connection comes back."""
    connection._con._on_release()
    await connection._holder.release(None)


def _clean(connection: Any) -> bool:
    """Whether a connection (asyncpg's own, not the pool's proxy, whose every method is a call
    more) can go back in place: open, and in no transaction."""
    return connection is not None and not connection.is_closed() and not connection.is_in_transaction()


def _is_dead(connection: Any) -> bool:
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:  # the pool took it back already: it closed under the statement
        return True


class ReadPool:
    """The read pool: a raw asyncpg pool behind a bounded queue (``shared.pools.Gate``)."""

    def __init__(self, pool: Any, settings: Settings, database: Database) -> None:
        self.pool = pool
        self.database = database
        self.names = database.names
        self.timeout = settings.read_pool_acquire_timeout
        self.gate = Gate(self.names, capacity=database.max_size, max_waiting=settings.read_pool_max_waiting)
        self.answers = AnswerCache()  # with replicas, the primary's pool keeps them for all (``reads.balancing``)
        # asyncpg's query loggers do not see prepared statements: ``replan`` times its own.
        self.slow = SlowStatements(self.names.pool, settings.slow_statement_ms) if settings.slow_statement_ms else None

    @classmethod
    async def open(cls, settings: Settings, database: Database | None = None) -> ReadPool:
        """The pool on ``database`` (by default the read database), with its ``min_size``
        connections opened: an unreachable database raises."""
        database = database or Database.of(settings)
        return cls(await create_read_pool(settings, database), settings, database)

    def connection(self, wait: float | None = None, *, shed: bool = True) -> Checkout:
        """One connection for one round trip or batch (``async with``), released even when the
        request is cancelled.

        The acquire waits ``wait`` seconds at most (default ``READ_POOL_ACQUIRE_TIMEOUT``), and is
        refused at once when ``READ_POOL_MAX_WAITING`` requests already wait, unless ``shed`` is
        False. Every driver failure leaves as a 503 (``shared.dbfailures``): ``ConnectionLost``
        when the connection died under the statement, which a caller may retry on a fresh one."""
        return Checkout(self, self.timeout if wait is None else wait, shed)

    async def release(self, connection: Any) -> None:
        # Release fails on a connection that died (asyncpg checks it and rolls back a transaction
        # left open); the pool has then closed it, and the request's own outcome (a result, or its
        # error) stands.
        try:
            if IN_PLACE and _clean(connection._con):  # None once the pool took it back (it closed)
                await _release_in_place(connection)
            else:
                await self.pool.release(connection)
        except Exception as exc:
            log.warning("%s: releasing a connection failed: %s: %s", self.names.pool, type(exc).__name__, exc)

    async def find(
        self, sql: str, view: type[T], *args: object, wait: float | None = None, shed: bool = True, replan: bool = False
    ) -> T | None:
        """Run ``sql`` (one round trip) whose one value is ``view`` as JSON text; None for no row.

        A query is safe to repeat, so one whose connection died under it runs once more on a fresh
        connection: a terminated backend or a restarted server costs a retry, not an error.

        ``replan`` is for a statement whose best plan depends on its values, not only on which are
        given (how many rows a pattern or a filter matches): PostgreSQL would switch a cached statement
        to a generic plan, which cannot know. It runs as the unnamed statement, which is never cached,
        so it is planned with its values every time, for one more round trip."""
        # One coroutine, no helper per attempt: each frame of a request's chain runs again at each of
        # its resumptions (the wait for a place, the statement), so a layer less is calls less.
        checkout = self.connection(wait, shed=shed)
        for attempt in (1, 2):
            try:
                async with checkout as connection:
                    if replan:
                        text = await self._replanned(connection, sql, args)
                    else:
                        text = await connection.fetchval(sql, *args)
                break
            except ConnectionLost:
                if attempt == 2:
                    raise
        return None if text is None else decoder_for(view).decode(text)

    async def _replanned(self, connection: Any, sql: str, args: tuple[object, ...]) -> str | None:
        started = time.perf_counter()
        try:
            text: str | None = await (await connection.prepare(sql, name="")).fetchval(*args)
        finally:
            if self.slow:
                self.slow.observe(sql, time.perf_counter() - started)
        return text

    async def value(
        self, sql: str, view: type[T], *args: object, wait: float | None = None, shed: bool = True, replan: bool = False
    ) -> T:
        """``find`` for a statement that always yields its value (an aggregate or a list)."""
        found = await self.find(sql, view, *args, wait=wait, shed=shed, replan=replan)
        if found is None:
            raise LookupError(f"statement returned no value, expected {view}: {sql}")
        return found

    async def ping(self) -> None:
        async with self.connection(shed=False) as connection:
            await connection.fetchval("SELECT 1")

    async def schema_revision(self) -> str | None:
        async with self.connection(shed=False) as connection:
            try:
                revision: str | None = await connection.fetchval(CURRENT_REVISION_SQL)
            except asyncpg.UndefinedTableError:
                return None
        return revision

    async def close(self) -> None:
        """Close every connection. One still taken is waited for ``CLOSE_WITHIN`` seconds at most,
        then cut: a shutdown cancels the requests left after SHUTDOWN_TIMEOUT, and each gives its
        connection back as it ends, so only a connection lost to a bug could hold the close up, and
        the process must stop all the same (asyncpg's ``Pool.close`` waits for ever)."""
        try:
            async with asyncio.timeout(CLOSE_WITHIN):
                await self.pool.close()
        except TimeoutError:
            # asyncpg terminates every connection when its close is cancelled; said here once more.
            self.pool.terminate()
            log.warning("%s: a connection was still taken %s s into closing: all cut", self.names.pool, CLOSE_WITHIN)

    def size(self) -> int:
        size: int = self.pool.get_size()
        return size


class Checkout:
    """``ReadPool.connection()``: a place at the gate, then a connection, both given back on exit.
    A class rather than three nested ``asynccontextmanager`` generators (the pool's, the gate's and
    the failure handling's): it runs on every query. With the gate's own waiters, a query's way to
    its connection and back (16 queries on 10 connections) went from 17 to 8 µs of CPU (the
    README's issue 20, round 6)."""

    __slots__ = ("connection", "pool", "shed", "wait")

    def __init__(self, pool: ReadPool, wait: float, shed: bool) -> None:
        self.pool = pool
        self.wait = wait
        self.shed = shed

    async def __aenter__(self) -> Any:
        pool = self.pool
        await pool.gate.enter(self.wait, shed=self.shed)
        # The gate admits no more holders than the pool has connections, so this never waits
        # for another request: at most for a connection being opened, which the pool's connect
        # timeout (READ_POOL_ACQUIRE_TIMEOUT) bounds. No timeout here: asyncpg would run the
        # acquire as a task under wait_for, a task on every query.
        try:
            self.connection = await pool.pool.acquire()
        except TimeoutError:
            pool.gate.leave()
            raise exhausted(pool.names, pool.timeout) from None
        except Exception as exc:
            pool.gate.leave()
            # Opening a connection failed: whatever the driver said, the database is not there for us.
            raise unavailable(classify(exc) or Failure.UNAVAILABLE, pool.names, exc) from None
        except BaseException:
            pool.gate.leave()
            raise
        return self.connection

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        pool, connection = self.pool, self.connection
        try:
            if isinstance(exc, Exception):
                failure = classify(exc, connection_closed=_is_dead(connection))
                if failure is not None:
                    if failure is Failure.LOST and not _is_dead(connection):
                        connection.terminate()  # never hand a half-dead connection to the next request
                    raise unavailable(failure, pool.names, exc) from None
        finally:
            try:
                await pool.release(connection)
            finally:
                pool.gate.leave()

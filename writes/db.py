"""The write pool: a small SQLAlchemy AsyncEngine, behind a bounded queue, that runs every command.

Small on purpose: writes are short transactions, and every write connection is one PostgreSQL
backend that the read side cannot use. ``WRITE_POOL_SIZE`` x workers must fit ``max_connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar, cast

import asyncpg
import sqlalchemy.exc
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool
from starlette.requests import Request

from shared.config import Settings, asyncpg_dsn
from shared.consistency import lsn_from_text
from shared.dbfailures import WRITE, Failure, classify, exhausted, unavailable
from shared.driver import bounded
from shared.errors import ApiError
from shared.pools import Admission, Gate
from shared.roles import write_session
from shared.sides import CURRENT_REVISION_SQL, resources
from shared.slowlog import SlowStatements
from writes.ondriver import SLOW_STATEMENTS, send_deferred

T = TypeVar("T")

log = logging.getLogger("orders_api.database")


SETTINGS = "settings"  # the session's info key of the Settings (``WritePool`` sets it)
# The session's info key a unit of work sets when its commit leaves events to position (it appended
# some): ``WritePool.run`` then asks for a positioning round, and answers without waiting for it.
POSITIONS_EVENTS = "orders_api.positions_events"


def driver_connect_args(settings: Settings) -> dict[str, Any]:
    """``asyncpg.connect``'s arguments for a write connection: the pool's, and the positioner's own."""
    args: dict[str, Any] = {
        # asyncpg's connect timeout defaults to 60 s; a dead server must not hang a request that long.
        "timeout": settings.write_pool_timeout,
        # Nor a server that stops answering: every wait bounded, and a statement given up closes.
        **bounded(settings.write_statement_timeout_ms),
        # Behind PgBouncer, statement_timeout is the write role's default instead (shared.roles).
        "server_settings": write_session(settings).startup_parameters(settings.pgbouncer),
    }
    if settings.pgbouncer:
        # In transaction pooling a prepared statement may land on another server connection.
        args["statement_cache_size"] = 0
    return args


def connect_args(settings: Settings) -> dict[str, Any]:
    """The engine's: the driver's, and what SQLAlchemy's asyncpg adapter takes (its statement cache,
    and unique names for the statements it still prepares behind PgBouncer)."""
    args = driver_connect_args(settings)
    if settings.pgbouncer:
        args["prepared_statement_cache_size"] = 0
        args["prepared_statement_name_func"] = lambda: f"__orders_api_{uuid.uuid4().hex}__"
    return args


def asyncpg_engine(url: str, connect: dict[str, Any], **engine: Any) -> AsyncEngine:
    """An engine on SQLAlchemy's asyncpg dialect whose connections asyncpg opens from ``url`` itself.

    SQLAlchemy's dialect would hand the URL's query to ``asyncpg.connect`` as keywords, and asyncpg
    refuses libpq's (``sslmode=require``: a TypeError), so no URL could ask for TLS. asyncpg reads
    them from the URL (``sslmode``, ``sslrootcert``, ``host=/socket/dir``...), as the read pool's
    and every other connection's URL here already is. ``connect`` is ``asyncpg.connect``'s keywords
    and the adapter's (``connect_args``)."""
    dsn = asyncpg_dsn(url)

    def creator() -> Any:
        # SQLAlchemy's own async_creator, with the adapter's arguments passed along (as its docs say).
        dbapi = created.sync_engine.dialect.dbapi
        assert dbapi is not None
        return dbapi.connect(dsn, async_creator_fn=asyncpg.connect, **connect)

    # The URL names the dialect only: connections come from ``creator``.
    created = create_async_engine("postgresql+asyncpg://", creator=creator, **engine)
    return created


def create_write_engine(settings: Settings) -> AsyncEngine:
    engine = asyncpg_engine(
        settings.write_url,
        connect_args(settings),
        pool_size=settings.write_pool_size,
        max_overflow=settings.write_pool_max_overflow,
        pool_timeout=settings.write_pool_timeout,
        pool_recycle=settings.write_pool_recycle,
    )
    if settings.write_pool_pre_ping:
        event.listen(engine.sync_engine, "checkout", _ping)
        event.listen(engine.sync_engine, "checkin", _returned)
    return engine


# WRITE_POOL_PRE_PING tests a connection that sat idle in the pool, where a server restart, an idle
# timeout or a dropped network leaves it dead. One given back less than this many seconds ago was
# working a moment ago: under load every checkout is such a one, and testing it again would cost every
# command a round trip (about 90 microseconds of CPU here, 6 % of a pay's rate, measured). HikariCP
# skips its test the same way, for 500 ms (aliveBypassWindowMs). A connection whose server closed
# it meanwhile is still caught, at no cost: the driver saw the socket close (``is_closed``).
PING_BYPASS = 0.5  # seconds
RETURNED = "orders_api.returned"  # the pool entry's info key: when the connection was last given back


def _returned(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[RETURNED] = time.monotonic()


def _ping(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: object) -> None:
    """WRITE_POOL_PRE_PING: test a connection as the pool hands it out, in one round trip, unless it
    was given back less than ``PING_BYPASS`` seconds ago and its socket is still open.

    SQLAlchemy's own pre-ping costs three on asyncpg (BEGIN, a statement, ROLLBACK: its statement
    is prepared, and behind PgBouncer a prepared statement needs a transaction). A simple-protocol
    query needs neither: one round trip, the same test. A connection that fails it is replaced,
    as SQLAlchemy's pre-ping does (DisconnectionError: the pool opens another, up to three times)."""
    returned = record.info.get(RETURNED)
    if (
        returned is not None
        and time.monotonic() - returned < PING_BYPASS
        and not dbapi_connection.driver_connection.is_closed()
    ):
        return
    try:
        dbapi_connection.run_async(lambda driver: driver.execute("SELECT 1"))
    except Exception as exc:
        raise sqlalchemy.exc.DisconnectionError(f"the pre-ping failed: {type(exc).__name__}: {exc}") from exc


class WritePool:
    """The write pool: a small SQLAlchemy engine behind a bounded queue (``shared.pools.Gate``).

    Every command runs through ``run``: the one place a write transaction is opened."""

    names = WRITE

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.timeout = settings.write_pool_timeout
        self.gate = Gate(
            WRITE,
            capacity=settings.write_pool_size + settings.write_pool_max_overflow,
            max_waiting=settings.write_pool_max_waiting,
        )
        # Views are built from objects after commit; expiring them would force a lazy reload. Every
        # session carries the settings: what a unit of work needs of them, it reads there.
        # SLOW_STATEMENT_MS: the session's statements are timed by SQLAlchemy's hooks (``open``), the
        # ones it sends on the driver by ``writes.ondriver``, with this one log.
        self.slow = SlowStatements(WRITE.pool, settings.slow_statement_ms) if settings.slow_statement_ms else None
        info: dict[Any, Any] = {SETTINGS: settings}
        if self.slow is not None:
            info[SLOW_STATEMENTS] = self.slow
        self.sessions = async_sessionmaker(engine, expire_on_commit=False, info=info)
        self.tasks: list[asyncio.Task[None]] = []
        # Queries may read a replica only when the read side has its own database.
        self.marks_commits = settings.read_database_url is not None
        # Installed by the write side (``writes.events.Positioner``): called after each commit that
        # appended events, it asks for a round that positions them; it never waits.
        self.events_committed: Callable[[], None] | None = None

    @classmethod
    async def open(cls, settings: Settings) -> WritePool:
        """The pool, with ``WRITE_POOL_SIZE`` connections opened so the first requests do not pay for
        connecting (and an unreachable database stops start-up). Behind PgBouncer one of them also
        checks that the write role's defaults hold (``shared.roles``): if not, start-up stops."""
        pool = cls(create_write_engine(settings), settings)
        if pool.slow is not None:
            # Off, nothing is installed, so nothing is timed.
            _log_slow_statements(pool.engine, pool.slow)
        try:
            async with AsyncExitStack() as stack:
                for _ in range(settings.write_pool_size):
                    connection = await stack.enter_async_context(pool.engine.connect())
                    await connection.exec_driver_sql("SELECT 1")
                if settings.pgbouncer:
                    session = write_session(settings)
                    session.check((await connection.exec_driver_sql(session.check_sql)).all())
        except BaseException:
            await pool.close()
            raise
        return pool

    def keep_running(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``work`` (a task on this pool, such as the idempotency purge) until the pool closes."""
        task = asyncio.create_task(work, name=name)
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        try:
            for task in self.tasks:
                task.cancel()
                # Awaited, so a task is not cut off by the engine's disposal mid-statement, and a
                # task that died of a bug says so here.
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await self.engine.dispose()

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]], *, shed: bool = True) -> T:
        """Run ``work`` as one unit of work: one transaction, committed when ``work`` returns and
        rolled back when it raises. It is retried whole on a serialization failure or deadlock,
        and the database's ways of failing (``shared.dbfailures``) become 503s a client can retry.
        ``shed=False`` waits its turn even when the queue is full (the readiness probe)."""
        result, _ = await self._run(work, shed=shed, mark=False)
        return result

    async def run_marked(
        self, work: Callable[[AsyncSession], Awaitable[T]], admission: Admission | None = None
    ) -> tuple[T, int | None]:
        """``run``, and where the primary's WAL stood right after the commit (``shared.consistency``)
        when queries may read replicas (READ_DATABASE_URL set); else None, at no cost. With the
        command's ``admission`` (``Gate.admit``), its first attempt is not refused for a full queue."""
        return await self._run(work, shed=True, mark=self.marks_commits, admission=admission)

    async def _run(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        shed: bool,
        mark: bool,
        admission: Admission | None = None,
    ) -> tuple[T, int | None]:
        for attempt in range(1, ATTEMPTS + 1):
            entry, admission = admission, None  # the admission counts for the first attempt only
            try:
                async with (
                    self.gate.slot(self.timeout, shed=shed, admission=entry),
                    self.engine.connect() as connection,
                ):
                    async with self.sessions(bind=connection) as session, session.begin():
                        result = await work(session)
                        await send_deferred(session)  # the read models', when no event took it along
                    # Committed: its events (if any) are positioned by the next round, which this
                    # command does not wait for (``reads.events`` waits for them, reading the feed).
                    if self.events_committed is not None and session.info.get(POSITIONS_EVENTS):
                        self.events_committed()
                    # The position is read on the same connection, after the commit.
                    return result, await _wal_position(connection) if mark else None
            except sqlalchemy.exc.TimeoutError:
                raise exhausted(WRITE, self.timeout) from None
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

    async def ping(self) -> None:
        await self.run(_select_one, shed=False)

    async def schema_revision(self) -> str | None:
        return await self.run(_revision, shed=False)

    def size(self) -> int:
        queue = cast(QueuePool, self.engine.pool)
        return queue.checkedin() + queue.checkedout()


def _log_slow_statements(engine: AsyncEngine, slow: SlowStatements) -> None:
    """Times every statement on the engine's connections, including those that fail (a statement
    that hit WRITE_STATEMENT_TIMEOUT_MS is the slowest of all)."""

    def started(connection: Connection, *_: object) -> None:
        # One statement at a time runs on a connection, so one start time per connection is enough.
        connection.info[STATEMENT_STARTED] = time.perf_counter()

    def finished(connection: Connection, _cursor: object, statement: str, *_: object) -> None:
        slow.observe(statement, time.perf_counter() - connection.info.pop(STATEMENT_STARTED))

    def failed(context: ExceptionContext) -> None:
        begun = None if context.connection is None else context.connection.info.pop(STATEMENT_STARTED, None)
        if begun is not None and context.statement is not None:
            slow.observe(context.statement, time.perf_counter() - begun)

    event.listen(engine.sync_engine, "before_cursor_execute", started)
    event.listen(engine.sync_engine, "after_cursor_execute", finished)
    event.listen(engine.sync_engine, "handle_error", failed)


STATEMENT_STARTED = "orders_api.statement_started"

# The insert position is past every record already written, the commit's included (the write and
# flush positions may trail it when synchronous_commit is off).
WAL_POSITION = "SELECT pg_current_wal_insert_lsn()::text"


async def _outside_transaction(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under ``connection``, for statements that each commit on their own
    (the ORM's connection would send BEGIN first)."""
    driver = (await connection.get_raw_connection()).driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return driver


async def wal_position(driver: asyncpg.Connection) -> int:
    """Where the primary's WAL stands now (``WAL_POSITION``): one round trip."""
    return lsn_from_text(await driver.fetchval(WAL_POSITION))


async def _wal_position(connection: AsyncConnection) -> int | None:
    """The primary's WAL position after a command's commit, on the driver directly. The command has
    committed whatever happens here, so a failure costs its response the token, never a 503 that
    would invite a second commit."""
    try:
        return await wal_position(await _outside_transaction(connection))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("write pool: the commit's WAL position could not be read: %s: %s", type(exc).__name__, exc)
        return None


async def _select_one(session: AsyncSession) -> None:
    await session.execute(text("SELECT 1"))


async def _revision(session: AsyncSession) -> str | None:
    try:
        async with session.begin_nested():
            revision: str | None = await session.scalar(text(CURRENT_REVISION_SQL))
    except ProgrammingError:  # no alembic_version table: never migrated
        return None
    return revision


ATTEMPTS = 3


async def add_unique(session: AsyncSession, row: object, taken: ApiError) -> None:
    """Insert ``row`` now; a unique violation (the only constraint a valid command can break) is ``taken``."""
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        raise taken from None


async def in_batches(
    pool: WritePool, purge: Callable[[AsyncSession, int], Awaitable[int]], *, batch: int, batches: int
) -> int:
    """``purge(session, batch)`` (removing up to ``batch`` rows, returning how many), a transaction
    each, until a batch comes back short or ``batches`` ran; how many in all. The pool's background
    purges (``writes.idempotency``, ``writes.events``) run this way, so none holds locks for long."""
    done = 0
    for _ in range(batches):
        count = await pool.run(lambda session: purge(session, batch))
        done += count
        if count < batch:
            break
    return done


async def periodically(every: float, work: Callable[[], Awaitable[object]], what: str) -> None:
    """``work`` now, then every ``every`` seconds, for as long as the pool is open (its ``close``
    cancels the task this runs in, ``WritePool.keep_running``). The first round runs as the process
    starts: what it publishes (the oldest event's age) is there from the first scrape."""
    while True:
        try:
            await work()
        except ApiError as exc:
            # A busy pool or an absent database: the commands come first, and the next round does
            # what this one left.
            log.warning("%s skipped this round: %s", what, exc)
        except DBAPIError as exc:
            # The database refused the statement: a schema not at this release's head (migrated down
            # under a running process; /readyz says so). Said every round, and the next one tries again.
            log.warning("%s failed this round: %s", what, str(exc.orig).splitlines()[0])
        await asyncio.sleep(every)


def write_pool(request: Request) -> WritePool:
    pool = resources(request).pools["writes"]
    assert isinstance(pool, WritePool)
    return pool

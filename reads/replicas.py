"""Streaming replicas and the monitor that tells the read side how far behind each one is.

READ_DATABASE_URL may name several hosts (libpq's multi-host form), each a streaming replica with a
read pool of its own (``reads.balancing`` chooses among them per request). One task per process, the
``Monitor``, reads every ``PROBE_INTERVAL`` where the primary's WAL stands and how far each replica
has replayed it, on connections of its own (``Probe``). While a query waits for a replica to replay
past its ``Consistency-Token`` the monitor reads just the replay positions, every ``POLL_GAP``: one
small query per replica however many queries wait.

A replica replays a migration after the primary: until it is at the revision this process expects
(``Monitor.schema_head``) it lacks what the queries read, and it is out of service.

A replica's lag is how long ago the primary stood where the replica stands now (0 when it has
replayed the primary's last known position). ``now() - pg_last_xact_replay_timestamp()`` alone
would mislead: on a quiet primary the last commit is old, so a replica lacking only the newest
commit would read as minutes behind and be skipped. It serves only past the history kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from reads.db import Database, ReadPool
from shared.config import Settings, asyncpg_dsn
from shared.consistency import lsn_from_text
from shared.dbfailures import PoolNames, classify
from shared.driver import bounded
from shared.errors import ServiceUnavailable
from shared.metrics import REPLICA_HEALTHY, REPLICA_LAG_SECONDS, publish_pools
from shared.roles import read_session
from shared.sides import CURRENT_REVISION_SQL

log = logging.getLogger("orders_api.replicas")

PROBE_INTERVAL = 0.2  # seconds between rounds: lag and health are this fresh
PROBE_TIMEOUT = 0.5  # seconds a probe, or opening the monitor's connection for it, may take
POLL_GAP = 0.005  # seconds between reads of the replay positions while a query waits for them
HISTORY = 300  # the primary's positions kept: a minute of rounds, the longest lag measured exactly

# Everything a round needs from a replica, in one round trip. Its migration revision too: a replica
# replays a migration after the primary, and until then it lacks what this process's queries read.
# A database never migrated has no alembic_version, and the statement fails (UndefinedTableError):
# no guard in the statement helps, since its table names are resolved when it is parsed, before a
# to_regclass() could run, and the functions that run a query given as text need an XML-enabled server.
REPLICA_PROBE = f"""
    SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,
           extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
           ({CURRENT_REVISION_SQL})
"""  # noqa: S608 - composed of constants only
REPLAYED = "SELECT pg_last_wal_replay_lsn()::text"
# The position a command's Consistency-Token carries (writes.db), and the WAL's page size (see covers).
PRIMARY_POSITION = "SELECT pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::int"
IN_RECOVERY = "SELECT pg_is_in_recovery()"

UNREACHABLE = "unreachable"
NOT_A_STANDBY = "is not a standby (pg_is_in_recovery() is false)"
POOL_FAILED = "has no read pool: opening it failed (the log says why)"
LACKS_SCHEMA = (
    "lacks a table, column or function a query needs, which the primary has: waiting for it to replay the migration"
)
# What a query meets on a replica that has not replayed a migration yet (SQLSTATE 42P01, 42703,
# 42883, 42704). On the primary the same error is a bug, and a 500.
SCHEMA_BEHIND = (
    asyncpg.UndefinedTableError,
    asyncpg.UndefinedColumnError,
    asyncpg.UndefinedFunctionError,
    asyncpg.UndefinedObjectError,
)
# Only what a probe can meet from the driver or the network: anything else is a bug, for the round's log.
PROBE_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

# The longest WAL page header (a segment's first page). See covers.
LONG_PAGE_HEADER = 40


def covers(replayed: int, position: int, wal_page: int) -> bool:
    """Whether a replica that has replayed to ``replayed`` has every WAL record written before ``position``.

    A position read at a page boundary (``pg_current_wal_insert_lsn()``) points past the next page's
    header, while a replica that replayed up to the boundary reports the boundary itself: on a quiet
    primary it would never get there. No record fits between a boundary and the end of its header."""
    return replayed >= position or (replayed % wal_page == 0 and position - replayed <= LONG_PAGE_HEADER)


def schema_behind(revision: str | None, head: str) -> str:
    found = "has no schema" if revision is None else f"schema at {revision}"
    # Behind (a migration not replayed yet) or ahead (this process is older than the schema): the
    # queries of this process may fail there either way.
    return f"{found}, this process expects {head}: out of service until they match"


def replica_names(name: str, number: int) -> PoolNames:
    return PoolNames(
        f"read pool {name}", f"READ_DATABASE_URL (host {number})", "READ_POOL_MAX_SIZE", "READ_POOL_ACQUIRE_TIMEOUT",
        "READ_POOL_MAX_WAITING", "READ_STATEMENT_TIMEOUT_MS", f"read-{name}",
    )  # fmt: skip


def connect_options(settings: Settings) -> dict[str, Any]:
    """A connection of the monitor's own: the read session, named for what it does."""
    session = read_session(settings).startup_parameters(settings.pgbouncer)
    return {
        "server_settings": {**session, "application_name": "orders-api:monitor"},
        "statement_cache_size": 0,
        **bounded(settings.read_statement_timeout_ms),
    }


async def is_standby(settings: Settings, dsn: str) -> bool | None:
    """``pg_is_in_recovery()`` on ``dsn``, asked once at start-up; None when the database does not
    answer. Any other failure (a wrong password, no such database) raises."""
    try:
        connection = await asyncpg.connect(dsn, timeout=settings.read_pool_acquire_timeout, **connect_options(settings))
    except Exception as exc:
        if classify(exc) is None:
            raise
        log.warning("READ_DATABASE_URL does not answer at start-up: %s: %s", type(exc).__name__, exc)
        return None
    try:
        return bool(await connection.fetchval(IN_RECOVERY))
    finally:
        await connection.close()


class Probe:
    """The monitor's own connection to one database, outside the read pools: a pool busy with
    requests never makes its database look down, and the probes never count as requests in the
    pools' metrics."""

    def __init__(self, name: str, dsn: str, settings: Settings) -> None:
        self.name = name
        self.dsn = dsn
        self.options = connect_options(settings)
        self.connection: Any = None
        self.answering = True  # whether the last probe was answered: a failure is logged on the change only

    async def ask(self, sql: str) -> Any:
        """One row of ``sql`` (the connection opened first if there is none), within PROBE_TIMEOUT;
        None when the database does not answer, and the connection is dropped."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                if self.connection is None:
                    self.connection = await asyncpg.connect(self.dsn, **self.options)
                row = await self.connection.fetchrow(sql)
        except asyncpg.UndefinedTableError:
            # It answers, on a sound connection, but lacks a table the statement reads: the caller's
            # finding, not a failure of the database.
            self.answering = True
            raise
        except PROBE_FAILURES as exc:
            if self.answering:
                why = str(exc) or f"no answer within {PROBE_TIMEOUT} s"
                log.warning("%s: probe failed: %s: %s", self.name, type(exc).__name__, why)
            self.answering = False
            if self.connection is not None:
                self.connection.terminate()  # possibly cut mid-statement by the timeout: never reused
                self.connection = None
            return None
        self.answering = True
        return row

    async def close(self) -> None:
        if self.connection is not None:
            try:
                await self.connection.close(timeout=PROBE_TIMEOUT)
            except PROBE_FAILURES as exc:  # asyncpg has aborted it then: it is closed either way
                log.info("%s: closing the probe's connection: %s: %s", self.name, type(exc).__name__, exc)
            self.connection = None


class Replica:
    """One streaming replica: its read pool (None until it could be opened), the monitor's ``Probe``
    of it, and what the monitor last found. Named ``replica-1``, ``replica-2``... in READ_DATABASE_URL's
    order, in messages, metrics and /readyz: never by its host."""

    def __init__(self, number: int, url: str, settings: Settings) -> None:
        self.name = f"replica-{number}"
        names = replica_names(self.name, number)
        self.database = Database(asyncpg_dsn(url), names, settings.read_pool_min_size, settings.read_pool_max_size)
        self.settings = settings
        self.max_lag = settings.read_replica_max_lag_ms / 1000
        self.pool: ReadPool | None = None
        self.probe = Probe(self.name, self.database.dsn, settings)
        self.problem: str | None = "not probed yet"  # None: it answers, as a standby, with a pool
        self.replayed: int | None = None
        self.replay_age: float | None = None  # seconds since its last replayed commit, by its clock
        self.lag = 0.0
        self._lag_series = REPLICA_LAG_SECONDS.labels(self.name)
        self._healthy_series = REPLICA_HEALTHY.labels(self.name)

    @property
    def in_service(self) -> bool:
        """Answers, as a standby, with its pool open: it may serve a query with a token."""
        return self.problem is None

    @property
    def fresh(self) -> bool:
        """Serves queries without a token: it answers, within READ_REPLICA_MAX_LAG_MS."""
        return self.problem is None and self.lag <= self.max_lag

    def has_replayed(self, position: int, wal_page: int) -> bool:
        """Serves a query whose token is ``position``, however far it lags otherwise."""
        return self.problem is None and self.replayed is not None and covers(self.replayed, position, wal_page)

    def load(self) -> int:
        return 0 if self.pool is None else self.pool.gate.in_use + self.pool.gate.waiting

    def condition(self) -> str | None:
        """Why it serves less than it could, for /readyz; None when it is well."""
        if self.problem is not None:
            return f"{self.name} {self.problem}"
        if not self.fresh:
            ms = self.settings.read_replica_max_lag_ms
            return f"{self.name} lagging {self.lag:.1f} s (READ_REPLICA_MAX_LAG_MS={ms})"
        return None

    def found(self, problem: str | None) -> None:
        """What a probe found; a change is logged once, not every round."""
        if problem != self.problem:
            if problem is None:
                log.info("%s: serving queries", self.name)
            else:
                log.warning("%s %s", self.name, problem)
        self.problem = problem

    def set_aside(self, failure: ServiceUnavailable) -> None:
        """A query failed here: no request chooses it until the monitor's next round finds it well."""
        self.found(f"failed a query ({failure})")

    def set_aside_for_schema(self, missing: asyncpg.PostgresError) -> None:
        """A query met something this replica lacks and the primary has: it has not replayed a
        migration yet. No request chooses it until the monitor finds it at the schema head."""
        log.warning("%s: a query failed, its schema is behind: %s: %s", self.name, type(missing).__name__, missing)
        self.found(LACKS_SCHEMA)

    async def open_pool(self) -> None:
        """Its read pool; a replica that does not answer is left without one, for the monitor to retry.
        Anything else (a wrong password, a misconfigured role behind PgBouncer) raises."""
        try:
            self.pool = await ReadPool.open(self.settings, self.database)
        except Exception as exc:
            if classify(exc) is None:
                raise
            log.warning("%s unreachable: its read pool could not be opened: %s: %s", self.name, type(exc).__name__, exc)
            self.problem = UNREACHABLE
            self.probe.answering = False  # said now: the probes that fail alike are not logged again

    def publish(self) -> None:
        self._lag_series.set(self.lag)
        self._healthy_series.set(1 if self.fresh else 0)

    async def close(self) -> None:
        await self.probe.close()
        if self.pool is not None:
            await self.pool.close()


def lag(history: Sequence[tuple[float, int]], replayed: int, replay_age: float, now: float, wal_page: int) -> float:
    """How long ago the primary stood at ``replayed`` or before, by ``history`` (oldest first, of
    (monotonic time, the primary's position then)): 0 when that is its newest position. The newest
    such moment counts, since whatever the replica lacks was written after it. Past the history:
    ``replay_age`` (the age of its last replayed commit), when that is longer than the history."""
    for n, (at, position) in enumerate(reversed(history)):
        if covers(replayed, position, wal_page):
            return 0.0 if n == 0 else now - at
    return max(replay_age, now - history[0][0]) if history else replay_age


class Monitor:
    """The background task that keeps each ``Replica``'s health, replay position and lag current.
    A replica serves only at ``schema_head``, the migration revision this process's queries expect."""

    def __init__(self, primary: Probe, replicas: Sequence[Replica], schema_head: str) -> None:
        self.primary = primary
        self.replicas = replicas
        self.schema_head = schema_head
        self.history: deque[tuple[float, int]] = deque(maxlen=HISTORY)  # see lag()
        self.wal_page = 8192  # PostgreSQL's default, until the primary says
        self.waiting = 0  # queries waiting for a replica to replay past their token
        self._someone_waits = asyncio.Event()
        self._polled = asyncio.Event()  # set, and replaced, after every read of the replay positions
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._watch(), name="orders-api replica monitor")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])
        await self.primary.close()

    async def _watch(self) -> None:
        while True:
            try:
                await self.probe()
            except Exception:  # a bug in one round must not end the monitoring: the next round runs
                log.exception("replica monitor: a probe round failed")
            await self._between_rounds()

    async def probe(self) -> None:
        """One round: where the primary stands, then every replica at once, then their lags (a
        replica out of service keeps its last replay position: its lag grows as the primary moves on)."""
        row = await self.primary.ask(PRIMARY_POSITION)
        if row is not None:
            self.history.append((time.monotonic(), lsn_from_text(row[0])))
            self.wal_page = row[1]
        await asyncio.gather(*(self._probe_replica(replica) for replica in self.replicas))
        now = time.monotonic()
        for replica in self.replicas:
            if replica.replayed is not None:
                replica.lag = lag(self.history, replica.replayed, replica.replay_age or 0.0, now, self.wal_page)
            replica.publish()
        publish_pools(replica.pool for replica in self.replicas if replica.pool is not None)
        self._wake_waiters()

    async def _probe_replica(self, replica: Replica) -> None:
        try:
            row = await replica.probe.ask(REPLICA_PROBE)
        except asyncpg.UndefinedTableError:  # no alembic_version: never migrated
            replica.found(schema_behind(None, self.schema_head))
            return
        if row is None:
            replica.found(UNREACHABLE)
            return
        in_recovery, replayed, replay_age, revision = row
        if not in_recovery:
            replica.found(NOT_A_STANDBY)
            return
        if replica.pool is None:
            try:
                await replica.open_pool()
            except Exception:  # a misconfiguration the log must name; the replica stays out of service
                log.exception("%s: its read pool could not be opened", replica.name)
                replica.found(POOL_FAILED)
                return
            if replica.pool is None:
                return
        if replayed is not None:
            replica.replayed = lsn_from_text(replayed)
        replica.replay_age = replay_age
        replica.found(None if revision == self.schema_head else schema_behind(revision, self.schema_head))

    async def _between_rounds(self) -> None:
        """Until the next round: asleep, or reading the replay positions while a query waits for them."""
        next_round = time.monotonic() + PROBE_INTERVAL
        while (left := next_round - time.monotonic()) > 0:
            self._someone_waits.clear()  # before looking, so that a waiter arriving after the look wakes us
            if self.waiting:
                await self._poll_replay_positions()
                await asyncio.sleep(min(POLL_GAP, left))
                continue
            try:
                async with asyncio.timeout(left):
                    await self._someone_waits.wait()
            except TimeoutError:
                return

    async def _poll_replay_positions(self) -> None:
        replicas = [replica for replica in self.replicas if replica.in_service]
        rows = await asyncio.gather(*(replica.probe.ask(REPLAYED) for replica in replicas))
        for replica, row in zip(replicas, rows, strict=True):
            if row is None:
                replica.found(UNREACHABLE)
            elif row[0] is not None:
                replica.replayed = lsn_from_text(row[0])
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        polled, self._polled = self._polled, asyncio.Event()
        polled.set()

    async def wait_for(self, found: Callable[[], Replica | None], within: float) -> Replica | None:
        """``found()`` once it is a replica, asked again after every read of the replay positions,
        for ``within`` seconds at most; None then."""
        deadline = asyncio.get_running_loop().time() + within
        self.waiting += 1
        self._someone_waits.set()
        try:
            while True:
                polled = self._polled  # taken before asking, so a read finishing meanwhile is not missed
                replica = found()
                if replica is not None:
                    return replica
                try:
                    async with asyncio.timeout_at(deadline):
                        await polled.wait()
                except TimeoutError:
                    return None
        finally:
            self.waiting -= 1

"""The outbox: each command appends its events in its own transaction, and old events are purged.

An event is a command's change to one resource: its type (``order.paid``), its subject (the
resource's type and id) and the resource's view after the change, as the command answered it. The
feed (``reads.events``) serves them by position. A command only inserts them here, unpositioned;
after its commit, a round of the ``Positioner`` gives the committed ones their positions (migration
0008). The command answers at its commit, without waiting for the round: a page of the feed read
after the answer waits for it instead (``reads.events``), so a consumer still sees the command's
events, and the command's answer is not held for a second commit and its WAL flush.

A command with one view (creating, restocking, paying...) has its event appended by the pipeline
after the handler (``writes.pipeline``), from the very bytes of its answer. The set-based commands
(a customers upsert, an orders import) append one event per resource they changed themselves.
Either way the events commit with the command or not at all, and an Idempotency-Key replay,
which runs no handler, appends none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import NamedTuple, TypeVar

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.config import EVENTS_ROUND_MS, Settings, asyncpg_dsn
from shared.dto import EventType
from shared.errors import ApiError
from shared.metrics import EVENTS_APPENDED, EVENTS_OLDEST_AGE_SECONDS, EVENTS_POSITION_ROUNDS
from shared.slowlog import SlowStatements
from writes.db import (
    POSITIONS_EVENTS,
    SETTINGS,
    WritePool,
    driver_connect_args,
    in_batches,
    periodically,
)
from writes.ondriver import execute_on_driver

log = logging.getLogger("orders_api.events")

T = TypeVar("T")

APPENDED = "orders_api.events_appended"  # the session's info key: events appended, by type


class NewEvent(NamedTuple):
    type: EventType
    subject_id: int
    data: str  # the subject's view, as JSON text


# Arrays, whatever the count: one round trip, no bind-parameter limit (an import appends 100 000).
# The subject's type is the event type's first part (order.paid -> order).
APPEND = """
    INSERT INTO events (type, subject_type, subject_id, data)
    SELECT type, split_part(type, '.', 1), subject_id, data::json
      FROM unnest($1::text[], $2::bigint[], $3::text[]) AS e (type, subject_id, data)
"""


async def append(session: AsyncSession, events: Sequence[NewEvent]) -> None:
    """Append ``events`` in the session's transaction, in this order. On the driver directly: a
    single-view command appends one on every call, and SQLAlchemy's execution costs three times
    the statement itself (measured: 75 against 260 microseconds of CPU). The command's read-model
    statement (``writes.readmodels``, deferred) goes in the same round trip."""
    if not events:
        return
    arguments = [[event.type for event in events], [event.subject_id for event in events], [e.data for e in events]]
    await execute_on_driver(session, APPEND, arguments)
    appended: Counter[str] = session.info.setdefault(APPENDED, Counter())
    appended.update(event.type for event in events)
    session.info[POSITIONS_EVENTS] = True


def count_committed(appended: Counter[str]) -> None:
    """Count what a committed command appended (``APPENDED``), for /metrics."""
    for type_, count in appended.items():
        EVENTS_APPENDED.labels(type_).inc(count)


# The oldest events, in position order, up to the first one still within the retention: purged are
# always a prefix of the feed, so EVENTS_HORIZON's one number says what a cursor may still resume
# after. Bounded: ``batch`` events a statement.
PURGE = text("""
    WITH horizon AS (
        SELECT purged_through FROM events_horizon
    ),
    batch AS MATERIALIZED (
        SELECT position, occurred_at FROM events
         WHERE position > (SELECT purged_through FROM horizon)
         ORDER BY position
         LIMIT :batch
    ),
    cut AS (
        SELECT coalesce(
            (SELECT min(position) - 1 FROM batch WHERE occurred_at >= now() - make_interval(secs => :retention)),
            (SELECT max(position) FROM batch)
        ) AS through
    ),
    gone AS (
        DELETE FROM events
         WHERE position > (SELECT purged_through FROM horizon) AND position <= (SELECT through FROM cut)
        RETURNING 1
    )
    UPDATE events_horizon SET purged_through = (SELECT through FROM cut)
     WHERE (SELECT through FROM cut) > purged_through
    RETURNING (SELECT count(*) FROM gone)
""")
OLDEST_AGE = text("""
    SELECT coalesce(extract(epoch FROM now() - min(occurred_at)), 0)::float8
      FROM (SELECT occurred_at FROM events
             WHERE position > (SELECT purged_through FROM events_horizon)
             ORDER BY position LIMIT 1) AS oldest
""")
PURGE_EVERY = 10.0  # seconds
PURGE_BATCH = 1000
PURGE_BATCHES = 10  # a round purges at most 10 000: 1 000 events a second, more than the commands append


async def purge_batch(session: AsyncSession, batch: int) -> int:
    retention = session.info[SETTINGS].events_retention
    purged: int | None = await session.scalar(PURGE, {"batch": batch, "retention": retention})
    return purged or 0


async def oldest_age(session: AsyncSession) -> float:
    age: float = await session.scalar(OLDEST_AGE) or 0.0
    return age


async def purge_round(pool: WritePool, *, batch: int = PURGE_BATCH, batches: int = PURGE_BATCHES) -> int:
    """Purge events past EVENTS_RETENTION, a batch a transaction; then publish the oldest kept one's
    age. A cursor into what was purged is a 410."""
    purged = await in_batches(pool, purge_batch, batch=batch, batches=batches)
    EVENTS_OLDEST_AGE_SECONDS.set(await pool.run(oldest_age))
    return purged


async def purge_periodically(pool: WritePool, every: float = PURGE_EVERY) -> None:
    await periodically(every, partial(purge_round, pool), "purging old events")


# Migration 0008's function: positions up to ``batch`` committed events, oldest row first, and says
# how many. One statement and its own transaction: the positions commit before it answers.
POSITION = "SELECT events_position($1)"
POSITION_BATCH = 10_000
SWEEP_EVERY = 1.0  # seconds: a round even when no command asks, for events a stopped process left
SPACING = EVENTS_ROUND_MS / 1000  # seconds between the beginnings of two rounds, at least (EVENTS_ROUND_MS)
LAST_ROUND_WITHIN = 5.0  # seconds: the round a stopping process runs for its last commands


async def position_all(driver: asyncpg.Connection, *, batch: int = POSITION_BATCH, within: float | None = None) -> None:
    """Position every event committed before this call, ``batch`` a transaction (each statement
    within ``within`` seconds)."""
    while await driver.fetchval(POSITION, batch, timeout=within) == batch:
        pass


class Positioner:
    """Gives committed events their positions, a round at a time, for one process's commands.

    Each command that appended events asks for a round after its commit (``wanted``) and answers
    without waiting for it. Commands that commit while a round runs share the next one, and rounds
    begin ``spacing`` seconds apart at least (EVENTS_ROUND_MS), the first after a quiet spell at
    once: under load a round positions many commands' events in one transaction, instead of each
    commit holding the feed's head row through its own WAL flush. The rounds have their own connection
    (``RoundConnection``).

    A round that fails (the database gone, the round past its time) is logged: the next round
    positions what it left, at the latest the sweep, which runs every ``sweep_every`` seconds anyway,
    also for the events of a process that stopped between a commit and its round (with nothing to
    position, a round is one index probe). When the process stops, a last round positions what its
    commands committed since the one before (``run``'s end).
    """

    def __init__(
        self, round_: Callable[[], Awaitable[object]], *, sweep_every: float = SWEEP_EVERY, spacing: float = SPACING
    ) -> None:
        self._round = round_
        self._sweep_every = sweep_every
        self._spacing = spacing
        self._wanted = asyncio.Event()

    def wanted(self) -> None:
        """A command committed events: a round that begins after this call positions them."""
        self._wanted.set()

    async def run(self) -> None:
        """The rounds, until cancelled (``WritePool.keep_running``); then a last one, if wanted."""
        loop = asyncio.get_running_loop()
        began = loop.time() - self._spacing
        try:
            while True:
                # A timeout scope, not wait_for: no task is made for each wait.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._sweep_every):
                        await self._wanted.wait()
                # Rounds begin ``spacing`` apart at least: the commands of the meantime share one.
                if (early := began + self._spacing - loop.time()) > 0:
                    await asyncio.sleep(early)
                self._wanted.clear()
                began = loop.time()
                await self._safely()
        finally:
            if self._wanted.is_set():
                # Stopping: what the last commands committed is in the feed before the process ends
                # (else the sweep of another process, if any runs, positions it within a second).
                self._wanted.clear()
                try:
                    async with asyncio.timeout(LAST_ROUND_WITHIN):
                        await self._safely()
                except TimeoutError:
                    log.warning("positioning events failed as the process stopped; another process's sweep will")

    async def _safely(self) -> None:
        try:
            await self._round()
        except (ApiError, DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            # The database gone, the round past its time: the next round does the work.
            log.warning("positioning events failed; the next round retries: %s: %s", type(exc).__name__, exc)
        except Exception:
            # A bug: said loudly, and still not the committed command's failure.
            log.exception("positioning events failed; the next round retries")
        else:
            EVENTS_POSITION_ROUNDS.labels("ok").inc()
            return
        EVENTS_POSITION_ROUNDS.labels("failed").inc()


POSITIONER = "orders-api events positioner"  # the task's name
POSITIONER_LOG = "events positioner"  # its slow statements' source, in the log
POSITIONER_CONNECTIONS = 1  # each process that runs commands: the rounds' own (``RoundConnection``)


class RoundConnection:
    """The positioner's own connection: one more backend per process, beside the write pool.

    A round is one statement that commits on its own. Through the pool it cost a place at the gate
    (held through the round's WAL flush, so the commands had one connection fewer), a checkout with
    its pre-ping, and SQLAlchemy's connection wrappers: 277 against 47 microseconds of CPU a round
    (measured). The connection is opened at the first round and again after a round failed on it
    (a round's statements are bounded by ``timeout``: a dead network answers nothing).
    It takes the write side's connection settings (its role's, PgBouncer's), like the pool's."""

    def __init__(self, settings: Settings) -> None:
        self._dsn = asyncpg_dsn(settings.write_url)
        self._connect_args = driver_connect_args(settings)
        # A statement's bound: past the statement timeout (the server's own) by the connect's, for
        # a dead network that answers nothing. With no statement timeout (0), none here either, as
        # for the pool's statements. Connecting is bounded by its own timeout (the pool's).
        statement = settings.write_statement_timeout_ms / 1000
        self.timeout = settings.write_pool_timeout + statement if statement else None
        self._driver: asyncpg.Connection | None = None
        # SLOW_STATEMENT_MS: a round that waited (a lock, the WAL) is logged like the pools' statements.
        self._slow = SlowStatements(POSITIONER_LOG, settings.slow_statement_ms) if settings.slow_statement_ms else None

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            if self._driver is None or self._driver.is_closed():
                self._driver = await asyncpg.connect(self._dsn, **self._connect_args)
                if self._slow is not None:
                    self._driver.add_query_logger(self._slow.observe_query)
            return await work(self._driver)
        except BaseException:
            # Whatever state a failed or cut round left the connection in, the next opens another.
            self.close()
            raise

    def close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.terminate()

    async def aclose(self) -> None:
        """Closed as a client should (the server logs no lost connection), or cut after a second."""
        driver, self._driver = self._driver, None
        if driver is not None:
            try:
                await driver.close(timeout=CLOSE_WITHIN)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                driver.terminate()


CLOSE_WITHIN = 1.0  # seconds


def position_events(pool: WritePool, settings: Settings) -> None:
    """Give ``pool`` its positioner, running until the pool closes: from now on, each of its
    commands that appended events asks for a round after its commit. Every pool that runs commands
    has one (the serving write side, the seed, the benchmark's). Its rounds run on a connection of
    their own (``RoundConnection``)."""
    connection = RoundConnection(settings)

    async def round_(driver: asyncpg.Connection) -> None:
        await position_all(driver, within=connection.timeout)

    async def rounds() -> None:
        try:
            await positioner.run()
        finally:
            await connection.aclose()

    positioner = Positioner(partial(connection.run, round_), spacing=settings.events_round_ms / 1000)
    pool.events_committed = positioner.wanted
    pool.keep_running(rounds(), name=POSITIONER)


async def open_pool(settings: Settings) -> WritePool:
    """A write pool for commands (``WritePool.open``) with its positioner (``position_events``)."""
    pool = await WritePool.open(settings)
    position_events(pool, settings)
    return pool

"""The outbox: each command appends its events in its own transaction, and old events are purged.

An event is a command's change to one resource: its type (``order.paid``), its subject (the
resource's type and id) and the resource's view after the change, as the command answered it. The
feed (``reads.events``) serves them in commit order: migration 0007's trigger gives each
transaction's events their positions as it commits, so a command only inserts them here.

A command with one view (creating, restocking, paying...) has its event appended by the pipeline
after the handler (``writes.pipeline``), from the very bytes of its answer. The set-based commands
(a customers upsert, an orders import) append one event per resource they changed themselves.
Either way the events commit with the command or not at all, and an Idempotency-Key replay,
which runs no handler, appends none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.dto import EventType
from shared.metrics import EVENTS_APPENDED, EVENTS_OLDEST_AGE_SECONDS
from writes.db import SETTINGS, WritePool, driver_connection, in_batches, periodically, wrapped_like_sqlalchemy

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
    the statement itself (measured: 75 against 260 microseconds of CPU)."""
    if not events:
        return
    driver = driver_connection(session)
    async with wrapped_like_sqlalchemy(driver, "INSERT INTO events"):
        await driver.execute(
            APPEND, [event.type for event in events], [event.subject_id for event in events], [e.data for e in events]
        )
    appended: Counter[str] = session.info.setdefault(APPENDED, Counter())
    appended.update(event.type for event in events)


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

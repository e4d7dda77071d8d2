"""The command side as the shell plugs it in: its routes, and its pool with the tasks it runs."""

from __future__ import annotations

from shared.config import Settings
from shared.sides import Side
from writes import events, idempotency
from writes.db import WritePool
from writes.routes import ROUTES

IDEMPOTENCY_PURGE = "orders-api idempotency purge"  # the tasks' names
EVENTS_PURGE = "orders-api events purge"


async def open_write_side(
    settings: Settings, schema_head: str, *, purge_every: float = idempotency.PURGE_EVERY
) -> WritePool:
    """The write pool, positioning committed events (``writes.events.Positioner``) and purging
    expired idempotency keys and events past EVENTS_RETENTION every ``purge_every`` seconds while
    it is open. ``schema_head`` is for the read side's replicas, which replay a migration late;
    the primary's schema is /readyz's to check."""
    pool = await events.open_pool(settings)
    pool.keep_running(idempotency.purge_periodically(pool, purge_every), name=IDEMPOTENCY_PURGE)
    pool.keep_running(events.purge_periodically(pool, purge_every), name=EVENTS_PURGE)
    return pool


SIDE = Side(name="writes", routes=ROUTES, open_pool=open_write_side)

"""Which database answers a request's queries: a streaming replica, or the primary.

GitLab's database load balancing is the model. With replicas (``reads.replicas``) the read side's pool
is ``Replicas``, which chooses per request:

- With a ``Consistency-Token`` (``shared.consistency``): a replica that has replayed past the token's
  position; else one that gets there within READ_CONSISTENCY_WAIT_MS; else the primary.
- Without one: the least busy replica within READ_REPLICA_MAX_LAG_MS; else the primary.
- A replica that fails the request's first query (unreachable, connection lost, pool exhausted,
  statement timeout, a recovery conflict) is set aside until the monitor finds it well again, and the
  query runs on the primary: a client sees an answer, not a 503.
- A replica serves only at the migration revision this process expects. One that has not replayed a
  migration yet is set aside by the monitor; and when a query meets a table, column or function the
  replica lacks before the monitor's next round, the primary answers it and the replica is set aside.

One database answers every query of a request: an export reads all its batches from one.

When READ_DATABASE_URL names one database that is not a standby (the primary itself, PgBouncer in
front of it) or is unset, the read side is one ``ReadPool``, always current: a token is checked and
needs nothing more. One database that does not answer at start-up is taken for a replica out of
service, as any host of several would be: nothing waits for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, TypeVar

from starlette.requests import Request

from reads.db import Database, Reader, ReadPool
from reads.replicas import SCHEMA_BEHIND, Monitor, Probe, Replica, is_standby
from shared.config import Settings, asyncpg_dsn
from shared.consistency import FIELD, decode_token
from shared.dbfailures import PoolNames
from shared.errors import ServiceUnavailable
from shared.http import header_fields
from shared.metrics import READS_ROUTED
from shared.sides import Pool, Resources

T = TypeVar("T")

Route = Literal["replica", "waited", "primary"]

# The primary's read pool with replicas: it keeps the read pool's metric label.
PRIMARY = PoolNames(
    "read pool (primary)", "WRITE_DATABASE_URL or DATABASE_URL", "READ_PRIMARY_POOL_MAX_SIZE",
    "READ_POOL_ACQUIRE_TIMEOUT", "READ_POOL_MAX_WAITING", "READ_STATEMENT_TIMEOUT_MS", "read",
)  # fmt: skip


async def open_read_side(settings: Settings, schema_head: str) -> Pool:
    """The read side's pool: ``Replicas`` when READ_DATABASE_URL names streaming replicas (several
    hosts, or one in recovery or not answering), else one ``ReadPool``. A replica serves only at
    ``schema_head``, the migration revision this process expects."""
    urls = settings.read_host_urls
    if len(urls) == 1 and await is_standby(settings, asyncpg_dsn(urls[0])) is False:
        urls = []
    return await Replicas.open(settings, urls, schema_head) if urls else await ReadPool.open(settings)


async def reader(request: Request, found: Resources, *, sticky: bool = True) -> Reader:
    """The database this request reads, by its ``Consistency-Token`` when it sends one: a malformed
    token is a 400 before anything is read. ``found``: the app's resources, as ``authorize`` looked
    them up (once a request). ``sticky``: see ``Routed``."""
    # Every field of the header, joined as HTTP joins repeated fields: a second one (a "0" after a
    # good token) makes the whole value malformed rather than going unread.
    tokens = header_fields(request, FIELD)
    position = decode_token(", ".join(tokens)) if tokens else None
    pool = found.pools["reads"]
    if isinstance(pool, Replicas):
        return await pool.reader(position, sticky=sticky)
    assert isinstance(pool, ReadPool)
    return pool


class Replicas:
    """The read side's pool with replicas. To /readyz and the metrics it is the primary's read pool,
    which must answer; a replica that does not only degrades the service (``degraded``)."""

    def __init__(self, primary: ReadPool, replicas: Sequence[Replica], settings: Settings, schema_head: str) -> None:
        self.primary = primary
        self.replicas = replicas
        self.names = primary.names
        self.timeout = primary.timeout
        self.gate = primary.gate  # to /metrics the read pool is the primary's; each replica's is its own
        self.consistency_wait = settings.read_consistency_wait_ms / 1000
        self.monitor = Monitor(Probe("primary", primary.database.dsn, settings), replicas, schema_head)
        self._turns = itertools.count()
        self.routed = {route: READS_ROUTED.labels(route) for route in ("replica", "waited", "primary")}

    @classmethod
    async def open(cls, settings: Settings, urls: Sequence[str], schema_head: str) -> Replicas:
        """The primary's read pool (unreachable, it stops start-up), a pool per replica (unreachable,
        the replica starts out of service and the monitor retries), and the monitor, after a first round."""
        size = settings.read_primary_pool_max_size
        dsn = asyncpg_dsn(settings.read_primary_url)
        primary = Database(dsn, PRIMARY, min(settings.read_pool_min_size, size), size)
        pool = await ReadPool.open(settings, primary)
        replicas = cls(pool, [Replica(n, url, settings) for n, url in enumerate(urls, 1)], settings, schema_head)
        try:
            for replica in replicas.replicas:
                await replica.open_pool()
            await replicas.monitor.probe()
        except BaseException:
            await replicas.close()
            raise
        replicas.monitor.start()
        return replicas

    async def reader(self, position: int | None, *, sticky: bool = True) -> Reader:
        if position is None:
            return Routed(self, self._least_busy([r for r in self.replicas if r.fresh]), "replica", sticky)
        found = self._past(position)
        if found is not None:
            return Routed(self, found, "replica", sticky)
        if self.consistency_wait and any(replica.in_service for replica in self.replicas):
            found = await self.monitor.wait_for(lambda: self._past(position), self.consistency_wait)
            if found is not None:
                return Routed(self, found, "waited", sticky)
        return Routed(self, None, "primary", sticky)

    def _past(self, position: int) -> Replica | None:
        wal_page = self.monitor.wal_page
        return self._least_busy([r for r in self.replicas if r.has_replayed(position, wal_page)])

    def _least_busy(self, candidates: list[Replica]) -> Replica | None:
        if not candidates:
            return None
        # min() keeps the first of equals: starting each choice one further on spreads ties (idle
        # pools, the usual case) round-robin.
        start = next(self._turns) % len(candidates)
        return min(candidates[start:] + candidates[:start], key=Replica.load)

    def degraded(self) -> list[str]:
        return [condition for replica in self.replicas if (condition := replica.condition()) is not None]

    async def ping(self) -> None:
        await self.primary.ping()

    async def schema_revision(self) -> str | None:
        return await self.primary.schema_revision()

    def size(self) -> int:
        return self.primary.size()

    async def close(self) -> None:
        await self.monitor.stop()
        for replica in self.replicas:
            await replica.close()
        await self.primary.close()


class Routed:
    """A request's ``Reader``: the chosen replica (None: the primary). When the replica fails the
    first query, the primary answers it, within its own acquire timeout; whichever answered the first
    query answers the rest, so an export's batches all come from one database. Unless not ``sticky``:
    then the primary answers any query the replica fails, for a request whose queries each stand on
    their own, and which the primary, always at least as far along, can answer as well (a page of
    the event feed, its wait for a round included)."""

    def __init__(self, replicas: Replicas, replica: Replica | None, route: Route, sticky: bool = True) -> None:
        self.replicas = replicas
        self.replica = replica
        # A replica in service always has its pool (``Replica.problem``); the primary is the fallback.
        self.pool = replicas.primary if replica is None or replica.pool is None else replica.pool
        self.route: Route = route if replica is not None else "primary"
        self.answers = replicas.primary.answers  # a version names the same data on every database
        self.answered = False
        self.sticky = sticky

    async def find(
        self, sql: str, view: type[T], *args: object, wait: float | None = None, shed: bool = True, replan: bool = False
    ) -> T | None:
        return await self._answer(lambda pool: pool.find(sql, view, *args, wait=wait, shed=shed, replan=replan))

    async def value(
        self, sql: str, view: type[T], *args: object, wait: float | None = None, shed: bool = True, replan: bool = False
    ) -> T:
        return await self._answer(lambda pool: pool.value(sql, view, *args, wait=wait, shed=shed, replan=replan))

    async def _answer(self, query: Callable[[ReadPool], Awaitable[T]]) -> T:
        if self.answered and (self.sticky or self.replica is None):
            return await query(self.pool)
        try:
            answer = await query(self.pool)
        except ServiceUnavailable as exc:
            if self.replica is None:
                raise
            self.replica.set_aside(exc)
            answer = await self._on_primary(query)
        except SCHEMA_BEHIND as exc:
            if self.replica is None:
                raise
            replica = self.replica
            # Where the primary fails alike, the query is at fault, not the replica: that error is
            # the answer, and the replica keeps serving.
            answer = await self._on_primary(query)
            replica.set_aside_for_schema(exc)
        if not self.answered:  # a request is counted once, by where its first query went
            self.answered = True
            self.replicas.routed[self.route].inc()
        return answer

    async def _on_primary(self, query: Callable[[ReadPool], Awaitable[T]]) -> T:
        self.replica, self.pool, self.route = None, self.replicas.primary, "primary"
        return await query(self.pool)

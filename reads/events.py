"""GET /v1/events: the feed of committed changes, a page at a time, long-polled or streamed (SSE).

Events carry the position a round gave them after their commit (``writes.events``, migration 0008):
every event at or below ``events_head.last`` that a snapshot can see is every event there will ever
be at or below it (a round commits its positions and the head together). So a page read after
position ``p`` is complete up to the head it read with it, and the next page starts where this one
stopped: no event is skipped, whatever order transactions commit in.

A command answers at its commit, before a round positions its events (``writes.events``). So the
first page a request reads, when it reaches the end of the feed while its snapshot sees committed
events still unpositioned, waits for the round that positions them (``settle``) and is read again:
a consumer that reads the feed after a command's answer (after its Consistency-Token, on a replica)
sees the command's events, and a consumer ahead of them waits a round, not its whole long-poll.

A client waiting for something new holds no connection: each process reads the head once a period
(EVENTS_POLL_MS) for all its waiting clients (``HeadWatch``), and a waiting client asks again once
the head moved past its position. Polling alone, so it works behind PgBouncer and on replicas. The
clients woken together ask a few at a time (``HeadWatch.rereads``), so one event never turns a
crowd of idle waiters into a full pool queue and its 503s; and a long-poll whose client has gone
stops waiting (``unless_gone``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, get_args
from weakref import WeakKeyDictionary

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive

from reads.balancing import Replicas, reader
from reads.cursor import decode_cursor, encode_cursor
from reads.db import Reader, ReadPool
from reads.params import EventQuery, query_params
from reads.queries import instant
from reads.routes import ALWAYS, NO_STORE, TAG, authorize
from shared.consistency import HEADER as CONSISTENCY_TOKEN
from shared.dto import Event, EventPage, EventSubject, EventType, Problem, SubjectType
from shared.errors import BadCursor, ClientClosedRequest, EventsPurged, InvalidInput, ServiceUnavailable
from shared.http import ENCODER, MsgspecResponse, weights
from shared.metrics import EVENTS_WAITING
from shared.openapi import operation
from shared.sides import resources

log = logging.getLogger("orders_api.events")

EVENT_TYPES: frozenset[str] = frozenset(get_args(EventType))
# Sealed like a list cursor, to the feed as a whole: any event id resumes with any filter.
FEED = "events"
STREAM_MEDIA_TYPE = "text/event-stream"
KEEP_ALIVE_SECONDS = 15.0  # the stream sends a comment at least this often
STREAM_PAGE = 100
# What a cursor may carry: a position PostgreSQL can bind (bigint), 0 being the feed's beginning. A
# cursor is sealed, not secret (``reads.cursor``): one forged past these bounds is a 400.
Position = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class StoredEvent(msgspec.Struct, frozen=True):
    position: int
    type: EventType
    occurred_at: datetime
    subject_type: SubjectType
    subject_id: int
    data: msgspec.Raw


class Rows(msgspec.Struct, frozen=True):
    head: int  # the last position given, as of this snapshot
    purged: int  # the last position purged: a cursor before it is a 410
    pending: int | None  # the last committed event this snapshot sees still unpositioned (row id)
    items: list[StoredEvent]


def _page_sql(filtered: bool) -> str:
    # Two texts, so that a generic plan is never asked to fold "no filter" away (see reads.queries.orders).
    condition = "position > $1 AND type = ANY($3::text[])" if filtered else "position > $1 AND $3::text[] IS NULL"
    # A filtered page waits only for its own types' events (``read_page``).
    waiting = "position IS NULL AND type = ANY($3::text[])" if filtered else "position IS NULL"
    return f"""
        SELECT json_build_object(
            'head', (SELECT last FROM events_head),
            'purged', (SELECT purged_through FROM events_horizon),
            'pending', (SELECT max(id) FROM events WHERE {waiting}),
            'items', coalesce((
                SELECT json_agg(json_build_object(
                           'position', position, 'type', type, 'occurred_at', {instant("occurred_at")},
                           'subject_type', subject_type, 'subject_id', subject_id, 'data', data
                       ) ORDER BY position)
                  FROM (SELECT * FROM events WHERE {condition} ORDER BY position LIMIT $2) AS page
            ), '[]')
        )::text
    """  # noqa: S608 - composed of constants only; every value is a bound parameter


PAGE = _page_sql(filtered=False)
PAGE_OF_TYPES = _page_sql(filtered=True)
HEAD = "SELECT last::text FROM events_head"
# Whether events up to this row id still wait for their round.
UNPOSITIONED = "SELECT (EXISTS (SELECT FROM events WHERE position IS NULL AND id <= $1))::text"
UNPOSITIONED_OF_TYPES = (
    "SELECT (EXISTS (SELECT FROM events WHERE position IS NULL AND id <= $1 AND type = ANY($2::text[])))::text"
)
# How long a first page waits for a round: past the sweep (``writes.events.SWEEP_EVERY``, 1 s), which
# positions the events of a process that stopped between a commit and its round. Asked again after
# 1 ms, then twice as long each time, up to SETTLE_PERIOD_MAX.
SETTLE_WITHIN = 2.0  # seconds
SETTLE_PERIOD_MAX = 0.032


class Fetched(msgspec.Struct, frozen=True):
    """A page as the feed answers it, and the position it ends at."""

    events: EventPage
    position: int


Ask = Callable[[int | None], Awaitable[Fetched]]  # a request's next page after a position


async def read_page(
    db: Reader, after: int | None, limit: int, types: list[str] | None, *, settle: bool = False
) -> Fetched:
    """The page after ``after``. With ``settle``, a page that reaches the end of the feed while
    committed events (of ``types``, if given) wait for their round is read again once they have
    positions (or after SETTLE_WITHIN, if no round comes: they then follow, positioned past this
    page)."""
    sql = PAGE if types is None else PAGE_OF_TYPES
    rows = await db.value(sql, Rows, after or 0, limit, types)
    if settle and rows.pending is not None and len(rows.items) < limit:
        await _positioned(db, rows.pending, types)
        rows = await db.value(sql, Rows, after or 0, limit, types)
    start = rows.purged if after is None else after
    if start < rows.purged:
        raise EventsPurged(
            f"events up to position {rows.purged} were purged (EVENTS_RETENTION); the oldest kept follows it:"
            " resume without `after` to start there"
        )
    # Every event kept is past the purged ones (the purge deletes and moves the horizon together).
    # A short page saw every event up to the head (of its snapshot): the next one starts there.
    items = rows.items
    end = items[-1].position if len(items) == limit else max(start, rows.head)
    return Fetched(EventPage(items=[_event(stored) for stored in items], next_cursor=_cursor(end)), end)


async def _positioned(db: Reader, pending: int, types: list[str] | None) -> None:
    """Wait until every event up to row id ``pending`` (of ``types``, if given) has its position,
    SETTLE_WITHIN at most."""
    deadline = time.monotonic() + SETTLE_WITHIN
    period = 0.001
    check, args = (UNPOSITIONED, (pending,)) if types is None else (UNPOSITIONED_OF_TYPES, (pending, types))
    while await db.value(check, bool, *args):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(period, left))
        period = min(2 * period, SETTLE_PERIOD_MAX)


def _event(stored: StoredEvent) -> Event:
    return Event(
        id=_cursor(stored.position),
        type=stored.type,
        occurred_at=stored.occurred_at,
        subject=EventSubject(type=stored.subject_type, id=stored.subject_id),
        data=stored.data,
    )


def _cursor(position: int) -> str:
    return encode_cursor(position, bound_to=FEED)


def _position(cursor: str) -> int:
    try:
        return decode_cursor(cursor, Position, bound_to=FEED)
    except BadCursor:
        # Every event id goes with every filter here: a list's words (other filters) would mislead.
        raise BadCursor(
            "`after` (or Last-Event-ID) is not an event id of this feed: an event's `id` or a page's"
            " `next_cursor`, as sent"
        ) from None


def _types(given: str | None) -> list[str] | None:
    if given is None:
        return None
    types = sorted(set(given.split(",")))
    unknown = [type_ for type_ in types if type_ not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(f"query parameter `types`: unknown event type {unknown[0]!r} - at $.types")
    return types


class HeadWatch:
    """The feed's head as this process last read it, for the clients waiting on it.

    One task reads it every ``period`` seconds while anyone waits, and wakes them all when it moves;
    it ends when the last one stops waiting. It reads the primary's read pool: a client then asks
    its own database (a replica, maybe), which may not have replayed so far yet, so a client that
    finds nothing waits a period before asking again.

    The clients it wakes ask ``rereads`` at a time (``asking``): a hundred idle long-polls woken by
    one event would otherwise all join the pool's queue in the same instant, past
    READ_POOL_MAX_WAITING, and be refused (as would any query arriving then). A few at a time, they
    leave the rest of the pool to the other queries and are answered within milliseconds of each
    other all the same.

    Once the server drains (``draining``: a graceful shutdown began), the task wakes every client
    within a period, for good: they answer what they have rather than hold the exit up."""

    def __init__(self, period: float, rereads: int, draining: asyncio.Event) -> None:
        self.period = period
        self.rereads = asyncio.Semaphore(rereads)
        self.draining = draining
        self.head: int | None = None
        self._moved = asyncio.Event()
        self._waiting = 0
        self._task: asyncio.Task[None] | None = None

    async def wait_past(self, pool: ReadPool, position: int, seconds: float) -> None:
        """Return once the head is past ``position``, or after ``seconds``."""
        deadline = time.monotonic() + seconds
        self._waiting += 1
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._watch(pool), name="orders-api events head")
            while (
                (self.head is None or self.head <= position)
                and not self.draining.is_set()
                and (left := deadline - time.monotonic()) > 0
            ):
                moved = self._moved
                try:
                    await asyncio.wait_for(moved.wait(), left)
                except TimeoutError:
                    return
        finally:
            self._waiting -= 1

    async def asking(self, ask: Ask, after: int) -> Fetched:
        """A woken client's next page (``ask(after)``), once one of the ``rereads`` places is free."""
        async with self.rereads:
            return await ask(after)

    async def _watch(self, pool: ReadPool) -> None:
        while self._waiting:
            try:
                head = await pool.value(HEAD, int, shed=False)
            except ServiceUnavailable as exc:
                log.warning("events: reading the feed's head failed: %s", exc)
            else:
                if head != self.head:
                    self.head = head
                    self._wake()
            if self.draining.is_set():
                self._wake()
            await asyncio.sleep(self.period)

    def _wake(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()


# One watch per primary read pool: per process, and per app in the tests (which open several).
_WATCHES: WeakKeyDictionary[ReadPool, HeadWatch] = WeakKeyDictionary()


def head_watch(request: Request) -> tuple[HeadWatch, ReadPool]:
    """This process's watch, on the primary's read pool (the first client to wait makes it)."""
    found = resources(request)
    pool = found.pools["reads"]
    primary = pool.primary if isinstance(pool, Replicas) else pool
    assert isinstance(primary, ReadPool)
    watch = _WATCHES.get(primary)
    if watch is None:
        # Half a read pool's connections (READ_POOL_MAX_SIZE, a replica's too) at most: the other
        # half stays free for every other query. Not the primary's own pool beside replicas, which
        # is smaller (READ_PRIMARY_POOL_MAX_SIZE) and not the one a woken client usually reads.
        rereads = max(1, found.settings.read_pool_max_size // 2)
        watch = _WATCHES[primary] = HeadWatch(found.settings.events_poll_ms / 1000, rereads, found.draining)
    return watch, primary


@contextmanager
def waiting(mode: str) -> Iterator[None]:
    gauge = EVENTS_WAITING.labels(mode)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


@operation(
    "Committed changes as events, oldest first: a page (long-polled with `wait`), or with"
    " `Accept: text/event-stream` a stream of Server-Sent Events resumed from `Last-Event-ID`",
    tag=TAG,
    responses={200: EventPage, 410: Problem, 422: Problem, **ALWAYS},
    query=EventQuery,
    headers=(CONSISTENCY_TOKEN, "Last-Event-ID"),
)
async def list_events(request: Request) -> Response:
    granted = authorize(request)
    query = query_params(request, EventQuery)
    types = _types(query.types)
    # An empty id names no event (an EventSource sends none then; a client passing None may send
    # an empty one): the feed starts where it would without it.
    last_event_id = request.headers.get("last-event-id") or None
    cursor = (query.after or None) if last_event_id is None else last_event_id
    after = None if cursor is None else _position(cursor)

    # Not sticky: a replica that stops while a page waits for its round leaves the page to the primary.
    async def ask(after: int | None) -> Fetched:
        return await read_page(await reader(request, granted, sticky=False), after, query.limit, types)

    # The first page is read before any byte is sent: a bad or purged cursor, an exhausted pool, are
    # still proper problems. It settles: it holds every event committed before the request.
    first = await read_page(await reader(request, granted, sticky=False), after, query.limit, types, settle=True)
    if wants_stream(request.headers.get("accept")):
        settings = granted.settings
        stream = _stream(request, first, ask, settings.events_stream_seconds)
        return StreamingResponse(stream, media_type=STREAM_MEDIA_TYPE, headers={**NO_STORE, "X-Accel-Buffering": "no"})
    page = first
    if not page.events.items and query.wait:
        page = await _long_poll(request, page, ask, query.wait)
    return MsgspecResponse(page.events, headers=NO_STORE)


async def _long_poll(request: Request, page: Fetched, ask: Ask, wait: int) -> Fetched:
    """The first page after ``page`` with an event in it, or an empty one after ``wait`` seconds (or
    once the server drains); a 499 (``ClientClosedRequest``) as soon as the client has gone, rather
    than waiting on for it."""
    deadline = time.monotonic() + wait
    watch, primary = head_watch(request)
    gone = asyncio.ensure_future(_gone(request.receive))
    try:
        with waiting("long-poll"):
            while not page.events.items and not watch.draining.is_set() and (left := deadline - time.monotonic()) > 0:
                await unless_gone(watch.wait_past(primary, page.position, left), gone)
                page = await watch.asking(ask, page.position)
                if not page.events.items and not watch.draining.is_set():
                    await unless_gone(asyncio.sleep(min(watch.period, max(0.0, deadline - time.monotonic()))), gone)
    finally:
        gone.cancel()
    return page


async def _gone(receive: Receive) -> None:
    """Return once the client has closed the connection. Once a request's body is read, an ASGI
    server's ``receive`` answers ``http.disconnect`` when that happens (uvicorn's waits for it);
    before, it answers the body (a GET's is empty), which is skipped."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception as exc:  # a server that cannot say: the long-poll then runs its course
        log.warning("events: cannot watch a long-poll's connection: %s: %s", type(exc).__name__, exc)
        await asyncio.Future()  # never done: the long-poll's ``finally`` cancels it


async def unless_gone(waited: Awaitable[None], gone: asyncio.Future[None]) -> None:
    """Await ``waited``; if the client goes first (``gone``), stop it and raise ClientClosedRequest."""
    task = asyncio.ensure_future(waited)
    await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()  # its own cleanup (HeadWatch's count of waiters) runs as it ends
        log.info("events: a long-poll's client closed the connection while it waited")
        raise ClientClosedRequest("client closed the connection while its long-poll waited")
    task.result()


def wants_stream(accept: str | None) -> bool:
    """Whether ``Accept`` asks for Server-Sent Events: it names ``text/event-stream`` (media types
    compare case-insensitively) with a q above 0, and prefers no JSON range (``application/json``,
    ``application/*``, ``*/*``) to it. Without ``Accept``, a page of JSON."""
    if not accept:
        return False
    found = weights(accept)
    stream = found.get(STREAM_MEDIA_TYPE, 0.0)
    json = max(found.get(kind, 0.0) for kind in JSON_RANGES)
    return stream > 0 and stream >= json


JSON_RANGES = frozenset({"application/json", "application/*", "*/*"})


async def _stream(request: Request, first: Fetched, ask: Ask, seconds: int) -> AsyncIterator[bytes]:
    """Server-Sent Events: each event with its id and type, a comment while nothing happens, and an
    end after ``seconds`` (the client reconnects with Last-Event-ID). A database failure ends it
    the same way, and so does the server's drain: the client resumes where it stopped."""
    deadline = time.monotonic() + seconds
    watch, primary = head_watch(request)
    page = first
    with waiting("stream"):
        yield b"retry: 1000\n\n"
        sent = time.monotonic()  # when the client last heard from us: a comment follows 15 s of silence
        while True:
            if page.events.items:
                yield b"".join(_sse(event) for event in page.events.items)
                sent = time.monotonic()
            elif (left := deadline - time.monotonic()) <= 0:
                return
            else:
                quiet = max(0.0, KEEP_ALIVE_SECONDS - (time.monotonic() - sent))
                await watch.wait_past(primary, page.position, min(quiet, left))
            # Also while a replica is behind the head: it is then asked every period and finds nothing.
            if time.monotonic() - sent >= KEEP_ALIVE_SECONDS:
                yield b": keep-alive\n\n"
                sent = time.monotonic()
            if deadline - time.monotonic() <= 0 or watch.draining.is_set():
                return  # the client reconnects with Last-Event-ID, to another process if this one stops
            try:
                page = await watch.asking(ask, page.position)
            except (ServiceUnavailable, EventsPurged) as exc:
                # Purged: the purge overtook a stream that reads slower than it deletes. The client
                # reconnects with Last-Event-ID, and is told so by a 410 before any byte is sent.
                log.warning("events: a stream ended early: %s", exc)
                return
            if not page.events.items:
                await asyncio.sleep(watch.period)


def _sse(event: Event) -> bytes:
    # JSON holds no raw newline, so the event is one data: line.
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.type.encode(), ENCODER.encode(event))


ROUTES: list[BaseRoute] = [Route("/v1/events", list_events, methods=["GET"])]

"""The event feed from a consumer's side (``GET /v1/events``), for the events scenario
(``bench.scenarios.events``): how a page reads, where a consumer starts, and delivery.

**Delivery, commit to consumer.** One process sends ``RATE`` place-order commands a second, open
loop (each at its time, whether or not the ones before were answered), for ``DELIVERY_SECONDS``,
while two consumers follow the feed from its head: one long-polls (``wait=10``, following
``next_cursor``), one streams Server-Sent Events. An order's latency is when a consumer received
its ``order.placed`` event less when the command's 201 arrived, both on this process's clock. A
consumer that misses an acknowledged order counts it as an error.

The consumers start at the feed's head without reading what came before it (the seeded orders'
import events, a million after the stats scenario): no request asks for the head, so the cursor is
sealed here as the feed seals it (``reads.cursor``), from ``events_head``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import msgspec

from bench.core import SMOKE, Context, Measurement, quantile_ms
from bench.load import random_order
from bench.servers import Server
from reads.cursor import encode_cursor
from reads.events import FEED
from testkit import database
from testkit.database import connected

SCENARIO = "events"
RATE = 200  # place-order commands a second
# Commands unanswered at once, at most; one due past it is skipped (and counted), not queued here:
# a client queue would time the load generator's backlog, not the service (its own queue, the write
# pool's 5 connections and 10 waiters, refuses past 15 with a 503).
MAX_IN_FLIGHT = 32
DELIVERY_SECONDS = 10.0
CATCH_UP_SECONDS = 15.0  # after the last command, for the consumers to receive what they miss
LONG_POLL = "long-poll (wait=10)"
STREAM = "SSE stream"
PAGE = 1000  # events a page, the most a page holds


class Subject(msgspec.Struct, frozen=True):
    id: int


class FeedEvent(msgspec.Struct, frozen=True):
    """What a consumer reads of an event; ``data`` is left unparsed, as a relay would pass it on."""

    id: str
    type: str
    subject: Subject
    data: msgspec.Raw


class FeedPage(msgspec.Struct, frozen=True):
    items: list[FeedEvent]
    next_cursor: str


PAGE_DECODER = msgspec.json.Decoder(FeedPage)
EVENT_DECODER = msgspec.json.Decoder(FeedEvent)


async def positioned_head(url: str) -> int:
    """The feed's head once every committed event has its position (``testkit.database``)."""
    async with connected(url) as connection:
        return await database.positioned_head(connection)


async def head_cursor(url: str) -> str:
    return encode_cursor(await positioned_head(url), bound_to=FEED)


@dataclass
class Delivery:
    """One run: when each order's 201 arrived, and when each consumer received its event."""

    sent: int = 0
    in_flight: int = 0
    skipped: int = 0  # due while MAX_IN_FLIGHT were unanswered
    service_cpu_seconds: float = 0.0  # the service process's, while the commands ran
    acknowledged: dict[int, float] = field(default_factory=dict)  # order id -> perf_counter()
    command_seconds: list[float] = field(default_factory=list)  # each 201's, from when it was due
    failed: Counter[int] = field(default_factory=Counter)  # by status other than 201; 0: a transport error
    received: dict[str, dict[int, float]] = field(default_factory=lambda: {LONG_POLL: {}, STREAM: {}})
    duplicates: dict[str, int] = field(default_factory=lambda: {LONG_POLL: 0, STREAM: 0})
    requests: dict[str, int] = field(default_factory=lambda: {LONG_POLL: 0, STREAM: 0})  # polls, or connections
    # Once the commands are answered: the acknowledged orders each consumer has yet to receive.
    missing: dict[str, set[int]] | None = None
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)

    def receive(self, consumer: str, event: FeedEvent, at: float) -> None:
        if event.type != "order.placed":
            return
        if event.subject.id in self.received[consumer]:
            self.duplicates[consumer] += 1
            return
        self.received[consumer][event.subject.id] = at
        if self.missing is not None:
            self.missing[consumer].discard(event.subject.id)
            self.check()

    def answered(self) -> None:
        self.missing = {consumer: self.acknowledged.keys() - got.keys() for consumer, got in self.received.items()}
        self.check()

    def check(self) -> None:
        if self.missing is not None and not any(self.missing.values()):
            self.caught_up.set()


def delivery(ctx: Context, service: Server) -> list[Measurement]:
    seconds = 2 * ctx.sizes.seconds if ctx.sizes is SMOKE else DELIVERY_SECONDS
    found = asyncio.run(deliver(ctx, service, seconds))
    case = f"order.placed, 201 → consumer · {RATE} places/s for {seconds:g} s"
    rows = [
        Measurement(
            scenario=SCENARIO,
            case=f"POST /v1/orders · {RATE}/s open loop, while two consumers follow",
            contender="service",
            rate=len(found.acknowledged) / seconds,
            p50_ms=quantile_ms(sorted(found.command_seconds), 0.5),
            p99_ms=quantile_ms(sorted(found.command_seconds), 0.99),
            count=len(found.acknowledged),
            errors=found.failed.total(),
            extra={
                "sent": found.sent,
                "skipped": found.skipped,
                **{f"status_{status}": n for status, n in sorted(found.failed.items())},
                "service_cpu_share": found.service_cpu_seconds / seconds,
            },
        )
    ]
    for consumer, got in found.received.items():
        latencies = sorted(got[order] - at for order, at in found.acknowledged.items() if order in got)
        rows.append(
            Measurement(
                scenario=SCENARIO,
                case=case,
                contender=consumer,
                rate=len(latencies) / seconds,
                p50_ms=quantile_ms(latencies, 0.5),
                p99_ms=quantile_ms(latencies, 0.99),
                count=len(latencies),
                errors=len(found.acknowledged) - len(latencies),
                extra={
                    "min_ms": quantile_ms(latencies, 0.0),
                    "max_ms": quantile_ms(latencies, 1.0),
                    "duplicates": found.duplicates[consumer],
                    "requests": found.requests[consumer],
                },
            )
        )
    return rows


async def deliver(ctx: Context, service: Server, seconds: float) -> Delivery:
    found = Delivery()
    cursor = await head_cursor(ctx.database_url)
    url = service.url
    async with (
        httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=MAX_IN_FLIGHT)) as writer,
        httpx.AsyncClient(base_url=url, timeout=30) as polling,
        httpx.AsyncClient(base_url=url, timeout=30) as streaming,
    ):
        consumers = [
            asyncio.create_task(long_poll(polling, cursor, found)),
            asyncio.create_task(stream(streaming, cursor, found)),
        ]
        await writer.get("/healthz")
        await asyncio.sleep(1.0)  # both consumers wait at the head before the first command
        cpu = service.cpu_seconds()
        await place_open_loop(writer, ctx, seconds, found)
        found.service_cpu_seconds = service.cpu_seconds() - cpu
        found.answered()
        caught_up = asyncio.create_task(found.caught_up.wait())
        # Until both consumers have every order, one of them fails, or the catch-up time is over.
        await asyncio.wait([caught_up, *consumers], timeout=CATCH_UP_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        caught_up.cancel()
        await stopped(consumers)
    return found


async def stopped(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks``; raise what one of them failed with (a consumer's 4xx, a broken stream)."""
    for task in tasks:
        task.cancel()
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, Exception):
            raise outcome


async def place_open_loop(http: httpx.AsyncClient, ctx: Context, seconds: float, found: Delivery) -> None:
    body, rng = random_order(ctx.sizes.customers, ctx.sizes.products), random.Random(21)
    headers = {"Authorization": f"Bearer {ctx.write_token}"}
    started = time.perf_counter()
    sending: list[asyncio.Task[None]] = []
    for number in range(round(RATE * seconds)):
        due = started + number / RATE
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        order = body(rng)
        if found.in_flight >= MAX_IN_FLIGHT:
            found.skipped += 1
            continue
        sending.append(asyncio.create_task(place_one(http, order, headers, due, found)))
        found.sent += 1
    await asyncio.gather(*sending)


async def place_one(
    http: httpx.AsyncClient, body: dict[str, object], headers: dict[str, str], due: float, found: Delivery
) -> None:
    found.in_flight += 1
    try:
        response = await http.post("/v1/orders", json=body, headers=headers)
    except httpx.TransportError:
        found.failed[0] += 1
        return
    finally:
        found.in_flight -= 1
    arrived = time.perf_counter()
    if response.status_code != 201:
        found.failed[response.status_code] += 1
        return
    found.acknowledged[response.json()["id"]] = arrived
    found.command_seconds.append(arrived - due)


async def long_poll(http: httpx.AsyncClient, cursor: str, found: Delivery) -> None:
    while True:  # until cancelled
        found.requests[LONG_POLL] += 1
        response = await http.get("/v1/events", params={"after": cursor, "wait": 10, "limit": PAGE})
        arrived = time.perf_counter()
        response.raise_for_status()
        page = PAGE_DECODER.decode(response.content)
        for event in page.items:
            found.receive(LONG_POLL, event, arrived)
        cursor = page.next_cursor


async def stream(http: httpx.AsyncClient, cursor: str, found: Delivery) -> None:
    headers = {"Accept": "text/event-stream"}
    while True:  # until cancelled; a stream that ends (EVENTS_STREAM_SECONDS) is resumed where it stopped
        found.requests[STREAM] += 1
        async with http.stream("GET", "/v1/events", params={"after": cursor}, headers=headers) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    event = EVENT_DECODER.decode(line.removeprefix("data: "))
                    found.receive(STREAM, event, time.perf_counter())
                    cursor = event.id

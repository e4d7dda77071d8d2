"""The event feed over real HTTP while commands run: a long-polling and a streaming (SSE) consumer
each receive every acknowledged command's event exactly once, none of a refused one, in commit
order; and consumers that stop and resume from their own cursor (a page's next_cursor, or the
Last-Event-ID of a cut stream) miss nothing and see nothing twice."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from reads.cursor import decode_cursor
from reads.events import FEED
from service.app import create_app
from shared.config import Settings
from testkit.database import positioned_head
from tests.support import AUTH, serving
from tests.test_metrics import scrape

Body = dict[str, Any]

STREAM_SECONDS = 2  # each SSE connection ends this soon: every run reconnects a few times
WRITERS = 20
WRITE_SECONDS = 5.0
COMMANDS_PER_WRITER = 200
MAX_REQUESTS = 2000  # per consumer: a consumer that never catches up fails instead of looping
# What an order's events may be, in feed order (after order.).
LIFECYCLES = {("placed",), ("placed", "paid"), ("placed", "cancelled"), ("placed", "paid", "shipped"),
              ("placed", "paid", "cancelled")}  # fmt: skip


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[str]:
    """The app on a real socket; a write queue long enough that 20 writers are never shed (a 503
    would leave a command's outcome unknown to the test)."""
    live = msgspec.structs.replace(
        settings, events_stream_seconds=STREAM_SECONDS, write_pool_max_waiting=64, write_pool_timeout=30.0
    )
    async with serving(create_app(live)) as url:
        yield url


def position(event: Body) -> int:
    """The position sealed in an event's opaque id (reads.cursor)."""
    return decode_cursor(event["id"], int, bound_to=FEED)


# --- the writers ----------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the commands were answered: the event each acknowledged one appended (its type, subject
    and answer), and how many of each kind were refused."""

    acknowledged: list[tuple[str, int, Body]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    orders: list[int] = field(default_factory=list)  # placed, for any writer to pay, ship or cancel

    async def send(
        self, client: httpx.AsyncClient, path: str, event: str, body: Body | None = None, **headers: str
    ) -> Body | None:
        """The command's answer, or None when it was refused (409)."""
        response = await client.post(path, json=body, headers={**AUTH, **headers})
        if response.status_code == 409:
            self.refused[event] += 1
            return None
        assert response.status_code in (200, 201), (path, response.status_code, response.text)
        answer: Body = response.json()
        if response.headers.get("idempotent-replayed") != "true":
            self.acknowledged.append((event, answer["id"], answer))
        return answer


def assert_exactly_the_acknowledged(received: list[Body], ledger: Ledger) -> None:
    def key(type_: str, subject: Body, data: Body) -> tuple[str, str, int, str]:
        return type_, subject["type"], subject["id"], json.dumps(data, sort_keys=True)

    expected = Counter(key(t, {"type": t.split(".")[0], "id": i}, data) for t, i, data in ledger.acknowledged)
    got = Counter(key(event["type"], event["subject"], event["data"]) for event in received)
    assert max(expected.values()) == 1
    assert (expected - got, got - expected) == (Counter(), Counter()), "missing, then unexpected"


def assert_in_commit_order(received: list[Body]) -> None:
    versions: defaultdict[tuple[str, int], list[int]] = defaultdict(list)
    lifecycles: defaultdict[int, list[str]] = defaultdict(list)
    for event in received:
        subject = (event["subject"]["type"], event["subject"]["id"])
        if "version" in event["data"]:
            versions[subject].append(event["data"]["version"])
        if subject[0] == "order":
            lifecycles[subject[1]].append(event["type"].removeprefix("order."))
    assert all(seen == sorted(set(seen)) for seen in versions.values())
    assert {tuple(events) for events in lifecycles.values()} <= LIFECYCLES


@dataclass(frozen=True)
class Catalogue:
    customers: list[int]
    products: list[int]  # little stock: orders are refused for want of it
    spare: int  # stock enough for every writer's opening order
    empty: int  # no stock, never restocked


async def stock_the_shop(url: str, ledger: Ledger) -> Catalogue:
    async def product(sku: str, stock: int) -> int:
        body = {"sku": sku, "name": "Mug", "price_cents": 700, "stock": stock}
        answer = await ledger.send(client, "/v1/products", "product.created", body)
        assert answer is not None
        return int(answer["id"])

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        customers = []
        for n in range(5):
            body = {"email": f"live{n}@example.com", "name": "Ada"}
            answer = await ledger.send(client, "/v1/customers", "customer.created", body)
            assert answer is not None
            customers.append(int(answer["id"]))
        products = [await product(f"LIVE-{n}", 8) for n in range(4)]
        return Catalogue(customers, products, await product("SPARE", 1000), await product("EMPTY", 0))


def order(customer_id: int, lines: list[tuple[int, int]]) -> Body:
    return {"customer_id": customer_id, "items": [{"product_id": p, "quantity": q} for p, q in lines]}


async def opening(client: httpx.AsyncClient, ledger: Ledger, shop: Catalogue, number: int) -> None:
    """Commands refused whatever the other writers do, and a replay, which appends nothing."""
    customer = shop.customers[number % len(shop.customers)]
    assert await ledger.send(client, "/v1/orders", "order.placed", order(customer, [(shop.empty, 1)])) is None
    key = {"Idempotency-Key": f"opening-{number}"}
    placed = await ledger.send(client, "/v1/orders", "order.placed", order(customer, [(shop.spare, 1)]), **key)
    assert placed is not None
    assert await ledger.send(client, "/v1/orders", "order.placed", order(customer, [(shop.spare, 1)]), **key) == placed
    assert await ledger.send(client, f"/v1/orders/{placed['id']}/ship", "order.shipped") is None  # pending
    assert await ledger.send(client, f"/v1/orders/{placed['id']}/pay", "order.paid") is not None
    assert await ledger.send(client, f"/v1/orders/{placed['id']}/pay", "order.paid") is None  # twice
    ledger.orders.append(placed["id"])


async def one_command(client: httpx.AsyncClient, ledger: Ledger, shop: Catalogue, rng: random.Random) -> None:
    action = rng.choice(["place"] * 3 + ["pay"] * 2 + ["ship"] * 2 + ["cancel", "restock"])
    if action == "place":
        lines = [(product, rng.randint(1, 3)) for product in rng.sample(shop.products, rng.randint(1, 2))]
        placed = await ledger.send(client, "/v1/orders", "order.placed", order(rng.choice(shop.customers), lines))
        if placed is not None:
            ledger.orders.append(placed["id"])
    elif action == "restock":
        body = {"quantity": rng.randint(1, 4)}
        await ledger.send(client, f"/v1/products/{rng.choice(shop.products)}/restock", "product.restocked", body)
    else:
        event = {"pay": "order.paid", "ship": "order.shipped", "cancel": "order.cancelled"}[action]
        await ledger.send(client, f"/v1/orders/{rng.choice(ledger.orders)}/{action}", event)


async def write(url: str, ledger: Ledger, shop: Catalogue, writers: int, seconds: float) -> None:
    """``writers`` clients at once, each for ``seconds`` and COMMANDS_PER_WRITER commands at most."""
    until = time.monotonic() + seconds

    async def writer(number: int) -> None:
        rng = random.Random(number)  # noqa: S311 - picks commands, guards nothing
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await opening(client, ledger, shop, number)
            for _ in range(COMMANDS_PER_WRITER):
                if time.monotonic() > until:
                    return
                await one_command(client, ledger, shop, rng)

    await asyncio.gather(*(writer(number) for number in range(writers)))


# --- the consumers --------------------------------------------------------------------------------


@dataclass
class Head:
    """The feed's head, read on the test's own connection; ``last`` is where it stood once the
    writers stopped, where the consumers stop."""

    db: asyncpg.Connection
    last: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one connection, two consumers

    async def now(self) -> int:
        async with self.lock:
            last: int = await self.db.fetchval("SELECT last FROM events_head")
            return last

    async def set(self) -> None:
        """Where the head stands once the rounds asked for by the last commands have run (commands
        answer at their commit, before their round)."""
        async with self.lock:
            self.last = await positioned_head(self.db)

    def reached(self, received: list[Body]) -> bool:
        return self.last is not None and (position(received[-1]) if received else 0) >= self.last

    async def moved_past(self, past: int) -> None:
        """Wait (10 s at most) while commands append events past ``past``, or until they stop."""
        for _ in range(200):
            if self.last is not None or await self.now() > past:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no event past position {past} within 10 s")


async def pages(
    client: httpx.AsyncClient, received: list[Body], after: str | None, done: Callable[[], bool]
) -> str | None:
    """Long-polled pages from ``after`` into ``received`` until ``done()``; the cursor to resume from."""
    for _ in range(MAX_REQUESTS):
        if done():
            return after
        params = {"wait": 2, "limit": 7} | ({} if after is None else {"after": after})
        response = await client.get("/v1/events", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        received += page["items"]
        after = page["next_cursor"]
    raise AssertionError(f"not done after {MAX_REQUESTS} pages")


class ServerSentEvents:
    """A stream's lines as EventSource reads them: fields gathered until a blank line dispatches."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def line(self, line: str) -> Body | None:
        if line.startswith(":"):  # a comment: the keep-alive
            return None
        if line:
            name, _, value = line.partition(":")
            assert name not in self.fields, f"{name} twice in one event"
            self.fields[name] = value.removeprefix(" ")
            return None
        fields, self.fields = self.fields, {}
        if "data" not in fields:  # the retry: advice
            return None
        event: Body = json.loads(fields["data"])
        assert (fields.get("id"), fields.get("event")) == (event["id"], event["type"])
        return event


async def next_event(lines: AsyncIterator[str]) -> Body | None:
    """The stream's next event; None if it ends first."""
    events = ServerSentEvents()
    async for line in lines:
        if (event := events.line(line)) is not None:
            return event
    return None


@asynccontextmanager
async def event_stream(client: httpx.AsyncClient, last_event_id: str | None) -> AsyncIterator[AsyncIterator[str]]:
    headers = {"Accept": "text/event-stream"} | ({} if last_event_id is None else {"Last-Event-ID": last_event_id})
    async with client.stream("GET", "/v1/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield response.aiter_lines()


async def stream(client: httpx.AsyncClient, received: list[Body], head: Head, *, cut_after: int | None = None) -> int:
    """Streams into ``received``, each resumed from the last event dispatched, until ``head`` is
    reached; with ``cut_after``, the first stream is cut once that many events have come, in the
    middle of the next one (its id line read, its data not). The number of connections."""
    start = len(received)
    for connections in range(1, MAX_REQUESTS):
        last_event_id = received[-1]["id"] if received else None
        async with event_stream(client, last_event_id) as lines:
            events = ServerSentEvents()
            async for line in lines:
                if cut_after is not None and len(received) - start >= cut_after and line.startswith("id:"):
                    return connections
                if (event := events.line(line)) is not None:
                    received.append(event)
        if head.reached(received):
            return connections
    raise AssertionError(f"not done after {MAX_REQUESTS} streams")


async def all_pages(client: httpx.AsyncClient, after: str | None = None) -> list[Body]:
    """The feed after ``after``, a page at a time, as it stands."""
    found: list[Body] = []
    for _ in range(MAX_REQUESTS):
        response = await client.get("/v1/events", params={"limit": 1000} | ({} if after is None else {"after": after}))
        assert response.status_code == 200, response.text
        page = response.json()
        if not page["items"]:
            return found
        found += page["items"]
        after = page["next_cursor"]
    raise AssertionError(f"not done after {MAX_REQUESTS} pages")


async def clients_waiting(client: httpx.AsyncClient, mode: str, count: int) -> None:
    """Wait (5 s at most) until the server has ``count`` feed clients waiting in ``mode`` (events_waiting)."""
    for _ in range(100):
        if (await scrape(client))("events_waiting", mode=mode) == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {count} {mode} clients waiting within 5 s")


# --- the tests ------------------------------------------------------------------------------------


async def test_each_consumer_receives_every_acknowledged_command_once_and_no_refused_one_in_commit_order(
    served: str, db: asyncpg.Connection
) -> None:
    ledger, head = Ledger(), Head(db)
    shop = await stock_the_shop(served, ledger)
    polled: list[Body] = []
    streamed: list[Body] = []
    client = httpx.AsyncClient(base_url=served, timeout=30)
    async with asyncio.timeout(120), client, asyncio.TaskGroup() as consumers:
        consumers.create_task(pages(client, polled, None, lambda: head.reached(polled)))
        connections = consumers.create_task(stream(client, streamed, head))
        await write(served, ledger, shop, WRITERS, WRITE_SECONDS)
        await head.set()

    # Every writer's opening had a command of each kind refused.
    assert min(ledger.refused[kind] for kind in ("order.placed", "order.paid", "order.shipped")) >= WRITERS
    assert head.last == len(ledger.acknowledged)
    assert connections.result() >= 2, "each stream ended after 2 s and was resumed with Last-Event-ID"
    for received in (polled, streamed):
        assert [position(event) for event in received] == list(range(1, head.last + 1))
        assert_exactly_the_acknowledged(received, ledger)
        assert_in_commit_order(received)


async def test_consumers_that_stop_and_resume_from_their_own_cursor_miss_nothing_and_see_nothing_twice(
    served: str, db: asyncpg.Connection
) -> None:
    ledger, head = Ledger(), Head(db)
    shop = await stock_the_shop(served, ledger)
    paged: list[Body] = []
    streamed: list[Body] = []
    stopped_at: list[int] = []  # each consumer's last position before it went away

    async def page_with_a_pause() -> None:
        async with httpx.AsyncClient(base_url=served, timeout=30) as client:
            cursor = await pages(client, paged, None, lambda: len(paged) >= 15)
        stopped_at.append(position(paged[-1]))
        await head.moved_past(position(paged[-1]) + 20)  # gone while commands go on
        async with httpx.AsyncClient(base_url=served, timeout=30) as client:
            await pages(client, paged, cursor, lambda: head.reached(paged))

    async def stream_with_a_cut() -> None:
        async with httpx.AsyncClient(base_url=served, timeout=30) as client:
            await stream(client, streamed, head, cut_after=10)
        stopped_at.append(position(streamed[-1]))
        await head.moved_past(position(streamed[-1]) + 20)
        async with httpx.AsyncClient(base_url=served, timeout=30) as client:
            await stream(client, streamed, head)

    async with asyncio.timeout(120), asyncio.TaskGroup() as consumers:
        consumers.create_task(page_with_a_pause())
        consumers.create_task(stream_with_a_cut())
        await write(served, ledger, shop, 5, 3.0)
        await head.set()

    async with asyncio.timeout(60), httpx.AsyncClient(base_url=served, timeout=30) as client:
        everything = await all_pages(client)
        # At least once: from an older cursor, the events after it again, each once.
        older = everything[len(everything) // 2]
        again_paged = await all_pages(client, older["id"])
        again_streamed = [older]
        await stream(client, again_streamed, head)
        # Every stream's server side has ended, the cut one's included, and no long-poll is left behind.
        await clients_waiting(client, "stream", 0)
        await clients_waiting(client, "long-poll", 0)
    assert max(stopped_at) < len(everything), "both went away mid-way, the stream in the middle of an event"
    assert_exactly_the_acknowledged(everything, ledger)
    assert [position(event) for event in everything] == list(range(1, len(ledger.acknowledged) + 1))
    assert paged == everything
    assert streamed == everything
    assert again_paged == again_streamed[1:] == everything[len(everything) // 2 + 1 :]


# --- waiting clients, over real sockets -------------------------------------------------------------


async def head_cursor(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/events")
    assert response.status_code == 200, response.text
    cursor: str = response.json()["next_cursor"]
    return cursor


async def test_a_long_poll_whose_client_went_away_stops_waiting_at_once(settings: Settings) -> None:
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        after = await head_cursor(client)
        port = int(url.rsplit(":", 1)[1])
        request = f"GET /v1/events?after={after}&wait=30 HTTP/1.1\r\nHost: test\r\n\r\n".encode()
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, writer in connections:
            writer.write(request)
        await clients_waiting(client, "long-poll", 3)
        for _, writer in connections:
            writer.close()
        # Each stops waiting as its client goes, not 30 s later when its wait runs out.
        await clients_waiting(client, "long-poll", 0)
        # And a client that stays still gets its page.
        assert (await client.get("/v1/events", params={"after": after, "wait": 1})).json()["items"] == []


async def test_long_polls_woken_together_by_one_event_are_all_answered_with_it(settings: Settings) -> None:
    """Far more long-polls than the read pool has connections and queue places: the event wakes them
    all at once, and each gets it (none a 503 for a full queue)."""
    small = msgspec.structs.replace(settings, read_pool_min_size=1, read_pool_max_size=2, read_pool_max_waiting=2)
    async with serving(create_app(small)) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        after = await head_cursor(client)
        polls = []
        for waiting in range(1, 13):  # one after the other: each one's first page is an ordinary query
            polls.append(asyncio.create_task(client.get("/v1/events", params={"after": after, "wait": 20})))
            await clients_waiting(client, "long-poll", waiting)
        created = await client.post(
            "/v1/products", json={"sku": "WAKE", "name": "Mug", "price_cents": 700, "stock": 1}, headers=AUTH
        )
        assert created.status_code == 201, created.text
        async with asyncio.timeout(15):
            answers = await asyncio.gather(*polls)
    assert [answer.status_code for answer in answers] == [200] * 12
    assert all([event["data"] for event in answer.json()["items"]] == [created.json()] for answer in answers)

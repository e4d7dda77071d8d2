"""The event feed: what commands append, and GET /v1/events as pages, long-polls and cursors."""

from __future__ import annotations

import asyncio
import contextlib
import json
from functools import partial
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import reads.events
from reads.cursor import encode_cursor
from service.app import create_app
from service.schema import head_revision
from shared.config import Settings, asyncpg_dsn
from shared.dto import OrderLine, PlaceOrder
from shared.http import ENCODER
from testkit.database import positioned_head
from tests.reads.factories import Shop
from tests.support import AUTH, eventually, serving
from writes import events
from writes.events import NewEvent
from writes.handlers.orders import place_order
from writes.side import open_write_side


async def feed(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def all_events(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = await feed(client, **params, **({} if after is None else {"after": after}))
        found += page["items"]
        if not page["items"]:
            return found
        after = page["next_cursor"]


async def test_each_command_appends_one_event_whose_data_is_its_answer(client: httpx.AsyncClient, shop: Shop) -> None:
    customer = await shop.customer()
    product = await shop.product()
    restocked = await shop._command(f"/v1/products/{product['id']}/restock", {"quantity": 5})
    repriced = await shop.reprice(product["id"], 999)
    order = await shop.order(customer["id"], [(product["id"], 2)])
    paid = await shop.pay(order["id"])
    shipped = await shop.ship(order["id"])
    second = await shop.order(customer["id"], [(product["id"], 1)])
    cancelled = await shop.cancel(second["id"])

    found = await all_events(client)
    assert [(e["type"], e["subject"], e["data"]) for e in found] == [
        ("customer.created", {"type": "customer", "id": customer["id"]}, customer),
        ("product.created", {"type": "product", "id": product["id"]}, product),
        ("product.restocked", {"type": "product", "id": product["id"]}, restocked),
        ("product.repriced", {"type": "product", "id": product["id"]}, repriced),
        ("order.placed", {"type": "order", "id": order["id"]}, order),
        ("order.paid", {"type": "order", "id": order["id"]}, paid),
        ("order.shipped", {"type": "order", "id": order["id"]}, shipped),
        ("order.placed", {"type": "order", "id": second["id"]}, second),
        ("order.cancelled", {"type": "order", "id": second["id"]}, cancelled),
    ]
    assert len({e["id"] for e in found}) == len(found)
    assert all(e["occurred_at"].endswith("Z") for e in found)
    # The data is what the query side returns for the resource now (the last event of each).
    assert (await client.get(f"/v1/orders/{second['id']}")).json() == found[-1]["data"]


async def test_refused_commands_and_replays_append_nothing(client: httpx.AsyncClient, shop: Shop) -> None:
    customer = await shop.customer()
    product = await shop.product(stock=1)
    key = {**AUTH, "Idempotency-Key": "order-1"}
    body = {"customer_id": customer["id"], "items": [{"product_id": product["id"], "quantity": 1}]}
    first = await client.post("/v1/orders", json=body, headers=key)
    replay = await client.post("/v1/orders", json=body, headers=key)
    assert (first.status_code, replay.status_code, replay.headers["idempotent-replayed"]) == (201, 201, "true")
    short = await client.post("/v1/orders", json=body, headers=AUTH)
    assert short.status_code == 409
    taken = await client.post("/v1/customers", json={"email": customer["email"], "name": "X"}, headers=AUTH)
    assert taken.status_code == 409
    unpaid = await client.post(f"/v1/orders/{first.json()['id']}/ship", headers=AUTH)
    assert unpaid.status_code == 409
    assert [e["type"] for e in await all_events(client)] == ["customer.created", "product.created", "order.placed"]


async def test_an_upsert_and_an_import_append_an_event_per_resource(client: httpx.AsyncClient, shop: Shop) -> None:
    kept = await shop.customer(email="kept@example.com")
    product = await shop.product()
    upsert = {
        "customers": [{"email": "kept@example.com", "name": "Renamed"}, {"email": "new@example.com", "name": "N"}]
    }
    assert (await client.post("/v1/customers/upsert", json=upsert, headers=AUTH)).json() == {
        "inserted": 1,
        "updated": 1,
    }
    lines = [
        {"customer_id": kept["id"], "status": status, "created_at": "2026-01-02T03:04:05+02:00",
         "items": [{"product_id": product["id"], "quantity": 2, "unit_price_cents": 150}]}
        for status in ("paid", "shipped")
    ]  # fmt: skip
    ndjson = "".join(json.dumps(line) + "\n" for line in lines)
    imported = await client.post(
        "/v1/orders/import", content=ndjson, headers={**AUTH, "Content-Type": "application/x-ndjson"}
    )
    assert imported.json() == {"imported": 2}

    found = await all_events(client)
    by_email = {e["data"]["email"]: (e["type"], e["data"]) for e in found[2:4]}
    assert by_email["kept@example.com"] == ("customer.updated", {**kept, "name": "Renamed"})
    assert by_email["new@example.com"][0] == "customer.created"
    orders = found[4:]
    assert [e["type"] for e in orders] == ["order.imported", "order.imported"]
    for event in orders:
        # Field by field what the query side answers, timestamps in UTC included.
        assert event["data"] == (await client.get(f"/v1/orders/{event['subject']['id']}")).json()
        assert event["data"]["created_at"] == "2026-01-02T01:04:05Z"


async def test_pages_resume_from_their_cursor_and_filter_by_type(client: httpx.AsyncClient, shop: Shop) -> None:
    customer = await shop.customer()
    product = await shop.product(stock=100)
    orders = [await shop.order(customer["id"], [(product["id"], 1)]) for _ in range(5)]
    for order in orders[:3]:
        await shop.pay(order["id"])

    first = await feed(client, limit=3)
    assert [e["type"] for e in first["items"]] == ["customer.created", "product.created", "order.placed"]
    rest = await feed(client, after=first["next_cursor"], limit=100)
    assert len(rest["items"]) == 4 + 3
    # A short page ends at the head: asking again from it finds nothing, and the same cursor back.
    assert await feed(client, after=rest["next_cursor"]) == {"items": [], "next_cursor": rest["next_cursor"]}
    # Any event id resumes after that event.
    assert (await feed(client, after=first["items"][1]["id"], limit=1))["items"][0]["type"] == "order.placed"

    paid = await all_events(client, types="order.paid")
    assert [e["subject"]["id"] for e in paid] == [order["id"] for order in orders[:3]]
    both = await feed(client, types="order.paid,customer.created")
    assert [e["type"] for e in both["items"]] == ["customer.created", "order.paid", "order.paid", "order.paid"]


@pytest.mark.parametrize(
    ("params", "status", "problem"),
    [
        ({"after": "not-a-cursor"}, 400, "/problems/bad-cursor"),
        ({"types": "order.lost"}, 422, "/problems/invalid-input"),
        ({"limit": "1001"}, 422, "/problems/invalid-input"),
        ({"wait": "31"}, 422, "/problems/invalid-input"),
    ],
)
async def test_bad_parameters_are_problems(
    client: httpx.AsyncClient, params: dict[str, str], status: int, problem: str
) -> None:
    response = await client.get("/v1/events", params=params)
    assert (response.status_code, response.json()["type"]) == (status, problem)


async def test_a_tampered_cursor_is_a_400(client: httpx.AsyncClient, shop: Shop) -> None:
    await shop.customer()
    cursor = (await feed(client))["next_cursor"]
    tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    response = await client.get("/v1/events", params={"after": tampered})
    assert response.status_code == 400
    # Any event id goes with any filter here: the refusal says what an id is, not "other filters".
    assert "not an event id of this feed" in response.json()["detail"]


async def test_an_empty_cursor_names_no_event(client: httpx.AsyncClient, shop: Shop) -> None:
    """An EventSource sends no Last-Event-ID for an empty id, but a client of its own may send an
    empty one, or ``after=`` for a cursor it does not have: both start where no cursor would."""
    await shop.customer()
    for response in (
        await client.get("/v1/events", headers={"Last-Event-ID": ""}),
        await client.get("/v1/events", params={"after": ""}),
        await client.get("/v1/events", params={"after": ""}, headers={"Last-Event-ID": ""}),
    ):
        assert response.status_code == 200, response.text
        assert [event["type"] for event in response.json()["items"]] == ["customer.created"]


async def test_a_fraction_of_a_second_to_wait_is_refused_as_not_an_integer(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/events", params={"wait": "1.5"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("query parameter `wait` must be an integer (")
    assert response.json()["detail"].endswith("got '1.5' - at `$.wait`")


@pytest.mark.parametrize("position", [b"-1", b"9223372036854775808", b"18446744073709551616", b"1.5", b'"1"'])
async def test_a_cursor_sealed_around_a_position_no_feed_can_have_is_a_400(
    client: httpx.AsyncClient, position: bytes
) -> None:
    """A cursor is sealed, not secret (reads.cursor): one forged around a position outside bigint's
    range, or not an integer, is refused as not fitting the feed, from `after` and from Last-Event-ID."""
    forged = encode_cursor(msgspec.Raw(position), bound_to=reads.events.FEED)
    after = await client.get("/v1/events", params={"after": forged})
    resumed = await client.get("/v1/events", headers={"Last-Event-ID": forged})
    for response in (after, resumed):
        assert (response.status_code, response.json()["type"]) == (400, "/problems/bad-cursor"), response.text


@pytest.mark.parametrize(
    ("accept", "stream"),
    [
        ("text/event-stream", True),
        ("Text/Event-Stream", True),  # media types compare case-insensitively
        ("application/json, text/event-stream", True),
        ("text/event-stream;charset=utf-8, */*;q=0.1", True),
        (None, False),
        ("*/*", False),
        ("text/event-stream;q=0, application/json", False),  # refused by the client
        ("text/event-stream;q=0.2, application/json", False),  # JSON preferred
        ("text/event-stream;q=2", False),  # not a weight
        ("text/event-streams", False),
    ],
)
def test_the_stream_is_for_the_clients_whose_accept_prefers_it(accept: str | None, stream: bool) -> None:
    assert reads.events.wants_stream(accept) is stream


async def test_a_client_that_refuses_the_stream_gets_a_page(client: httpx.AsyncClient, shop: Shop) -> None:
    await shop.customer()
    response = await client.get("/v1/events", headers={"Accept": "text/event-stream;q=0, application/json"})
    assert response.headers["content-type"] == "application/json"
    assert [event["type"] for event in response.json()["items"]] == ["customer.created"]


async def test_a_cursor_before_the_purged_events_is_a_410(
    client: httpx.AsyncClient, shop: Shop, settings: Settings, db: asyncpg.Connection
) -> None:
    await shop.customer(email="old@example.com")
    start = (await feed(client, limit=1))["items"][0]["id"]
    await shop.customer(email="older@example.com")
    await shop.customer(email="new@example.com")
    await positioned_head(db)  # the commands answered before their round
    # The first two are past the retention; the purge stops at the first one still kept.
    await db.execute("UPDATE events SET occurred_at = now() - interval '8 days' WHERE position <= 2")
    pool = await open_write_side(settings, head_revision())
    try:
        # A write side purges as it opens (so the oldest event's age is published from the start);
        # a round run now purges whatever that one has not, and both together purge the two.
        await events.purge_round(pool)
    finally:
        await pool.close()
    assert await db.fetchval("SELECT purged_through FROM events_horizon") == 2
    assert await db.fetchval("SELECT min(position) FROM events") == 3
    gone = await client.get("/v1/events", params={"after": start})
    assert gone.status_code == 410
    assert "position 2" in gone.json()["detail"]
    kept = await feed(client)
    assert [e["data"]["email"] for e in kept["items"]] == ["new@example.com"]


async def test_a_stream_the_purge_overtakes_ends_whole_and_its_resume_is_a_410(
    settings: Settings, shop: Shop, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that reads slower than the purge deletes: its next page would start before the
    purged events. It ends as a stream ends (the last chunk sent), and the client's resume from the
    last event it got is the 410 a page would get."""
    for email in ("a@example.com", "b@example.com", "c@example.com"):
        await shop.customer(email=email)
    await positioned_head(db)
    read_page, pages = reads.events.read_page, 0

    async def purged_after_the_first_page(*args: Any, **kwargs: Any) -> reads.events.Fetched:
        nonlocal pages
        pages += 1
        if pages == 2:  # the purge overtakes the stream between its first page and its second
            await db.execute("DELETE FROM events WHERE position <= 2")
            await db.execute("UPDATE events_horizon SET purged_through = 2")
        return await read_page(*args, **kwargs)

    monkeypatch.setattr(reads.events, "read_page", purged_after_the_first_page)
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as http:
        stream = {"Accept": "text/event-stream"}
        async with http.stream("GET", "/v1/events", params={"limit": 1}, headers=stream) as response:
            lines = [line async for line in response.aiter_lines()]  # a cut body would raise here
        ids = [line.removeprefix("id: ") for line in lines if line.startswith("id: ")]
        assert len(ids) == 1
        resumed = await http.get("/v1/events", headers={**stream, "Last-Event-ID": ids[0]})
    assert resumed.status_code == 410, resumed.text
    assert "position 2" in resumed.json()["detail"]


async def test_a_write_side_purges_as_it_opens(shop: Shop, settings: Settings, db: asyncpg.Connection) -> None:
    # Its first purge round runs at once, not after the first period (10 s): the oldest kept
    # event's age (/metrics) is there from the first scrape.
    await shop.customer(email="old@example.com")
    await shop.customer(email="new@example.com")
    await positioned_head(db)
    await db.execute("UPDATE events SET occurred_at = now() - interval '8 days' WHERE position <= 1")
    pool = await open_write_side(settings, head_revision())

    async def purged() -> bool:
        return bool(await db.fetchval("SELECT purged_through FROM events_horizon") == 1)

    try:
        await eventually(purged, within=5)  # half a purge period
    finally:
        await pool.close()


async def test_a_long_poll_answers_when_an_event_arrives(client: httpx.AsyncClient, shop: Shop) -> None:
    await shop.customer()
    head = (await feed(client))["next_cursor"]
    # Nothing new within the wait: an empty page, at the same position.
    assert await feed(client, after=head, wait=1) == {"items": [], "next_cursor": head}
    waiting = asyncio.create_task(feed(client, after=head, wait=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    product = await shop.product()
    page = await asyncio.wait_for(waiting, 10)
    assert [(e["type"], e["data"]) for e in page["items"]] == [("product.created", product)]


async def test_an_event_appended_by_a_transaction_that_commits_late_is_not_skipped(
    client: httpx.AsyncClient, shop: Shop, settings: Settings, db: asyncpg.Connection
) -> None:
    """The gap a feed of ``WHERE id > last`` has: an event inserted first but committed last."""
    customer = await shop.customer()
    product = await shop.product(stock=10)
    seen = (await feed(client))["next_cursor"]
    appended, release = asyncio.Event(), asyncio.Event()
    inserted: list[int] = []  # the held event's row id, as its transaction sees it

    async def slow_order(session: Any) -> int:
        # What POST /v1/orders runs (the handler, then the pipeline's append), held open after it.
        command = PlaceOrder(customer_id=customer["id"], items=[OrderLine(product_id=product["id"], quantity=1)])
        view = await place_order(command, session)
        await events.append(session, [NewEvent("order.placed", view.id, ENCODER.encode(view).decode())])
        inserted.append(await session.scalar(text("SELECT id FROM events WHERE position IS NULL")))
        appended.set()
        await release.wait()
        return view.id

    pool = await open_write_side(settings, head_revision())
    try:
        held = asyncio.create_task(pool.run(slow_order))
        await asyncio.wait_for(appended.wait(), 10)
        later = [await shop.customer(email=f"later{n}@example.com") for n in range(3)]
        page = await feed(client, after=seen)
        assert [e["data"] for e in page["items"]] == later
        # Inserted before them: a reader of WHERE id > last that had read them would never return it.
        later_ids = await db.fetchval("SELECT array_agg(id) FROM events WHERE type = 'customer.created' AND id > 1")
        assert inserted[0] < min(later_ids)
        release.set()
        order_id = await asyncio.wait_for(held, 10)
    finally:
        release.set()
        await pool.close()
    after_it = await feed(client, after=page["next_cursor"])
    assert [(e["type"], e["subject"]["id"]) for e in after_it["items"]] == [("order.placed", order_id)]


async def test_a_feed_read_after_a_commands_answer_shows_its_event_even_under_concurrent_commands(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection
) -> None:
    """Events are positioned after their commit, by a round the command does not wait for: a page
    read after the answer, with no wait asked, waits for that round and shows the event."""
    seen = (await feed(client))["next_cursor"]

    async def created_and_read_at_once(n: int) -> bool:
        customer = await shop.customer(email=f"c{n}@example.com")
        own = await feed(client, after=seen, limit=1000)  # no wait: as soon as the 201 is in
        return customer in [e["data"] for e in own["items"]]

    assert await asyncio.gather(*(created_and_read_at_once(n) for n in range(12))) == [True] * 12
    assert await db.fetchval("SELECT count(*) FROM events WHERE position IS NULL") == 0
    positions = await db.fetchval("SELECT array_agg(position ORDER BY position) FROM events")
    assert positions == list(range(1, len(positions) + 1))
    assert await db.fetchval("SELECT last FROM events_head") == len(positions)


async def test_a_filtered_page_waits_for_the_rounds_of_its_own_types_only(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first page that reaches the end of the feed waits for committed events still unpositioned
    (SETTLE_WITHIN, when no round comes), but a page filtered by ``types`` only for its own."""
    waited: list[tuple[Any, ...]] = []
    positioned = reads.events._positioned

    async def recorded(db: Any, pending: int, *types: Any) -> None:
        waited.append(types)
        await positioned(db, pending, *types)

    monkeypatch.setattr(reads.events, "_positioned", recorded)
    monkeypatch.setattr(reads.events, "SETTLE_WITHIN", 0.2)
    holder = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with holder.transaction():
            await holder.execute("SELECT FROM events_head FOR UPDATE")  # no round can position meanwhile
            await db.execute(events.APPEND, ["customer.updated"], [1], ['{"id": 1}'])  # committed, unpositioned
            other = await feed(client, types="order.paid")
            own = await feed(client, types="customer.updated")
            everything = await feed(client)
    finally:
        await holder.close()
    assert waited == [(["customer.updated"],), (None,)]  # not the page of other types
    for page in (other, own, everything):
        assert page["items"] == []  # unpositioned still: answered without it, which follows later


async def test_an_event_a_stopped_process_left_unpositioned_is_positioned_by_the_sweep(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection
) -> None:
    """A process that stops between a command's commit and its round leaves the event unpositioned:
    unreadable, not lost. The rounds that run every second in every process position it."""
    customer = await shop.customer()
    seen = (await feed(client))["next_cursor"]
    await db.execute(events.APPEND, ["customer.updated"], [customer["id"]], [json.dumps(customer)])
    assert await db.fetchval("SELECT count(*) FROM events WHERE position IS NULL") == 1
    page = await feed(client, after=seen, wait=10)
    assert [(e["type"], e["data"]) for e in page["items"]] == [("customer.updated", customer)]


async def test_a_failed_round_costs_the_command_nothing_and_the_next_round_positions_its_event(
    client: httpx.AsyncClient,
    shop: Shop,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The command has committed when its round fails: it answered at its commit, and its event
    comes with a later round."""
    seen = (await feed(client))["next_cursor"]
    monkeypatch.setattr(events, "POSITION", "SELECT events_position_gone($1)")
    with caplog.at_level("WARNING", logger="orders_api.events"):
        customer = await shop.customer()  # asserts the 201
        for _ in range(200):  # the round it asked for, which fails after the answer
            if "positioning events failed" in caplog.text:
                break
            await asyncio.sleep(0.01)
    assert "positioning events failed" in caplog.text
    assert await db.fetchval("SELECT count(*) FROM events WHERE position IS NULL") == 1
    monkeypatch.undo()
    page = await feed(client, after=seen, wait=10)
    assert [(e["type"], e["data"]) for e in page["items"]] == [("customer.created", customer)]


async def test_the_rounds_open_their_connection_again_after_it_was_lost(
    client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection
) -> None:
    """The positioner's own connection (writes.events.RoundConnection) dies with its backend: a
    later round opens another, and every committed event reaches the feed."""
    seen = (await feed(client))["next_cursor"]
    first = await shop.customer()
    assert [e["data"] for e in (await feed(client, after=seen))["items"]] == [
        first
    ]  # a round ran: its connection is open
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()",
        events.POSITION,
    )
    assert killed == 1  # the rounds' connection, the only one that positions
    second = await shop.customer(email="second@example.com")  # asserts the 201, whatever its round did
    page = await feed(client, after=seen, wait=10)
    items = page["items"]
    if len(items) < 2:
        items += (await feed(client, after=page["next_cursor"], wait=10))["items"]
    assert [e["data"] for e in items] == [first, second]


async def test_a_stopping_positioner_positions_what_was_committed_since_its_last_round(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """Commands answer before their round: a process that stops runs one last round for them, even
    inside the spacing between rounds, rather than leaving them to another process's sweep."""
    unpositioned = "SELECT count(*) FROM events WHERE position IS NULL"
    connection = events.RoundConnection(settings)
    positioner = events.Positioner(partial(connection.run, events.position_all), spacing=60.0)
    rounds = asyncio.create_task(positioner.run())
    try:
        await db.execute(events.APPEND, ["customer.updated"], [1], ['{"id": 1}'])
        positioner.wanted()
        await positioned_head(db)  # the first round begins at once
        await db.execute(events.APPEND, ["customer.updated"], [2], ['{"id": 2}'])
        positioner.wanted()  # the next round would wait a minute for its spacing
        await asyncio.sleep(0.2)
        assert await db.fetchval(unpositioned) == 1
    finally:
        rounds.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rounds
        await connection.aclose()
    assert await db.fetchval(unpositioned) == 0
    assert await db.fetchval("SELECT array_agg(subject_id ORDER BY position) FROM events") == [1, 2]


async def test_events_round_ms_spaces_a_processs_rounds(settings: Settings, db: asyncpg.Connection) -> None:
    """EVENTS_ROUND_MS reaches the process's positioner: the round after a command's waits for the
    rest of the spacing (1 s here), then comes."""
    unpositioned = "SELECT count(*) FROM events WHERE position IS NULL"

    async def appending(subject_id: int, session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))  # begins the transaction, for the driver's statement
        await events.append(session, [NewEvent("customer.updated", subject_id, f'{{"id": {subject_id}}}')])

    pool = await events.open_pool(msgspec.structs.replace(settings, events_round_ms=1000))
    try:
        await pool.run(partial(appending, 1))
        await positioned_head(db)  # the first round
        await pool.run(partial(appending, 2))
        await asyncio.sleep(0.2)
        assert await db.fetchval(unpositioned) == 1  # its round waits for the spacing
        await positioned_head(db, within=5)  # and then comes, without another command
    finally:
        await pool.close()
    assert await db.fetchval("SELECT array_agg(subject_id ORDER BY position) FROM events") == [1, 2]


async def test_metrics_count_the_appended_events(client: httpx.AsyncClient, shop: Shop) -> None:
    def appended(text: str, type_: str) -> float:
        prefix = f'events_appended_total{{type="{type_}"}} '
        return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0.0)

    before = appended((await client.get("/metrics")).text, "customer.created")
    await shop.customer()
    after = (await client.get("/metrics")).text
    assert appended(after, "customer.created") == before + 1
    assert "events_waiting" in after
    assert "events_oldest_age_seconds" in after


async def test_a_quiet_stream_sends_keep_alive_comments_and_ends_after_its_time(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reads.events, "KEEP_ALIVE_SECONDS", 0.2)
    app = create_app(msgspec.structs.replace(settings, events_stream_seconds=1))
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        started = asyncio.get_running_loop().time()
        async with http.stream("GET", "/v1/events", headers={"Accept": "text/event-stream"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in response.aiter_lines()]
        took = asyncio.get_running_loop().time() - started
    assert lines[0] == "retry: 1000"
    # Nothing happened: comments only, at least one each 0.2 s of the stream's 1 s, then its end.
    assert [line for line in lines if line and line != "retry: 1000"] == [": keep-alive"] * len(
        [line for line in lines if line.startswith(":")]
    )
    assert len([line for line in lines if line.startswith(":")]) >= 3
    assert took < 10

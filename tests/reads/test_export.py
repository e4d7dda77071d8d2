"""GET /v1/exports/orders: NDJSON by id, streamed in batches that each hold a connection briefly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import httpx
import msgspec
from asgi_lifespan import LifespanManager
from starlette.types import Message

from service.app import create_app
from shared.config import Settings
from tests.reads.factories import Body, Shop


def summary(order: Body) -> Body:
    keys = ("id", "status", "item_count", "total_cents", "created_at")
    return {"customer_id": order["customer"]["id"], **{key: order[key] for key in keys}}


def lines(response: httpx.Response) -> list[Body]:
    assert response.text.endswith("\n")
    return [msgspec.json.decode(line) for line in response.text.splitlines()]


async def insert_orders(db: asyncpg.Connection, count: int) -> None:
    """SQL, because thousands of orders through the commands would make the test slow."""
    customer_id = await db.fetchval(
        "INSERT INTO customers (email, name) VALUES ('bulk@example.com', 'Bulk') RETURNING id"
    )
    await db.execute(
        """INSERT INTO orders (customer_id, status, item_count, total_cents)
           SELECT $1, (ARRAY['pending', 'paid', 'shipped', 'cancelled'])[1 + n % 4], 1, n
           FROM generate_series(1, $2) AS n""",
        customer_id,
        count,
    )


async def test_export_is_ndjson_of_exactly_the_matching_orders_by_id(client: httpx.AsyncClient, shop: Shop) -> None:
    customer = await shop.customer()
    product = await shop.product()
    placed = [await shop.order(customer["id"], [(product["id"], n)]) for n in (1, 2, 3, 4)]
    await shop.backdate(placed[3]["id"], datetime(2026, 1, 1, tzinfo=UTC))
    placed[1] = await shop.pay(placed[1]["id"])
    placed[3] = await shop.pay(placed[3]["id"])
    assert placed[3]["created_at"] == "2026-01-01T00:00:00Z"

    everything = await client.get("/v1/exports/orders")
    paid = await client.get("/v1/exports/orders", params={"status": "paid"})
    paid_recently = await client.get(
        "/v1/exports/orders", params={"status": "paid", "created_after": "2026-02-01T00:00:00Z"}
    )
    old = await client.get("/v1/exports/orders", params={"created_before": "2026-02-01T00:00:00Z"})

    assert everything.status_code == 200
    assert everything.headers["content-type"] == "application/x-ndjson"
    assert lines(everything) == [summary(order) for order in placed]
    assert lines(paid) == [summary(placed[1]), summary(placed[3])]
    assert lines(paid_recently) == [summary(placed[1])]
    assert lines(old) == [summary(placed[3])]


async def test_export_of_no_orders_is_an_empty_body(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/exports/orders", params={"status": "shipped"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.content == b""


async def test_a_stalled_export_client_holds_no_connection_and_gets_every_order_in_batches(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_orders(db, 2500)
    app = create_app(msgspec.structs.replace(settings, read_pool_max_size=1, read_pool_acquire_timeout=0.3))
    chunks: list[bytes] = []
    first_chunk_sent, let_it_continue = asyncio.Event(), asyncio.Event()

    async def stalling_client(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            first_chunk_sent.set()
            await let_it_continue.wait()

    async def no_more_request() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async with LifespanManager(app) as manager:
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/v1/exports/orders", "raw_path": b"/v1/exports/orders",
            "query_string": b"", "headers": [], "server": ("test", 80), "client": ("test", 1), "root_path": "",
        }  # fmt: skip
        export = asyncio.ensure_future(manager.app(scope, no_more_request, stalling_client))
        await asyncio.wait_for(first_chunk_sent.wait(), 5)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as other:
            meanwhile = await other.get("/v1/orders", params={"limit": 1})
        let_it_continue.set()
        await asyncio.wait_for(export, 10)

    assert meanwhile.status_code == 200, meanwhile.text
    assert [chunk.count(b"\n") for chunk in chunks] == [1000, 1000, 500]
    exported = [msgspec.json.decode(line)["id"] for chunk in chunks for line in chunk.splitlines()]
    assert exported == list(range(1, 2501))

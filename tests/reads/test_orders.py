"""GET /v1/orders/{id} and the newest-first order list with its keyset cursor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from service.app import create_app
from shared.config import Settings
from tests.reads.factories import Body, Shop
from tests.support import running_client


async def placed_orders(shop: Shop, count: int) -> list[Body]:
    customer = await shop.customer()
    product = await shop.product(stock=10_000)
    return [await shop.order(customer["id"], [(product["id"], 1)]) for _ in range(count)]


async def walk(client: httpx.AsyncClient, params: dict[str, Any]) -> list[list[Body]]:
    """Every page of GET /v1/orders with ``params``, following next_cursor to the end."""
    pages: list[list[Body]] = []
    cursor = None
    while True:
        response = await client.get("/v1/orders", params=params if cursor is None else {**params, "cursor": cursor})
        assert response.status_code == 200, response.text
        pages.append(response.json()["items"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return pages


def summary(order: Body) -> Body:
    keys = ("id", "status", "item_count", "total_cents", "created_at")
    return {"customer_id": order["customer"]["id"], **{key: order[key] for key in keys}}


async def test_order_read_equals_the_placed_order_with_items_in_insertion_order(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    customer = await shop.customer(name="Ada")
    pen = await shop.product(sku="PEN", name="Pen", price_cents=150)
    ink = await shop.product(sku="INK", name="Ink", price_cents=899)
    placed = await shop.order(customer["id"], [(ink["id"], 2), (pen["id"], 5)])

    response = await client.get(f"/v1/orders/{placed['id']}")

    assert response.status_code == 200
    assert response.json() == placed
    assert response.headers["etag"] == f'"{placed["version"]}"'
    assert placed["customer"] == {"id": customer["id"], "email": customer["email"], "name": "Ada"}
    assert [(item["sku"], item["quantity"], item["line_total_cents"]) for item in placed["items"]] == [
        ("INK", 2, 1798),
        ("PEN", 5, 750),
    ]
    assert (placed["item_count"], placed["total_cents"]) == (7, 2548)


async def test_order_read_follows_each_transition_and_its_version(client: httpx.AsyncClient, shop: Shop) -> None:
    (placed,) = await placed_orders(shop, 1)

    for move in (shop.pay, shop.ship):
        moved = await move(placed["id"])
        response = await client.get(f"/v1/orders/{placed['id']}")
        assert response.json() == moved
        assert response.headers["etag"] == f'"{moved["version"]}"'


async def test_order_if_none_match_round_trip_is_304_then_200_after_a_change(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    (placed,) = await placed_orders(shop, 1)
    tag = (await client.get(f"/v1/orders/{placed['id']}")).headers["etag"]

    cached = await client.get(f"/v1/orders/{placed['id']}", headers={"If-None-Match": tag})
    assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", tag)

    cancelled = await shop.cancel(placed["id"])
    fresh = await client.get(f"/v1/orders/{placed['id']}", headers={"If-None-Match": tag})
    assert fresh.status_code == 200
    assert fresh.json() == cancelled


async def test_unknown_order_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/orders/5")

    assert response.status_code == 404
    assert response.json()["detail"] == "order 5 not found"


async def test_walk_over_45_orders_gives_20_20_5_newest_first_while_3_more_arrive(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    orders = await placed_orders(shop, 45)
    customer_id = orders[0]["customer"]["id"]
    product_id = orders[0]["items"][0]["product_id"]
    first = await client.get("/v1/orders", params={"limit": 20})
    arrivals = [await shop.order(customer_id, [(product_id, 1)]) for _ in range(3)]

    rest = await walk(client, {"limit": 20, "cursor": first.json()["next_cursor"]})
    pages = [first.json()["items"], *rest]

    assert [len(page) for page in pages] == [20, 20, 5]
    walked = [order for page in pages for order in page]
    assert walked == [summary(order) for order in reversed(orders)]
    assert not {order["id"] for order in arrivals} & {order["id"] for order in walked}


async def test_orders_sharing_a_timestamp_are_paged_by_id_without_gaps_or_repeats(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    orders = await placed_orders(shop, 7)
    same_instant = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    for order in orders:
        await shop.backdate(order["id"], same_instant)

    pages = await walk(client, {"limit": 3})

    assert [[order["id"] for order in page] for page in pages] == [[7, 6, 5], [4, 3, 2], [1]]


async def test_list_filters_by_customer_status_and_half_open_time_range(client: httpx.AsyncClient, shop: Shop) -> None:
    ada, bob = await shop.customer(), await shop.customer()
    product = await shop.product()
    day = datetime(2026, 6, 10, tzinfo=UTC)
    placed = [await shop.order(who["id"], [(product["id"], 1)]) for who in (ada, ada, ada, bob)]
    for n, order in enumerate(placed):
        await shop.backdate(order["id"], day + timedelta(hours=n))
    await shop.pay(placed[1]["id"])
    await shop.pay(placed[3]["id"])

    async def ids(**params: Any) -> list[int]:
        response = await client.get("/v1/orders", params=params)
        assert response.status_code == 200, response.text
        return [order["id"] for order in response.json()["items"]]

    a0, a1, a2, b3 = (order["id"] for order in placed)
    assert await ids(customer_id=ada["id"]) == [a2, a1, a0]
    assert await ids(status="paid") == [b3, a1]
    assert await ids(customer_id=ada["id"], status="paid") == [a1]
    assert await ids(created_after="2026-06-10T01:00:00Z") == [b3, a2, a1]
    assert await ids(created_before="2026-06-10T02:00:00Z") == [a1, a0]
    assert await ids(created_after="2026-06-10T03:00:00+02:00", created_before="2026-06-10T03:00:00Z") == [a2, a1]
    assert await ids(customer_id=999) == []


async def test_list_items_are_order_summaries_equal_to_the_placed_orders(client: httpx.AsyncClient, shop: Shop) -> None:
    orders = await placed_orders(shop, 2)

    response = await client.get("/v1/orders")

    assert response.json() == {"items": [summary(order) for order in reversed(orders)], "next_cursor": None}


async def test_timestamps_read_the_same_when_the_server_time_zone_is_not_utc(
    settings: Settings, db: asyncpg.Connection
) -> None:
    database = await db.fetchval("SELECT current_database()")
    await db.execute(f"ALTER DATABASE \"{database}\" SET timezone TO 'Asia/Kolkata'")
    try:
        async with running_client(create_app(settings)) as client:
            (placed,) = await placed_orders(Shop(client, db), 1)
            read = (await client.get(f"/v1/orders/{placed['id']}")).json()
    finally:
        await db.execute(f'ALTER DATABASE "{database}" RESET timezone')

    assert read == placed
    assert read["created_at"].endswith("Z")

"""No stored row breaks a read: a timestamp column holding ``infinity`` or ``-infinity`` (which no
command stores, but the column can hold) reads as the last or first microsecond of years 1..9999 on
every endpoint, the same on both sides, and the order list still walks every row exactly once."""

from __future__ import annotations

import httpx
import msgspec

from tests.reads.factories import Body, Shop

LAST = "9999-12-31T23:59:59.999999Z"
FIRST = "0001-01-01T00:00:00Z"


async def poisoned_shop(shop: Shop) -> tuple[Body, Body, list[Body]]:
    """A customer, a product and three orders, with ±infinity written straight into every
    timestamp column by SQL; the orders are [infinity, finite, -infinity] by created_at."""
    customer, product = await shop.customer(), await shop.product()
    orders = [await shop.order(customer["id"], [(product["id"], 1)]) for _ in range(3)]
    await shop.pay(orders[1]["id"])
    db = shop.db
    await db.execute("UPDATE customers SET created_at = 'infinity' WHERE id = $1", customer["id"])
    await db.execute(
        "UPDATE products SET created_at = '-infinity', updated_at = 'infinity' WHERE id = $1", product["id"]
    )
    await db.execute(
        "UPDATE orders SET created_at = 'infinity', updated_at = 'infinity' WHERE id = $1", orders[0]["id"]
    )
    await db.execute(
        "UPDATE orders SET created_at = '-infinity', updated_at = '-infinity' WHERE id = $1", orders[2]["id"]
    )
    return customer, product, orders


async def test_every_read_endpoint_answers_over_infinite_timestamps(client: httpx.AsyncClient, shop: Shop) -> None:
    customer, product, orders = await poisoned_shop(shop)
    urls = [
        f"/v1/customers/{customer['id']}",
        f"/v1/products/{product['id']}",
        "/v1/products",
        "/v1/products?q=widget",
        *(f"/v1/orders/{order['id']}" for order in orders),
        "/v1/orders",
        f"/v1/orders?customer_id={customer['id']}",
        "/v1/orders?status=pending",
        "/v1/orders?created_after=2000-01-01T00:00:00Z",
        "/v1/orders?created_before=2000-01-01T00:00:00Z",
        "/v1/stats/revenue/daily?days=366",
        "/v1/stats/products/top?days=366",
        "/v1/exports/orders",
    ]
    for url in urls:
        response = await client.get(url)
        assert response.status_code == 200, (url, response.text)

    detail = (await client.get(f"/v1/customers/{customer['id']}")).json()
    assert detail["created_at"] == LAST
    viewed = (await client.get(f"/v1/products/{product['id']}")).json()
    assert (viewed["created_at"], viewed["updated_at"]) == (FIRST, LAST)
    first, last = (
        (await client.get(f"/v1/orders/{orders[0]['id']}")).json(),
        (await client.get(f"/v1/orders/{orders[2]['id']}")).json(),
    )
    assert (first["created_at"], first["updated_at"]) == (LAST, LAST)
    assert (last["created_at"], last["updated_at"]) == (FIRST, FIRST)
    exported = [msgspec.json.decode(line) for line in (await client.get("/v1/exports/orders")).content.splitlines()]
    assert [row["created_at"] for row in exported] == [LAST, orders[1]["created_at"], FIRST]


async def test_the_order_list_walks_past_infinite_timestamps_one_row_at_a_time(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    _, _, orders = await poisoned_shop(shop)
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(5):
        params = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/orders", params=params)).json()
        seen += [order["id"] for order in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [orders[0]["id"], orders[1]["id"], orders[2]["id"]]  # newest first: infinity leads


async def test_a_command_on_an_infinite_order_answers_the_view_the_query_side_reads(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    _, _, orders = await poisoned_shop(shop)
    paid = await shop.pay(orders[0]["id"])
    read = (await client.get(f"/v1/orders/{orders[0]['id']}")).json()
    assert paid["created_at"] == LAST
    assert paid == read

"""GET /v1/customers/{id}: the customer as created, plus order count and lifetime value."""

from __future__ import annotations

import httpx

from tests.reads.factories import Shop


async def test_customer_detail_equals_the_created_customer_plus_two_aggregates(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    created = await shop.customer(email="Grace@Example.com", name="Grace Hopper")

    response = await client.get(f"/v1/customers/{created['id']}")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {**created, "order_count": 0, "lifetime_value_cents": 0}


async def test_lifetime_value_sums_paid_and_shipped_orders_while_order_count_counts_all(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    customer = await shop.customer()
    other = await shop.customer()
    product = await shop.product(price_cents=250)
    pending = await shop.order(customer["id"], [(product["id"], 1)])
    paid = await shop.pay((await shop.order(customer["id"], [(product["id"], 2)]))["id"])
    shipped = await shop.order(customer["id"], [(product["id"], 4)])
    await shop.pay(shipped["id"])
    await shop.ship(shipped["id"])
    cancelled = await shop.pay((await shop.order(customer["id"], [(product["id"], 8)]))["id"])
    await shop.cancel(cancelled["id"])
    await shop.pay((await shop.order(other["id"], [(product["id"], 16)]))["id"])

    detail = (await client.get(f"/v1/customers/{customer['id']}")).json()

    assert pending["status"] == "pending"
    assert detail["order_count"] == 4
    assert detail["lifetime_value_cents"] == paid["total_cents"] + shipped["total_cents"] == 6 * 250


async def test_unknown_customer_is_a_404_naming_the_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/customers/424242")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "customer 424242 not found"

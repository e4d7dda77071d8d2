"""A command answers with the view the query side returns for the same resource (docs/http.md § Conventions)."""

from __future__ import annotations

import httpx

from tests.support import AUTH
from tests.writes.support import new_customer, new_product, place


async def test_placed_and_paid_orders_read_back_field_for_field(client: httpx.AsyncClient) -> None:
    customer_id = await new_customer(client)
    first, second = await new_product(client, "A", price_cents=125), await new_product(client, "B", price_cents=7)
    placed = await place(client, customer_id, (second, 3), (first, 1))
    assert placed.status_code == 201, placed.text
    read = await client.get(placed.headers["location"])
    assert read.json() == placed.json()
    assert read.headers["etag"] == placed.headers["etag"]
    paid = await client.post(f"{placed.headers['location']}/pay", headers=AUTH)
    assert (await client.get(placed.headers["location"])).json() == paid.json()


async def test_created_and_changed_products_read_back_field_for_field(client: httpx.AsyncClient) -> None:
    body = {"sku": "MUG", "name": "Mug", "price_cents": 1250, "stock": 3}
    created = await client.post("/v1/products", json=body, headers=AUTH)
    assert (await client.get(created.headers["location"])).json() == created.json()
    restocked = await client.post(f"{created.headers['location']}/restock", json={"quantity": 2}, headers=AUTH)
    read = await client.get(created.headers["location"])
    assert read.json() == restocked.json()
    assert read.headers["etag"] == restocked.headers["etag"]


async def test_a_created_customer_reads_back_with_its_detail_aggregates_added(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/customers", json={"email": "Ada@Example.com", "name": "Ada"}, headers=AUTH)
    read = (await client.get(created.headers["location"])).json()
    assert read == {**created.json(), "order_count": 0, "lifetime_value_cents": 0}

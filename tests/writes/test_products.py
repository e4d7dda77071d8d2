"""POST /v1/products, /restock and /reprice."""

from __future__ import annotations

import asyncpg
import httpx

from shared.dto import MAX_STOCK
from tests.support import AUTH
from tests.writes.support import assert_problem, new_customer, new_order, new_product, rfc3339


async def test_creating_a_product_answers_201_with_location_etag_and_the_stored_row(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = {"sku": "MUG-1", "name": "Mug", "price_cents": 1250, "stock": 7}
    response = await client.post("/v1/products", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    view = response.json()
    row = await db.fetchrow("SELECT * FROM products")
    assert view == {
        **body,
        "id": row["id"],
        "version": 1,
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
    }
    assert response.headers["location"] == f"/v1/products/{row['id']}"
    assert response.headers["etag"] == '"1"'


async def test_a_taken_sku_is_409_and_adds_no_row(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await new_product(client, "MUG-1")
    body = {"sku": "MUG-1", "name": "Other mug", "price_cents": 1, "stock": 1}
    response = await client.post("/v1/products", json=body, headers=AUTH)
    assert_problem(response, 409, "MUG-1")
    assert await db.fetchval("SELECT count(*) FROM products") == 1


async def test_a_negative_price_is_422_naming_the_field(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    body = {"sku": "MUG-1", "name": "Mug", "price_cents": -1, "stock": 1}
    response = await client.post("/v1/products", json=body, headers=AUTH)
    assert_problem(response, 422, "Expected `int` >= 0", "$.price_cents")
    assert await db.fetchval("SELECT count(*) FROM products") == 0


async def test_restock_adds_stock_and_bumps_version_and_updated_at(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    product_id = await new_product(client, stock=3)
    before = await db.fetchrow("SELECT * FROM products")
    response = await client.post(f"/v1/products/{product_id}/restock", json={"quantity": 5}, headers=AUTH)
    assert response.status_code == 200, response.text
    after = await db.fetchrow("SELECT * FROM products")
    assert (after["stock"], after["version"]) == (8, 2)
    assert after["updated_at"] > before["updated_at"]
    assert response.json()["stock"] == 8
    assert response.json()["updated_at"] == rfc3339(after["updated_at"])
    assert response.headers["etag"] == '"2"'


async def test_restock_of_zero_is_422_and_changes_nothing(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    product_id = await new_product(client, stock=3)
    response = await client.post(f"/v1/products/{product_id}/restock", json={"quantity": 0}, headers=AUTH)
    assert_problem(response, 422, "$.quantity")
    assert await db.fetchval("SELECT stock FROM products") == 3


async def test_a_restock_past_the_stock_limit_is_409_naming_it_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    product_id = await new_product(client, stock=3)
    await db.execute("UPDATE products SET stock = $1", MAX_STOCK - 10)
    response = await client.post(f"/v1/products/{product_id}/restock", json={"quantity": 11}, headers=AUTH)
    assert_problem(response, 409, f"product {product_id} has {MAX_STOCK - 10} in stock", str(MAX_STOCK))
    assert response.json()["type"] == "/problems/stock-limit"
    assert tuple(await db.fetchrow("SELECT stock, version FROM products")) == (MAX_STOCK - 10, 1)
    response = await client.post(f"/v1/products/{product_id}/restock", json={"quantity": 10}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["stock"] == MAX_STOCK  # up to the limit itself


async def test_restock_and_reprice_of_an_unknown_product_are_404_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/products/42/restock", json={"quantity": 1}, headers=AUTH)
    assert_problem(response, 404, "product 42")
    response = await client.post("/v1/products/42/reprice", json={"price_cents": 1}, headers=AUTH)
    assert_problem(response, 404, "product 42")


async def test_reprice_changes_the_price_but_not_the_unit_price_of_earlier_orders(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    product_id = await new_product(client, price_cents=250)
    order = await new_order(client, customer_id, (product_id, 2))
    response = await client.post(f"/v1/products/{product_id}/reprice", json={"price_cents": 999}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["price_cents"] == 999
    assert response.json()["version"] == 3  # created, stock taken by the order, repriced
    assert await db.fetchval("SELECT unit_price_cents FROM order_items") == 250
    assert await db.fetchval("SELECT total_cents FROM orders WHERE id = $1", order["id"]) == 500
    later = await new_order(client, customer_id, (product_id, 1))
    assert later["items"][0]["unit_price_cents"] == 999

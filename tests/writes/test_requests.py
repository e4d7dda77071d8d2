"""What every command route does before and around its handler: auth, body checks, pool limits."""

from __future__ import annotations

from collections.abc import Awaitable

import asyncpg
import httpx
import msgspec
import pytest

from service.app import create_app
from shared.config import Settings
from tests.support import AUTH, running_client
from tests.writes.support import assert_problem, new_customer, new_order, new_product


class WriteRequest(msgspec.Struct, frozen=True):
    path: str
    body: object = None
    content_type: str = "application/json"

    def send(self, client: httpx.AsyncClient, headers: dict[str, str]) -> Awaitable[httpx.Response]:
        if self.body is None:
            return client.post(self.path, headers=headers)
        content = msgspec.json.encode(self.body)
        return client.post(self.path, content=content, headers={**headers, "Content-Type": self.content_type})


async def every_write_request(client: httpx.AsyncClient) -> list[WriteRequest]:
    """One valid request per write route, against rows that exist."""
    customer_id = await new_customer(client)
    product_id = await new_product(client)
    to_ship = (await new_order(client, customer_id, (product_id, 1)))["id"]
    to_cancel = (await new_order(client, customer_id, (product_id, 1)))["id"]
    line = {"product_id": product_id, "quantity": 1}
    imported = {
        "customer_id": customer_id,
        "status": "paid",
        "created_at": "2026-01-02T03:04:05Z",
        "items": [{**line, "unit_price_cents": 5}],
    }
    return [
        WriteRequest("/v1/customers", {"email": "b@example.com", "name": "B"}),
        WriteRequest("/v1/customers/upsert", {"customers": [{"email": "c@example.com", "name": "C"}]}),
        WriteRequest("/v1/products", {"sku": "NEW", "name": "New", "price_cents": 1, "stock": 1}),
        WriteRequest(f"/v1/products/{product_id}/restock", {"quantity": 1}),
        WriteRequest(f"/v1/products/{product_id}/reprice", {"price_cents": 7}),
        WriteRequest("/v1/orders", {"customer_id": customer_id, "items": [line]}),
        WriteRequest(f"/v1/orders/{to_ship}/pay"),
        WriteRequest(f"/v1/orders/{to_ship}/ship"),
        WriteRequest(f"/v1/orders/{to_cancel}/cancel"),
        WriteRequest("/v1/orders/import", imported, "application/x-ndjson"),
    ]


async def snapshot(db: asyncpg.Connection) -> list[list[asyncpg.Record]]:
    tables = ("customers", "products", "orders", "order_items", "idempotency_keys")
    return [await db.fetch(f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dGVzdDp0ZXN0", "Bearer "])
async def test_every_write_route_without_a_valid_token_is_401_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, authorization: str | None
) -> None:
    requests = await every_write_request(client)
    before = await snapshot(db)
    headers = {} if authorization is None else {"Authorization": authorization}
    for request in requests:
        response = await request.send(client, headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer", request.path
    assert await snapshot(db) == before


async def test_every_write_route_succeeds_with_the_token(client: httpx.AsyncClient) -> None:
    """The counterpart of the 401 test: the same requests, with the token, are accepted."""
    for request in await every_write_request(client):
        response = await request.send(client, AUTH)
        assert response.is_success, (request.path, response.text)


async def test_malformed_json_is_400(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    response = await client.post("/v1/customers", content=b'{"email": "a@example.com", "name": ', headers=headers)
    assert_problem(response, 400)
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        # msgspec calls all three "Input data was truncated"; only the last one is.
        (rb'{"email": "a@example.com", "name": "\ud800"}', "half of a UTF-16 surrogate pair"),
        (rb'{"email": "a@example.com", "name": "\ud800 A"}', "half of a UTF-16 surrogate pair"),
        (b'{"email": "a@example.com", "name": "A",', "Input data was truncated"),
    ],
    ids=["lone surrogate", "lone surrogate then text", "truncated"],
)
async def test_malformed_json_is_400_saying_what_is_wrong(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes, detail: str
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    response = await client.post("/v1/customers", content=body, headers=headers)
    assert_problem(response, 400, detail)
    assert "truncated" not in response.json()["detail"] or detail == "Input data was truncated"
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_a_body_that_is_not_json_is_415(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    headers = {**AUTH, "Content-Type": "text/plain"}
    response = await client.post("/v1/customers", content=b'{"email": "a@example.com", "name": "A"}', headers=headers)
    assert_problem(response, 415, "application/json")
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


@pytest.mark.parametrize("transition", ["pay", "cancel"])
async def test_a_transition_takes_no_body_or_an_empty_object_and_refuses_any_other(
    client: httpx.AsyncClient, db: asyncpg.Connection, transition: str
) -> None:
    # A transition has no fields: a body sent anyway keeps every command body's rules (415, 400, 422).
    customer_id = await new_customer(client)
    product_id = await new_product(client)
    order = await new_order(client, customer_id, (product_id, 1))
    path = f"/v1/orders/{order['id']}/{transition}"
    before = await snapshot(db)
    refused = [
        ("text/plain", b"garbage", 415),
        ("text/plain", b"{}", 415),
        ("application/json", b"{", 400),
        ("application/json", b'{"x": 1}', 422),
        ("application/json", b"[]", 422),
        ("application/json", b"null", 422),
    ]
    for content_type, body, status in refused:
        response = await client.post(path, content=body, headers={**AUTH, "Content-Type": content_type})
        assert_problem(response, status)
    assert await snapshot(db) == before

    empty = await client.post(path, content=b"{}", headers={**AUTH, "Content-Type": "application/json"})
    assert empty.status_code == 200, empty.text
    again = await client.post(path, headers={**AUTH, "Content-Type": "text/plain"})  # no body: any type
    assert again.status_code == 409, again.text  # ran, and found the order moved on


async def test_a_body_over_max_body_bytes_is_413(settings: Settings, db: asyncpg.Connection) -> None:
    app = create_app(msgspec.structs.replace(settings, max_body_bytes=64))
    async with running_client(app) as client:
        response = await client.post("/v1/customers", json={"email": "a@example.com", "name": "A" * 64}, headers=AUTH)
    assert_problem(response, 413, "64 bytes")
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_no_free_write_connection_within_the_pool_timeout_is_503_with_retry_after(
    settings: Settings, db: asyncpg.Connection
) -> None:
    app = create_app(msgspec.structs.replace(settings, write_pool_size=1, write_pool_timeout=0.2))
    async with running_client(app) as client, app.state.resources.pools["writes"].gate.slot(1.0):
        response = await client.post("/v1/customers", json={"email": "a@example.com", "name": "A"}, headers=AUTH)
    assert_problem(response, 503, "WRITE_POOL_TIMEOUT")
    assert response.headers["retry-after"]
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_an_integral_number_written_with_a_fraction_is_that_integer_as_json_schema_says(
    client: httpx.AsyncClient,
) -> None:
    # OpenAPI 3.1's JSON Schema counts 2.0 as an integer, so the document declares it valid: it is.
    product = await client.post(
        "/v1/products", json={"sku": "F-1", "name": "Float", "price_cents": 250.0, "stock": 1e1}, headers=AUTH
    )
    restocked = await client.post(f"/v1/products/{product.json()['id']}/restock", json={"quantity": 2.0}, headers=AUTH)
    fractional = await client.post(f"/v1/products/{product.json()['id']}/restock", json={"quantity": 2.5}, headers=AUTH)

    assert product.status_code == 201, product.text
    assert (product.json()["price_cents"], product.json()["stock"]) == (250, 10)
    assert restocked.json()["stock"] == 12
    assert fractional.status_code == 422
    assert "$.quantity" in fractional.json()["detail"]

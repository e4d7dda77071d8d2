"""Input PostgreSQL or the driver cannot take is refused as a 4xx naming it, never a 500, and
changes nothing: NUL in strings, invalid UTF-8, instants outside the encodable range, If-Match tags
that are not versions."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.support import AUTH
from tests.writes.support import NDJSON, assert_problem, line, ndjson, new_customer, new_order, new_product
from tests.writes.test_imports import nothing_imported

JSON = {**AUTH, "Content-Type": "application/json"}


async def row_counts(db: asyncpg.Connection) -> tuple[int, ...]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM products), (SELECT count(*) FROM orders)"
    )
    return tuple(row)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/customers", {"email": "a@b.co", "name": "A\u0000B"}, "$.name"),
        ("/v1/customers", {"email": "n\u0000@b.co", "name": "N"}, "$.email"),
        ("/v1/customers/upsert", {"customers": [{"email": "u\u0000@b.co", "name": "U"}]}, "$.customers[0].email"),
        ("/v1/customers/upsert", {"customers": [{"email": "u@b.co", "name": "\u0000"}]}, "$.customers[0].name"),
        ("/v1/products", {"sku": "S-1", "name": "P\u0000", "price_cents": 1, "stock": 1}, "$.name"),
    ],
)
async def test_a_nul_character_in_a_string_is_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, path: str, body: object, field: str
) -> None:
    response = await client.post(path, json=body, headers={**AUTH, "Idempotency-Key": "nul"})
    assert_problem(response, 422, field)
    assert await row_counts(db) == (0, 0, 0)
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_a_name_of_only_spaces_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/customers", json={"email": "a@b.co", "name": "   "}, headers=AUTH)
    assert_problem(response, 422, "$.name")


async def test_invalid_utf8_in_a_json_body_is_400_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post("/v1/customers", content=b'{"email":"x@y.co","name":"a\xffb"}', headers=JSON)
    assert_problem(response, 400, "UTF-8")
    assert await row_counts(db) == (0, 0, 0)


async def test_invalid_utf8_in_an_import_line_is_422_naming_the_line(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada, mug = await new_customer(client), await new_product(client)
    body = ndjson(line(ada, (mug, 1, 5))) + b'{"customer_id":1,"status":"p\xffaid"}\n'
    response = await client.post("/v1/orders/import", content=body, headers=NDJSON)
    assert_problem(response, 422, "line 2:", "UTF-8")
    assert await nothing_imported(db)


@pytest.mark.parametrize(
    "created_at",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        # Stored, these would be -infinity and infinity: they could never read back as sent.
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T23:59:59.999999Z",
        "9999-12-31T00:00:00Z",
    ],
)
async def test_an_import_instant_outside_the_accepted_range_is_422_naming_the_line(
    client: httpx.AsyncClient, db: asyncpg.Connection, created_at: str
) -> None:
    ada, mug = await new_customer(client), await new_product(client)
    body = ndjson(line(ada, (mug, 1, 5)), line(ada, (mug, 1, 5), created_at=created_at))
    response = await client.post("/v1/orders/import", content=body, headers=NDJSON)
    assert_problem(response, 422, "line 2:", "created_at")
    assert await nothing_imported(db)


@pytest.mark.parametrize(
    "if_match",
    [
        b'"2147483648"',  # past the version column's int4
        b'"99999999999999999999"',
        b'"\xb2"',  # a character str.isdigit() accepts but int() does not
        b'W/"1"',  # If-Match compares strongly: a weak tag never matches
        b'""',
        b"1",
    ],
)
async def test_an_if_match_that_names_no_version_is_412_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, if_match: bytes
) -> None:
    order = await new_order(client, await new_customer(client), (await new_product(client), 1))
    headers = {key.encode(): value.encode() for key, value in AUTH.items()} | {b"If-Match": if_match}
    response = await client.post(f"/v1/orders/{order['id']}/pay", headers=headers)
    assert_problem(response, 412, "is at version 1")
    assert await db.fetchval("SELECT (status, version)::text FROM orders") == "(pending,1)"


async def test_an_if_match_list_naming_the_current_version_lets_the_transition_through(
    client: httpx.AsyncClient,
) -> None:
    order = await new_order(client, await new_customer(client), (await new_product(client), 1))
    response = await client.post(f"/v1/orders/{order['id']}/pay", headers={**AUTH, "If-Match": '"7", "1"'})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "paid"


async def test_a_content_length_that_is_not_a_number_is_not_a_500(client: httpx.AsyncClient) -> None:
    # Servers usually refuse this header before the app; the app must not crash when one does not.
    # b"\xb2" is "²" as Starlette decodes headers (latin-1): str.isdigit() says yes, int() says no.
    headers = [(key.encode(), value.encode()) for key, value in JSON.items()] + [(b"Content-Length", b"\xb2")]
    request = client.build_request("POST", "/v1/customers", content=b'{"email":"a@b.co","name":"A"}')
    request.headers = httpx.Headers(headers)
    response = await client.send(request)
    assert response.status_code < 500


async def test_import_instants_at_the_ends_of_the_accepted_range_read_back_as_sent(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada, mug = await new_customer(client), await new_product(client)
    ends = ["0001-01-02T00:00:00Z", "9999-12-30T23:59:59.999999Z"]
    body = ndjson(*(line(ada, (mug, 1, 5), created_at=instant) for instant in ends))
    response = await client.post("/v1/orders/import", content=body, headers=NDJSON)
    assert response.status_code == 200, response.text
    assert await db.fetchval("SELECT count(*) FROM orders WHERE NOT isfinite(created_at)") == 0
    listed = (await client.get("/v1/orders")).json()["items"]
    assert sorted(order["created_at"] for order in listed) == ends

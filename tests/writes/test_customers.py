"""POST /v1/customers and /v1/customers/upsert."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.support import AUTH
from tests.writes.support import assert_problem, new_customer


async def test_creating_a_customer_answers_201_with_location_and_stores_the_email_lower_cased(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    response = await client.post("/v1/customers", json={"email": "Ada@Example.COM", "name": "Ada"}, headers=AUTH)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/customers/{body['id']}"
    row = await db.fetchrow("SELECT id, email, name, created_at FROM customers")
    assert body == {
        "id": row["id"],
        "email": "ada@example.com",
        "name": "Ada",
        "created_at": row["created_at"].isoformat().replace("+00:00", "Z"),
    }


async def test_an_email_taken_in_any_case_is_409_and_adds_no_row(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await new_customer(client, "ada@example.com")
    response = await client.post("/v1/customers", json={"email": "ADA@example.com", "name": "Other"}, headers=AUTH)
    assert_problem(response, 409, "ada@example.com")
    assert await db.fetchval("SELECT count(*) FROM customers") == 1


async def test_an_invalid_email_is_422_naming_the_field(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    response = await client.post("/v1/customers", json={"email": "nope", "name": "Ada"}, headers=AUTH)
    assert_problem(response, 422, "$.email")
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_upsert_inserts_new_emails_renames_known_ones_and_reports_both_counts(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await new_customer(client, "ada@example.com", "Ada")
    batch = {
        "customers": [
            {"email": "ADA@example.com", "name": "Ada Lovelace"},
            {"email": "bob@example.com", "name": "Bob"},
            {"email": "cy@example.com", "name": "Cy"},
        ]
    }
    response = await client.post("/v1/customers/upsert", json=batch, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"inserted": 2, "updated": 1}
    rows = await db.fetch("SELECT email, name FROM customers ORDER BY email")
    assert [tuple(row) for row in rows] == [
        ("ada@example.com", "Ada Lovelace"),
        ("bob@example.com", "Bob"),
        ("cy@example.com", "Cy"),
    ]


async def test_upsert_leaves_a_customer_already_so_named_alone_and_counts_it_in_neither(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada = await new_customer(client, "ada@example.com", "Ada")
    await new_customer(client, "bob@example.com", "Bob")
    created = await db.fetchval("SELECT ctid::text FROM customers WHERE id = $1", ada)
    batch = {"customers": [{"email": "ADA@example.com", "name": "Ada"}, {"email": "bob@example.com", "name": "Robert"}]}
    response = await client.post("/v1/customers/upsert", json=batch, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"inserted": 0, "updated": 1}
    # Ada's row was not rewritten: the version the creation wrote is still the live one.
    assert await db.fetchval("SELECT ctid::text FROM customers WHERE id = $1", ada) == created
    # Only the change is an event.
    events = (await client.get("/v1/events")).json()["items"]
    assert [(e["type"], e["data"]["name"]) for e in events] == [
        ("customer.created", "Ada"),
        ("customer.created", "Bob"),
        ("customer.updated", "Robert"),
    ]


async def test_upsert_of_an_email_repeated_in_one_batch_keeps_the_last_name(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    batch = {"customers": [{"email": "bob@example.com", "name": "First"}, {"email": "BOB@example.com", "name": "Last"}]}
    response = await client.post("/v1/customers/upsert", json=batch, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"inserted": 1, "updated": 0}
    assert await db.fetchval("SELECT name FROM customers WHERE email = 'bob@example.com'") == "Last"


async def test_upsert_of_an_empty_batch_is_422(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    response = await client.post("/v1/customers/upsert", json={"customers": []}, headers=AUTH)
    assert_problem(response, 422, "$.customers")


@pytest.mark.parametrize(
    "email",
    [
        "\u212aelvin@example.com",  # the Kelvin sign K: str.lower() makes it a plain k
        "i\u0307@example.com",  # i + combining dot: what str.lower() makes of a dotted capital I
        "ada@\u0130stanbul.example",
        "jos\u00e9@example.com",
        "ada@example.com\n",  # Python's $ alone would let a final newline through
    ],
)
async def test_an_email_that_is_not_ascii_is_422_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, email: str
) -> None:
    response = await client.post("/v1/customers", json={"email": email, "name": "K"}, headers=AUTH)
    upsert = await client.post(
        "/v1/customers/upsert", json={"customers": [{"email": email, "name": "K"}]}, headers=AUTH
    )

    assert_problem(response, 422, "$.email")
    assert_problem(upsert, 422, "$.customers[0].email")
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_emails_differing_only_in_ascii_case_are_one_customer(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = await client.post("/v1/customers", json={"email": "Kelvin@Example.COM", "name": "K"}, headers=AUTH)
    again = await client.post("/v1/customers", json={"email": "kELVIN@example.com", "name": "K"}, headers=AUTH)
    upsert = await client.post(
        "/v1/customers/upsert",
        json={"customers": [{"email": "KELVIN@EXAMPLE.COM", "name": "Kay"}, {"email": "new@x.co", "name": "N"}]},
        headers=AUTH,
    )

    assert first.status_code == 201, first.text
    assert first.json()["email"] == "kelvin@example.com"
    assert_problem(again, 409, "kelvin@example.com")
    assert upsert.json() == {"inserted": 1, "updated": 1}
    assert await db.fetch("SELECT email, name FROM customers ORDER BY id") == [
        ("kelvin@example.com", "Kay"),
        ("new@x.co", "N"),
    ]

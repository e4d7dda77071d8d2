"""Helpers for the write-side tests: create the rows a test needs through the API itself."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import msgspec

from tests.support import AUTH


async def new_customer(client: httpx.AsyncClient, email: str = "ada@example.com", name: str = "Ada") -> int:
    response = await client.post("/v1/customers", json={"email": email, "name": name}, headers=AUTH)
    assert response.status_code == 201, response.text
    customer_id: int = response.json()["id"]
    return customer_id


async def new_product(client: httpx.AsyncClient, sku: str = "SKU-1", price_cents: int = 250, stock: int = 10) -> int:
    body = {"sku": sku, "name": f"Product {sku}", "price_cents": price_cents, "stock": stock}
    response = await client.post("/v1/products", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    product_id: int = response.json()["id"]
    return product_id


async def place(client: httpx.AsyncClient, customer_id: int, *lines: tuple[int, int], **headers: str) -> httpx.Response:
    body = {"customer_id": customer_id, "items": [{"product_id": p, "quantity": q} for p, q in lines]}
    return await client.post("/v1/orders", json=body, headers={**AUTH, **headers})


async def new_order(client: httpx.AsyncClient, customer_id: int, *lines: tuple[int, int]) -> dict[str, Any]:
    response = await place(client, customer_id, *lines)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


def assert_problem(response: httpx.Response, status: int, *fragments: str) -> None:
    """A problem+json response of ``status`` whose detail names every fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) == {"type", "title", "status", "detail"}
    assert problem["status"] == status
    for fragment in fragments:
        assert fragment in problem["detail"], problem["detail"]


def rfc3339(value: datetime) -> str:
    """How the API writes a timestamp the database returned."""
    return value.isoformat().replace("+00:00", "Z")


# The order import: headers, one line of its file, and the file.
NDJSON = {**AUTH, "Content-Type": "application/x-ndjson"}


def line(
    customer_id: int,
    *items: tuple[int, int, int],
    status: str = "paid",
    created_at: str = "2026-03-04T05:06:07.123456Z",
) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "status": status,
        "created_at": created_at,
        "items": [{"product_id": p, "quantity": q, "unit_price_cents": u} for p, q, u in items],
    }


def ndjson(*lines: object) -> bytes:
    return b"".join(msgspec.json.encode(item) + b"\n" for item in lines)

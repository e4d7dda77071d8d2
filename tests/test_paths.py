"""Path ids are strict, and every refusal Starlette itself makes (no route, wrong method) is the
same problem+json as the service's own: a malformed id is the same 404 as an unknown one."""

from __future__ import annotations

import httpx
import pytest

from tests.support import AUTH
from tests.writes.support import assert_problem, new_customer, new_product


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/products/abc"),
        ("GET", "/v1/products/0001"),  # canonical decimal only: product 1 exists, "0001" names none
        ("GET", "/v1/products/0"),
        ("GET", "/v1/products/-1"),
        ("GET", "/v1/products/1e0"),
        ("GET", "/v1/products/%2B1"),  # "+1"
        ("GET", "/v1/products/%201"),  # " 1"
        ("GET", "/v1/customers/99999999999999999999"),  # past bigint
        ("GET", "/v1/customers/9223372036854775808"),
        ("POST", "/v1/orders/abc/pay"),
        ("POST", "/v1/products/01/restock"),
        ("GET", "/v1/nothing-here"),
    ],
)
async def test_a_malformed_or_impossible_id_is_the_same_404_as_an_unknown_one(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert await new_product(client) == 1
    response = await client.request(method, path, headers=AUTH, json={"quantity": 1})
    unknown = await client.get("/v1/orders/424242")

    assert_problem(response, 404)
    assert response.json()["type"] == unknown.json()["type"] == "/problems/not-found"


async def test_a_percent_encoded_digit_is_that_digit_as_rfc_3986_says(client: httpx.AsyncClient) -> None:
    # Percent-decoding comes before matching, in the path as in the query string.
    product = await new_product(client)
    response = await client.get(f"/v1/products/%{ord(str(product)):X}")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == product


async def test_a_method_a_path_does_not_have_is_405_problem_json_with_allow(client: httpx.AsyncClient) -> None:
    customer = await new_customer(client)
    response = await client.delete(f"/v1/customers/{customer}")
    assert_problem(response, 405, "DELETE")
    assert response.json()["type"] == "/problems/method-not-allowed"
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/products/1/"), ("GET", "/v1/orders/"), ("POST", "/v1/products/1/restock/"), ("GET", "/healthz/")],
)
async def test_a_trailing_slash_is_a_404_not_a_redirect(client: httpx.AsyncClient, method: str, path: str) -> None:
    # Starlette would redirect (307) to the path without it: a second spelling of every path.
    assert await new_product(client) == 1
    response = await client.request(method, path, headers=AUTH, json={"quantity": 1}, follow_redirects=False)
    assert_problem(response, 404, path)
    assert "location" not in response.headers

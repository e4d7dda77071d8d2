"""/openapi.json tells the truth (docs/http.md § Operations): a 405 names every method of its path, the
operations that need a token say so, headers and parameters accept what the service accepts, and
links lead to operations that exist. tests/test_schemathesis.py checks the same at large."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema_rs  # Schemathesis's validator: it reads patterns as ECMA-262, as OpenAPI says
import msgspec
import pytest

from service.app import create_app
from shared.config import Settings
from tests.support import AUTH, running_client

COMMANDS = {
    ("post", "/v1/customers"),
    ("post", "/v1/customers/upsert"),
    ("post", "/v1/products"),
    ("post", "/v1/products/{id}/restock"),
    ("post", "/v1/products/{id}/reprice"),
    ("post", "/v1/orders"),
    ("post", "/v1/orders/import"),
    ("post", "/v1/orders/{id}/pay"),
    ("post", "/v1/orders/{id}/ship"),
    ("post", "/v1/orders/{id}/cancel"),
}


async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, item in doc["paths"].items() for method, op in item.items()}


def parameter(op: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = next(p["schema"] for p in op["parameters"] if p["name"] == name)
    return schema


def allowed(response: httpx.Response) -> set[str]:
    return {method.strip() for method in response.headers["allow"].split(",")}


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/v1/orders", {"GET", "HEAD", "POST"}),
        ("/v1/products", {"GET", "HEAD", "POST"}),
        ("/v1/customers", {"POST"}),
        ("/v1/orders/1", {"GET", "HEAD"}),
    ],
)
async def test_a_405_allows_every_method_of_the_path(client: httpx.AsyncClient, path: str, methods: set[str]) -> None:
    response = await client.put(path, headers=AUTH)
    assert response.status_code == 405
    assert allowed(response) == methods


async def test_head_is_answered_where_get_is_and_refused_where_only_post_is(client: httpx.AsyncClient) -> None:
    assert (await client.head("/v1/orders")).status_code == 200
    refused = await client.head("/v1/customers")
    assert refused.status_code == 405
    assert allowed(refused) == {"POST"}


async def test_every_command_says_it_needs_a_token_and_open_queries_do_not(client: httpx.AsyncClient) -> None:
    for key, op in operations(await document(client)).items():
        expected: list[dict[str, list[str]]] | None = [{"bearer": []}] if key in COMMANDS else None
        assert op.get("security") == expected, key


async def test_queries_say_they_need_a_token_when_read_tokens_are_set(settings: Settings) -> None:
    app = create_app(msgspec.structs.replace(settings, read_api_tokens=("read-token",), read_api_open=False))
    async with running_client(app) as client:
        ops = operations(await document(client))
        for (method, path), op in ops.items():
            secured = method == "post" or path.startswith("/v1/")
            assert ("security" in op) == secured, (method, path)
        unauthorized = await client.get("/v1/orders")
    assert unauthorized.status_code == 401


@pytest.mark.parametrize(
    ("header", "valid", "invalid"),
    [
        ("Idempotency-Key", ["k", "order 42", "~" * 255], ["", " k", "k ", "k" * 256, "clé", "k\x7f"]),
        ("If-Match", ["*", '"3"', '"1", "2"', '"1",\t"2147483647"'], ["", "3", 'W/"3"', '"v3"', '"1",', "* "]),
    ],
)
async def test_command_headers_accept_what_the_service_accepts(
    client: httpx.AsyncClient, header: str, valid: list[str], invalid: list[str]
) -> None:
    schema = parameter(operations(await document(client))[("post", "/v1/orders/{id}/pay")], header)
    validator = jsonschema_rs.validator_for(schema)
    assert [value for value in valid if not validator.is_valid(value)] == []
    assert [value for value in invalid if validator.is_valid(value)] == []


async def test_query_parameters_are_never_null_and_say_what_they_accept(client: httpx.AsyncClient) -> None:
    ops = operations(await document(client))
    for key, op in ops.items():
        for param in op["parameters"]:
            assert '"null"' not in msgspec.json.encode(param["schema"]).decode(), (key, param)
    listing = ops[("get", "/v1/orders")]
    cursor = jsonschema_rs.validator_for(parameter(listing, "cursor"))
    assert cursor.is_valid("aGVsbG8_d29ybGQ-")
    assert not cursor.is_valid("a+b/c=")
    instant = jsonschema_rs.validator_for(parameter(listing, "created_after"), validate_formats=True)
    assert instant.is_valid("2026-11-23T10:15:00.123456Z")
    assert not instant.is_valid("0001-01-01T00:00:00Z")  # stored as -infinity: refused (422)
    assert not instant.is_valid("1700000000")  # a number is not a timestamp


async def test_path_ids_are_positive_bigints_and_paths_name_no_convertor(client: httpx.AsyncClient) -> None:
    doc = await document(client)
    assert not [path for path in doc["paths"] if ":" in path]
    schema = parameter(operations(doc)[("get", "/v1/orders/{id}")], "id")
    assert schema == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}


@pytest.mark.parametrize("name", ["Ada", " Ada", "\ufeffAda", "\ufeff", "\x1c", "\x85", "\u3000", "Ada\x1f"])
async def test_a_name_is_valid_by_the_document_exactly_when_the_service_takes_it(
    client: httpx.AsyncClient, name: str
) -> None:
    # The Structs' patterns are Python regular expressions; OpenAPI readers use ECMA-262, where
    # \s is another set of characters.
    doc = await document(client)
    schema = doc["components"]["schemas"]["CreateCustomer"]["properties"]["name"]
    response = await client.post("/v1/customers", json={"email": "ada@example.com", "name": name}, headers=AUTH)
    assert response.status_code in (201, 422), response.text
    assert jsonschema_rs.validator_for(schema).is_valid(name) == (response.status_code == 201), response.text


async def test_links_lead_from_a_created_resource_to_operations_that_exist(client: httpx.AsyncClient) -> None:
    doc = await document(client)
    ops = operations(doc)
    targets: set[tuple[str, str]] = set()
    for op in ops.values():
        for response in op["responses"].values():
            for link in response.get("links", {}).values():
                path, _, method = link["operationRef"].removeprefix("#/paths/").rpartition("/")
                target = (method, path.replace("~1", "/").replace("~0", "~"))
                assert target in ops, link
                targets.add(target)
    created = ops[("post", "/v1/customers")]["responses"]["201"]["links"]["GetCustomer"]
    assert created["parameters"] == {"path.id": "$response.body#/id"}
    assert {
        ("get", "/v1/orders/{id}"),
        ("post", "/v1/orders/{id}/pay"),
        ("post", "/v1/products/{id}/restock"),
    } <= targets


async def test_every_timestamp_is_a_date_time(client: httpx.AsyncClient) -> None:
    schemas = (await document(client))["components"]["schemas"]
    stamps = {
        (name, field): prop.get("format")
        for name, schema in schemas.items()
        for field, prop in schema.get("properties", {}).items()
        if field.endswith("_at")
    }
    assert {"ProductView", "OrderView", "OrderSummary", "ImportedOrder"} <= {name for name, _ in stamps}
    assert set(stamps.values()) == {"date-time"}, stamps

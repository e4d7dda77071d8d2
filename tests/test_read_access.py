"""Queries return personal data (emails, names): against a real database (a DATABASE_URL) they need a
read token, unless READ_API_OPEN opens them on purpose; a process that serves them with neither
refuses to start. The OpenAPI document says which it is (docs/http.md, Authentication)."""

from __future__ import annotations

import pytest

from service.app import SIDES_FOR_ROLE, ServeRole, create_app
from shared.config import ConfigError, Settings
from tests.support import WRITE_TOKEN, running_client
from tests.writes.support import new_customer

READER = {"Authorization": "Bearer reader-1"}


def from_env(database_url: str, **variables: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": database_url, "WRITE_API_TOKENS": WRITE_TOKEN, **variables})


def query_security(document: dict[str, object]) -> dict[str, object]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    queries = {path: item["get"] for path, item in paths.items() if path.startswith("/v1/") and "get" in item}
    assert queries
    return {path: op.get("security") for path, op in queries.items()}


@pytest.mark.parametrize("role", ["all", "reads"])
def test_a_process_serving_queries_with_neither_read_setting_refuses_to_start_naming_both(
    database_url: str, role: ServeRole
) -> None:
    with pytest.raises(ConfigError, match=r"READ_API_TOKENS.*READ_API_OPEN"):
        create_app(from_env(database_url), SIDES_FOR_ROLE[role])


def test_a_writes_process_serves_no_query_and_needs_neither_read_setting(database_url: str) -> None:
    create_app(from_env(database_url), SIDES_FOR_ROLE["writes"])


async def test_with_read_tokens_a_query_without_one_is_401_and_with_one_200(database_url: str) -> None:
    app = create_app(from_env(database_url, READ_API_TOKENS="reader-1"))
    async with running_client(app) as client:
        customer = await new_customer(client)
        refused = await client.get(f"/v1/customers/{customer}")
        allowed = await client.get(f"/v1/customers/{customer}", headers=READER)
        security = query_security((await client.get("/openapi.json")).json())
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.headers["content-type"] == "application/problem+json"
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["email"].endswith("@example.com")
    assert all(found == [{"bearer": []}] for found in security.values()), security


async def test_read_api_open_opens_every_query_and_the_document_says_so(database_url: str) -> None:
    app = create_app(from_env(database_url, READ_API_OPEN="true"))
    async with running_client(app) as client:
        customer = await new_customer(client)
        opened = await client.get(f"/v1/customers/{customer}")
        security = query_security((await client.get("/openapi.json")).json())
    assert opened.status_code == 200, opened.text
    assert all(found is None for found in security.values()), security


async def test_a_write_token_does_not_open_the_queries(database_url: str) -> None:
    app = create_app(from_env(database_url, READ_API_TOKENS="reader-1"))
    async with running_client(app) as closed:
        refused = await closed.get("/v1/orders", headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    assert refused.status_code == 401

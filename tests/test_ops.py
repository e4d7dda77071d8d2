"""Operations endpoints: liveness, readiness (bounded, naming what failed) and the OpenAPI document."""

from __future__ import annotations

import time

import asyncpg
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.app import create_app
from shared.config import Settings
from tests.support import running_client


async def test_healthz_answers_while_the_process_runs(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200


async def test_readyz_is_200_when_both_pools_answer_and_schema_is_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text


async def test_readyz_is_503_naming_migrate_when_schema_is_behind(empty_database: str) -> None:
    app = create_app(Settings(database_url=empty_database, read_api_open=True, read_pool_min_size=1))
    async with running_client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert "schema" in response.text
    assert "read pool" in response.text


async def test_readyz_is_503_within_the_acquire_timeout_when_the_read_pool_is_exhausted(
    database_url: str,
) -> None:
    settings = Settings(
        database_url=database_url,
        read_api_open=True,
        read_pool_min_size=1,
        read_pool_max_size=1,
        read_pool_acquire_timeout=0.2,
    )
    app = create_app(settings)
    async with running_client(app) as client, app.state.resources.pools["reads"].connection():
        started = time.monotonic()
        response = await client.get("/readyz")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "read pool" in response.text
    assert "READ_POOL_ACQUIRE_TIMEOUT" in response.text
    assert response.headers["retry-after"]
    assert elapsed < 0.2 + 0.3  # the acquire timeout, and no more than scheduling slack


async def test_unknown_routes_are_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


async def test_openapi_is_3_1_and_lists_every_route(app: Starlette, client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    described = {
        (method.upper(), path.replace("{id}", "{id:id}")) for path, item in document["paths"].items() for method in item
    }
    for route in app.routes:
        path, methods = route.path, getattr(route, "methods", None) or set()  # type: ignore[attr-defined]
        for method in methods - {"HEAD"}:
            assert (method, path) in described, f"{method} {path} missing from /openapi.json"
    assert {"/healthz", "/readyz", "/openapi.json"} <= set(document["paths"])
    assert "Problem" in document["components"]["schemas"]


async def test_an_unexpected_error_is_a_problem_json_500_without_internals(settings: Settings) -> None:
    app = create_app(settings)

    async def broken(request: Request) -> Response:
        raise RuntimeError("secret internals")

    app.router.routes.append(Route("/broken", broken))
    async with running_client(app, raise_app_exceptions=False) as client:
        response = await client.get("/broken")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "secret" not in response.text


async def test_readyz_never_waits_past_the_acquire_timeout_even_when_a_query_hangs(
    database_url: str, db: asyncpg.Connection
) -> None:
    settings = Settings(
        database_url=database_url, read_api_open=True, read_pool_min_size=1, read_pool_acquire_timeout=0.2
    )
    async with running_client(create_app(settings)) as client, db.transaction():
        # The schema check now blocks behind this lock after it has its connection.
        await db.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = await client.get("/readyz")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "read pool: no answer within 0.2 s (READ_POOL_ACQUIRE_TIMEOUT)" in response.text
    assert elapsed < 0.2 + 1.5  # the hang itself would last until the 2 s statement timeout

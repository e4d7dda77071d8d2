"""`orders-api serve --role` and the connection budget, as an operator runs them: real processes
over real HTTP against the test server. A reads process opens only the read pool and answers
commands with 404; a writes process the reverse; `serve` refuses pools the server cannot hold."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.app import SIDES_FOR_ROLE, ServeRole, create_app
from service.cli import fetch_server_limits
from service.schema import upgrade_to_head
from shared.config import Settings, asyncpg_dsn
from testkit.processes import free_port
from tests.processes import serve_env, serving_process, wait_ready
from tests.support import AUTH, running_client
from tests.writes.support import assert_problem


async def _connections_by_pool(url: str) -> dict[str, int]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch(
            "SELECT application_name, count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY application_name"
        )
    finally:
        await connection.close()
    return {row["application_name"]: row["n"] for row in rows}


def connections_by_pool(url: str) -> dict[str, int]:
    """The connections to this database other than the asking one, by application_name (the pool)."""
    return asyncio.run(_connections_by_pool(url))


@pytest.fixture
def own_database(empty_database: str) -> str:
    """A migrated database nobody else connects to, so every connection to it is the process's."""
    upgrade_to_head(empty_database)
    return empty_database


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reads_process_serves_queries_answers_commands_404_and_opens_no_write_connection(
    own_database: str, tmp_path: Path, workers: int
) -> None:
    log = tmp_path / "serve.log"
    env = serve_env(own_database)
    del env["WRITE_API_TOKENS"]  # a reads process runs no command: it needs no write token
    with serving_process("--role", "reads", "--workers", str(workers), env=env, log=log) as (process, url):
        wait_ready(url, process, log)
        assert httpx.get(f"{url}/readyz", timeout=5).text == "ready"
        assert httpx.get(f"{url}/v1/orders", timeout=5).status_code == 200
        order = {"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}]}
        assert_problem(httpx.post(f"{url}/v1/orders", json=order, headers=AUTH, timeout=5), 404, "--role writes")
        assert_problem(httpx.post(f"{url}/v1/customers", json={}, headers=AUTH, timeout=5), 404, "--role writes")
        pools = connections_by_pool(own_database)
    assert process.returncode == 0, log.read_text()
    assert pools.get("orders-api:read", 0) >= 1, pools
    assert "orders-api:write" not in pools, pools
    assert "generated token" not in log.read_text()


def test_a_writes_process_serves_commands_answers_queries_404_and_opens_no_read_connection(
    own_database: str, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    with serving_process("--role", "writes", env=serve_env(own_database), log=log) as (process, url):
        wait_ready(url, process, log)
        assert_problem(httpx.get(f"{url}/v1/orders", timeout=5), 404, "--role reads")
        customer = httpx.post(f"{url}/v1/customers", json={"email": "w@example.com", "name": "W"}, headers=AUTH)
        product = httpx.post(
            f"{url}/v1/products", json={"sku": "W-1", "name": "W", "price_cents": 100, "stock": 5}, headers=AUTH
        )
        order = {"customer_id": customer.json()["id"], "items": [{"product_id": product.json()["id"], "quantity": 1}]}
        placed = httpx.post(f"{url}/v1/orders", json=order, headers=AUTH, timeout=5)
        assert placed.status_code == 201, placed.text
        pools = connections_by_pool(own_database)
    assert process.returncode == 0, log.read_text()
    assert pools.get("orders-api:write", 0) >= 1, pools
    assert "orders-api:read" not in pools, pools


@pytest.mark.parametrize(
    ("role", "method", "path", "template", "serves"),
    [
        ("reads", "POST", "/v1/orders/7/pay", "/v1/orders/{id}/pay", "writes"),
        ("writes", "GET", "/v1/customers/3", "/v1/customers/{id}", "reads"),
    ],
)
async def test_the_other_sides_route_is_a_404_naming_its_public_path(
    settings: Settings, role: ServeRole, method: str, path: str, template: str, serves: str
) -> None:
    async with running_client(create_app(settings, SIDES_FOR_ROLE[role])) as client:
        response = await client.request(method, path, headers=AUTH)
    assert_problem(response, 404)
    # The path as docs/http.md and /openapi.json write it, not the route's converter syntax ({id:id}).
    assert response.json()["detail"] == f"{method} {template} is served by processes with --role {serves} or all"


def serve_and_exit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``serve`` expected to refuse: it must exit by itself, promptly."""
    command = [sys.executable, "-m", "service", "serve", "--port", str(free_port()), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_serve_refuses_workers_whose_pools_exceed_max_connections_naming_numbers_and_variables(
    database_url: str,
) -> None:
    max_connections, reserved, _ = fetch_server_limits(database_url)
    read_max = max_connections  # each worker alone would take every connection the server has
    result = serve_and_exit("--workers", "2", env=serve_env(database_url, READ_POOL_MAX_SIZE=str(read_max)))
    assert result.returncode != 0
    message = result.stdout + result.stderr
    needed = 2 * (6 + read_max)  # 5 pooled write connections and the event positioner's
    for part in (
        f"2 worker(s) x (6 write + {read_max} read) = {needed}",
        f"max_connections={max_connections} minus {reserved} reserved",
        f"leaves {max_connections - reserved}",
        "WRITE_POOL_SIZE, WRITE_POOL_MAX_OVERFLOW, READ_POOL_MAX_SIZE, --workers",
    ):
        assert part in message, message


def test_only_the_pools_of_the_role_count_against_the_budget(database_url: str, tmp_path: Path) -> None:
    max_connections, reserved, _ = fetch_server_limits(database_url)
    # Two reads workers fill the budget exactly; a write pool this size would not fit beside them.
    settings = {"READ_POOL_MAX_SIZE": str((max_connections - reserved) // 2), "WRITE_POOL_SIZE": "50"}
    env = serve_env(database_url, **settings)

    refused = serve_and_exit("--workers", "2", "--role", "writes", env={**env, "WRITE_POOL_SIZE": "1000"})
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert "(1001 write + 0 read)" in message, message
    assert "Lower WRITE_POOL_SIZE, WRITE_POOL_MAX_OVERFLOW, --workers" in message, message

    log = tmp_path / "serve.log"
    with serving_process("--workers", "2", "--role", "reads", env=env, log=log) as (process, url):
        wait_ready(url, process, log)
    assert process.returncode == 0, log.read_text()

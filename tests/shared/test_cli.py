"""The command line as operators use it: serve, migrate, pools."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from click.testing import CliRunner

from shared.cli import main, require_schema_at_head, uvicorn_options
from shared.config import Settings
from shared.schema import current_revision, head_revision


def invoke(*args: str, env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def test_serve_refuses_a_bad_setting_naming_the_variable() -> None:
    code, output = invoke("serve", env={"WRITE_POOL_SIZE": "abc"})
    assert code != 0
    assert "WRITE_POOL_SIZE" in output


def test_serve_refuses_an_unmigrated_database_and_names_migrate(empty_database: str) -> None:
    code, output = invoke("serve", env={"DATABASE_URL": empty_database})
    assert code != 0
    assert "orders-api migrate" in output


def test_migrate_brings_the_schema_to_head_so_serve_accepts_it(empty_database: str) -> None:
    code, output = invoke("migrate", env={"DATABASE_URL": empty_database})
    assert code == 0, output
    assert asyncio.run(current_revision(empty_database)) == head_revision()
    require_schema_at_head(Settings(database_url=empty_database))


def test_the_uvicorn_options_survive_the_pickling_that_workers_need() -> None:
    # With --workers, uvicorn hands its config to each process by pickling it (multiprocessing spawn).
    options = uvicorn_options(Settings(header_timeout=1.5, max_header_bytes=8192, max_headers=50))
    assert pickle.loads(pickle.dumps(options)) == options  # noqa: S301 - our own bytes, just made


def test_pools_shows_both_pools_and_the_budget(database_url: str) -> None:
    code, output = invoke(
        "pools",
        "--workers",
        "3",
        env={"DATABASE_URL": database_url, "WRITE_POOL_SIZE": "4", "READ_POOL_MAX_SIZE": "6"},
    )
    assert code == 0, output
    assert "WRITE_POOL_SIZE=4" in output
    assert "READ_POOL_MAX_SIZE=6" in output
    assert "per worker: 4 write + 6 read = 10" in output
    assert "x 3 worker(s) = 30" in output
    assert "max_connections=" in output
    assert "fits" in output


def test_pools_warns_when_the_budget_exceeds_max_connections(database_url: str) -> None:
    code, output = invoke("pools", "--workers", "50", env={"DATABASE_URL": database_url})
    assert code == 0, output
    assert "DOES NOT FIT" in output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def serve_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "WRITE_", "READ_"))}
    env.pop("DATABASE_URL", None)
    return env


def _serve(data_dir: Path, port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``orders-api serve`` in a child process, stopped (SIGTERM, as an operator would) afterwards."""
    command = [sys.executable, "-m", "shared", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    with log.open("ab") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"/readyz did not answer 200 within {within} s")


async def _execute(data_dir: Path, statement: str) -> object:
    connection = await asyncpg.connect(f"postgresql://postgres@/orders?host={data_dir}")
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


def test_serve_on_the_embedded_database_is_ready_and_keeps_its_data_across_restarts(
    tmp_path: Path, serve_env: dict[str, str]
) -> None:
    data_dir, log = tmp_path / "pgdata", tmp_path / "serve.log"
    port = _free_port()
    for process in _serve(data_dir, port, serve_env, log):
        _wait_ready(port, process, log)
        asyncio.run(_execute(data_dir, "INSERT INTO customers (email, name) VALUES ('kept@example.com', 'Kept')"))
    assert process.returncode == 0, log.read_text()
    assert not (data_dir / "postmaster.pid").exists(), "stopping serve must stop the embedded PostgreSQL"
    output = log.read_text()
    assert str(data_dir) in output
    assert "generated token" in output

    for process in _serve(data_dir, port, serve_env, log):
        _wait_ready(port, process, log)
        assert asyncio.run(_execute(data_dir, "SELECT count(*) FROM customers WHERE email = 'kept@example.com'")) == 1


def test_config_shows_every_variable_with_its_effective_value_and_default() -> None:
    code, output = invoke("config", env={"WRITE_POOL_SIZE": "7", "ACCESS_LOG": "off"})
    assert code == 0, output
    assert "WRITE_POOL_SIZE=7\n    integer, >= 1, default 5\n" in output
    assert "ACCESS_LOG=off\n" in output
    assert all(f"\n{name.upper()}=" in output for name in Settings.__struct_fields__)


def test_config_never_prints_a_password_or_a_token() -> None:
    env = {
        "DATABASE_URL": "postgresql://app:hunter2@db.internal:5432/orders?sslmode=require&password=hunter3",
        "WRITE_API_TOKENS": "write-secret-1, write-secret-2",
        "READ_API_TOKENS": "read-secret",
    }
    code, output = invoke("config", env=env)
    assert code == 0, output
    for secret in ("hunter2", "hunter3", "write-secret", "read-secret"):
        assert secret not in output
    # What an operator needs to recognise the setting is still there.
    assert "DATABASE_URL=postgresql://app:***@db.internal:5432/orders?sslmode=require&password=***\n" in output
    assert "WRITE_API_TOKENS=***,***\n" in output


def test_config_refuses_a_bad_setting_naming_the_variable() -> None:
    code, output = invoke("config", env={"READ_POOL_MAX_SIZE": "0"})
    assert code != 0
    assert "READ_POOL_MAX_SIZE" in output


def test_config_markdown_is_the_committed_reference_whatever_the_environment() -> None:
    committed = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    code, output = invoke("config", "--markdown", env={"WRITE_POOL_SIZE": "abc", "WRITE_API_TOKENS": "secret"})
    assert code == 0, output
    assert output == committed

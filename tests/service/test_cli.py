"""The command line as operators use it: serve, migrate, roles, pools."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import asyncpg
import httpx
from click.testing import CliRunner

from service.cli import main, on_embedded_database, require_schema_at_head, uvicorn_options
from service.schema import current_revision, head_revision
from shared.config import Settings, asyncpg_dsn
from shared.roles import READ_ROLE
from tests.processes import own_env, serving_process, wait_ready


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


def test_a_schema_newer_than_this_release_names_no_command_of_this_release(empty_database: str) -> None:
    # A later release migrated the database: `orders-api migrate` of this one cannot fix that.
    assert invoke("migrate", env={"DATABASE_URL": empty_database})[0] == 0

    async def set_revision(revision: str) -> None:
        connection = await asyncpg.connect(asyncpg_dsn(empty_database))
        try:
            await connection.execute("UPDATE alembic_version SET version_num = $1", revision)
        finally:
            await connection.close()

    asyncio.run(set_revision("9999_from_a_later_release"))
    for command in ("serve", "migrate"):
        code, output = invoke(command, env={"DATABASE_URL": empty_database, "READ_API_OPEN": "true"})
        assert code == 1, output
        assert "9999_from_a_later_release, newer than this release" in output, output
        assert "run the release that migrated it" in output
        assert "Traceback" not in output
    asyncio.run(set_revision(head_revision()))


def test_migrate_against_an_unreachable_database_says_so_in_one_line() -> None:
    code, output = invoke("migrate", env={"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"})
    assert code == 1
    assert output.startswith("Error: cannot connect to the database at DATABASE_URL:"), output
    assert len(output.strip().splitlines()) == 1, output


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
    assert "per worker: 5 write + 6 read = 11" in output  # 4 pooled and the event positioner's
    assert "x 3 worker(s) = 33" in output
    assert "max_connections=" in output
    assert "fits" in output


def test_pools_exits_1_when_the_budget_exceeds_max_connections(database_url: str) -> None:
    code, output = invoke("pools", "--workers", "50", env={"DATABASE_URL": database_url})
    assert code == 1, output  # a script can stop on it
    assert "DOES NOT FIT" in output


def test_serve_against_a_database_refuses_queries_nobody_may_read_naming_both_settings(database_url: str) -> None:
    # So many workers that, without the check, serve would stop at the connection budget instead of
    # serving (and this test would fail, not hang).
    code, output = invoke("serve", "--workers", "100000", env={"DATABASE_URL": database_url})
    assert code != 0
    assert "READ_API_TOKENS" in output
    assert "READ_API_OPEN" in output


def test_the_embedded_demo_database_opens_the_queries_unless_read_tokens_are_set() -> None:
    url = "postgresql://postgres@/orders?host=/tmp/embedded"
    opened = on_embedded_database(Settings.from_env({}), url)
    assert (opened.database_url, opened.read_api_open) == (url, True)
    closed = on_embedded_database(Settings.from_env({"READ_API_TOKENS": "reader"}), url)
    assert (closed.read_api_tokens, closed.read_api_open) == (("reader",), False)


async def _on(url: str, statement: str) -> object:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


def test_roles_resets_the_plan_cache_mode_an_earlier_release_set_on_the_read_role(database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    assert invoke("roles", env=env)[0] == 0
    earlier = f"ALTER ROLE {READ_ROLE} IN DATABASE %I SET plan_cache_mode = 'force_custom_plan'"
    asyncio.run(_on(database_url, f"DO $$ BEGIN EXECUTE format($f${earlier}$f$, current_database()); END $$"))
    code, output = invoke("roles", env=env)
    assert code == 0, output
    defaults = asyncio.run(
        _on(
            database_url,
            f"SELECT setconfig FROM pg_db_role_setting WHERE setrole = to_regrole('{READ_ROLE}')"
            " AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    )
    assert isinstance(defaults, list)
    assert "TimeZone=UTC" in defaults
    assert not [setting for setting in defaults if setting.startswith("plan_cache_mode")], defaults


async def _execute(data_dir: Path, statement: str) -> object:
    connection = await asyncpg.connect(f"postgresql://postgres@/orders?host={data_dir}")
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


def test_serve_on_the_embedded_database_is_ready_and_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "pgdata", tmp_path / "serve.log"
    with serving_process("--data-dir", str(data_dir), env=own_env(), log=log) as (process, url):
        wait_ready(url, process, log)
        asyncio.run(_execute(data_dir, "INSERT INTO customers (email, name) VALUES ('kept@example.com', 'Kept')"))
        # The demo database's queries are open: no read token is set, none is needed.
        assert httpx.get(f"{url}/v1/customers/1", timeout=5).json()["email"] == "kept@example.com"
    assert process.returncode == 0, log.read_text()
    assert not (data_dir / "postmaster.pid").exists(), "stopping serve must stop the embedded PostgreSQL"
    output = log.read_text()
    assert str(data_dir) in output
    assert "generated token" in output

    with serving_process("--data-dir", str(data_dir), env=own_env(), log=log) as (process, url):
        wait_ready(url, process, log)
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

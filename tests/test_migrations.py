"""The migration and the ORM models describe the same schema, and the migration is reversible."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.schema import alembic_config, current_revision, downgrade_to_base, head_revision, upgrade_to_head
from shared.config import asyncpg_dsn, sqlalchemy_url
from testkit.database import connected
from writes.events import APPEND
from writes.models import Base


async def _differences(url: str) -> list[object]:
    engine = create_async_engine(sqlalchemy_url(url))

    def compare(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


def test_models_and_migration_agree(database_url: str) -> None:
    assert asyncio.run(_differences(database_url)) == []


def test_upgrade_and_downgrade_round_trip(empty_database: str) -> None:
    upgrade_to_head(empty_database)
    assert asyncio.run(current_revision(empty_database)) == head_revision()
    downgrade_to_base(empty_database)
    assert asyncio.run(current_revision(empty_database)) is None
    upgrade_to_head(empty_database)
    assert asyncio.run(current_revision(empty_database)) == head_revision()
    assert asyncio.run(_differences(empty_database)) == []


def test_downgrading_the_positions_after_commit_positions_what_waits_first(empty_database: str) -> None:
    """0008 -> 0007: an event committed but not yet positioned is positioned before 0007's trigger
    comes back (it would only position it at the next event's commit)."""
    upgrade_to_head(empty_database)

    async def append_one() -> None:
        connection = await asyncpg.connect(asyncpg_dsn(empty_database))
        try:
            await connection.execute(APPEND, ["customer.created"], [1], ["{}"])
        finally:
            await connection.close()

    async def positions() -> list[int | None]:
        connection = await asyncpg.connect(asyncpg_dsn(empty_database))
        try:
            return [row[0] for row in await connection.fetch("SELECT position FROM events ORDER BY id")]
        finally:
            await connection.close()

    asyncio.run(append_one())
    assert asyncio.run(positions()) == [None]
    command.downgrade(alembic_config(empty_database), "0007")
    assert asyncio.run(positions()) == [1]
    upgrade_to_head(empty_database)
    asyncio.run(append_one())
    assert asyncio.run(positions()) == [1, None]


INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"


async def _indexes(url: str) -> dict[str, str]:
    async with connected(asyncpg_dsn(url)) as connection:
        return {row["indexname"]: row["indexdef"] for row in await connection.fetch(INDEXES)}


async def _create_all(url: str) -> None:
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            await connection.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()


def test_the_migrations_build_the_models_indexes_exactly(database_url: str, empty_database: str) -> None:
    """Alembic's comparison leaves out an index's predicate, method and operator classes: a partial
    index the models declare (migration 0009's) would pass it built whole. Here every index the
    migrations built is the one the models create, in PostgreSQL's own words."""
    asyncio.run(_create_all(empty_database))
    migrated = asyncio.run(_indexes(database_url))
    migrated.pop("alembic_version_pkc")  # Alembic's own table
    assert migrated == asyncio.run(_indexes(empty_database))


def test_alembic_from_a_checkout_connects_where_the_service_does(empty_database: str) -> None:
    # docs/operating.md's way back (`alembic downgrade 0008`): alembic.ini names no URL, so
    # migrations/env.py takes DATABASE_URL, as the service does.
    upgrade_to_head(empty_database)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DATABASE_URL": empty_database}
    env.pop("WRITE_DATABASE_URL", None)
    env.pop("READ_DATABASE_URL", None)
    down = subprocess.run(
        [sys.executable, "-m", "alembic", "downgrade", "0008"], cwd=root, env=env, capture_output=True, text=True
    )
    assert down.returncode == 0, down.stderr
    assert asyncio.run(current_revision(empty_database)) == "0008"
    up = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=root, env=env, capture_output=True)
    assert up.returncode == 0, up.stderr
    assert asyncio.run(current_revision(empty_database)) == head_revision()

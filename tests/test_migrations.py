"""The migration and the ORM models describe the same schema, and the migration is reversible."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.schema import current_revision, downgrade_to_base, head_revision, upgrade_to_head
from shared.config import sqlalchemy_url
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

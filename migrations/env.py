"""Alembic environment: targets writes.models metadata and runs on the asyncpg driver.

The URL comes from the Alembic config (``sqlalchemy.url``), set by ``service.schema`` from Settings,
so migrations use the same connection settings as the service. Run as ``alembic`` from a checkout
(``alembic downgrade 0008``), the config sets none: the URL is then the service's own,
WRITE_DATABASE_URL or DATABASE_URL. asyncpg opens the connection from the URL itself, so its libpq
parameters hold (``sslmode=require``; ``writes.db.asyncpg_engine``).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from shared.config import Settings
from writes.db import asyncpg_engine
from writes.models import Base

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings.from_env().write_url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = asyncpg_engine(database_url(), {}, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())

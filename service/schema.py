"""The schema's migration state: Alembic's head, the database's revision, and upgrading to head."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations
from shared.config import sqlalchemy_url
from shared.sides import CURRENT_REVISION_SQL

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would read a '%' in a password as a placeholder.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("postgresql://unused/db")).get_current_head()
    assert head is not None, "the migrations directory has no revisions"
    return head


def upgrade_to_head(url: str) -> None:
    """Run every pending migration (blocking; call it outside a running event loop)."""
    command.upgrade(alembic_config(url), "head")


def downgrade_to_base(url: str) -> None:
    command.downgrade(alembic_config(url), "base")


async def current_revision(dsn: str) -> str | None:
    """The revision the database at ``dsn`` is at; None when it was never migrated."""
    # No statement cache: each statement runs once here, and behind PgBouncer a cached (named)
    # statement would outlive this connection on the server connection, where the next process's
    # first statement, named the same, would collide with it ("already exists"; seen in tests).
    connection = await asyncpg.connect(dsn, timeout=10, statement_cache_size=0)
    try:
        exists = await connection.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        return await connection.fetchval(CURRENT_REVISION_SQL) if exists else None
    finally:
        await connection.close()

"""The schema's migration state: Alembic's head, the database's revision, and upgrading to head."""

from __future__ import annotations

import functools
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


@functools.cache
def _scripts() -> ScriptDirectory:
    """This release's migrations, read once: a failing readiness probe asks on every call."""
    return ScriptDirectory.from_config(alembic_config("postgresql://unused/db"))


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "the migrations directory has no revisions"
    return head


def is_known(revision: str) -> bool:
    """Whether ``revision`` is one of this release's migrations. One it does not know was made by a
    later release: no command of this one can bring the database to its head."""
    return any(script.revision == revision for script in _scripts().walk_revisions())


def schema_advice(revision: str | None, head: str) -> str:
    """What to do about a database at ``revision`` when this release needs ``head``."""
    if revision is not None and not is_known(revision):
        return f"schema at {revision}, newer than this release (its head is {head}): run the release that migrated it"
    found = "not migrated" if revision is None else f"at {revision}"
    return f"schema {found}, head is {head}: run `orders-api migrate`"


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

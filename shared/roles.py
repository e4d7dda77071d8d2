"""The session each side's connections must see, and the database roles that carry it behind PgBouncer.

Connecting directly, the settings travel as startup parameters. PgBouncer in transaction mode refuses
startup parameters it does not track (only ``application_name``, ``TimeZone`` and a few encodings pass),
so there they live as role defaults instead (``ALTER ROLE ... IN DATABASE ... SET``) on two dedicated
roles, which ``orders-api roles`` creates from the same settings. PgBouncer pools server connections per
(database, user), so every server connection a side is handed was started as that side's role and holds
its defaults in every transaction, at no per-query cost. ``SET LOCAL`` per transaction was measured
instead and cost a read 1.6-1.8x (README, Operations, PgBouncer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.config import Settings

READ_ROLE = "orders_api_read"
WRITE_ROLE = "orders_api_write"

# What PgBouncer tracks per client and sets on whichever server connection the client is given. The
# roles hold these too: asyncpg's reset on release runs RESET ALL, which returns them to the server
# connection's startup values, and PgBouncer then adopts those as the client's (application_name was
# '' on the next query, measured); RESET returns them to the role's defaults instead.
PGBOUNCER_TRACKED = frozenset({"application_name", "TimeZone"})


class SessionSettingsWrong(Exception):
    """A pool's connections see settings other than the ones its side needs; the message says which."""


@dataclass(frozen=True)
class SideSession:
    """What one side's sessions must hold: ``settings`` as ``pg_settings.setting`` reports them."""

    side: str
    role: str  # the dedicated role that carries ``settings`` behind PgBouncer
    url_variable: str
    application: str
    settings: Mapping[str, str]

    @property
    def expected(self) -> dict[str, str]:
        return {**self.settings, "application_name": self.application}

    def startup_parameters(self, pgbouncer: bool) -> dict[str, str]:
        """The ``server_settings`` to connect with: all of them directly; behind PgBouncer only what
        PgBouncer tracks, the rest being the role's defaults (checked by ``check``)."""
        if not pgbouncer:
            return self.expected
        return {name: value for name, value in self.expected.items() if name in PGBOUNCER_TRACKED}

    @property
    def check_sql(self) -> str:
        """One round trip reading the settings (constants of this module, never input)."""
        names = ", ".join(f"'{name.lower()}'" for name in self.expected)
        return f"SELECT name, setting FROM pg_settings WHERE lower(name) IN ({names})"  # noqa: S608 - constants

    def check(self, seen: Iterable[Sequence[Any]]) -> None:
        """Raise ``SessionSettingsWrong`` naming every setting ``seen`` gets wrong, and the fix."""
        found = {str(name).lower(): value for name, value in seen}
        wrong = [
            f"{name} is {found.get(name.lower())!r}, expected {value!r}"
            for name, value in self.expected.items()
            if found.get(name.lower()) != value
        ]
        if wrong:
            raise SessionSettingsWrong(
                f"PGBOUNCER=true: the {self.side} pool's sessions do not hold its settings ({'; '.join(wrong)})."
                f" Behind PgBouncer they are the defaults of the role {self.role}: run `orders-api roles` as"
                f" the database owner with these settings, and connect as {self.role} ({self.url_variable})."
            )


def read_session(settings: Settings) -> SideSession:
    return SideSession(
        side="read",
        role=READ_ROLE,
        url_variable="READ_DATABASE_URL",
        application="orders-api:read",
        settings={
            "statement_timeout": str(settings.read_statement_timeout_ms),
            # Nothing on the read side writes; a bug that tries is an error, not a silent change.
            "default_transaction_read_only": "on",
            # Views are built as JSON in SQL; UTC offsets there decode to the same datetimes the
            # write side returns, so both sides encode a timestamp identically (…Z).
            "TimeZone": "UTC",
        },
    )


def write_session(settings: Settings) -> SideSession:
    return SideSession(
        side="write",
        role=WRITE_ROLE,
        url_variable="WRITE_DATABASE_URL",
        application="orders-api:write",
        settings={
            "statement_timeout": str(settings.write_statement_timeout_ms),
            # Each statement a command sends finds its rows by key, so one plan serves every call.
            # Left to choose, PostgreSQL planned a place's stock statement anew on every call (a
            # custom plan for an array of one to three products looks cheaper than the generic
            # one): 316 µs of the database's CPU a place, about a quarter of it (README, issue 20,
            # round 7). An import's statements take it too: none has a plan that depends on how
            # many orders it carries (``writes.readmodels.RECORD_IMPORTED``).
            "plan_cache_mode": "force_generic_plan",
        },
    )


def role_statements(settings: Settings, database: str) -> list[str]:
    """What ``orders-api roles`` runs, as the database owner: idempotent, so it is re-run after every
    change of the statement timeouts or migration. ``database`` comes quoted (``quote_ident``)."""
    statements = [_create_role(READ_ROLE), _create_role(WRITE_ROLE)]
    for session in (read_session(settings), write_session(settings)):
        for name, value in session.expected.items():
            # Per database: two deployments sharing a cluster keep their own timeouts.
            statements.append(f"ALTER ROLE {session.role} IN DATABASE {database} SET {name} = '{value}'")
    # Earlier releases set plan_cache_mode = force_custom_plan on the read role, for list queries
    # written as "$1 IS NULL OR col = $1". They now have a text per combination of filters, fine
    # under generic plans (reads.queries.orders), and re-planning every execution cost the point
    # queries about a third of their rate: re-running this after upgrading returns it to the default.
    statements.append(f"ALTER ROLE {READ_ROLE} IN DATABASE {database} RESET plan_cache_mode")
    return [
        *statements,
        f"GRANT CONNECT ON DATABASE {database} TO {READ_ROLE}, {WRITE_ROLE}",
        f"GRANT USAGE ON SCHEMA public TO {READ_ROLE}, {WRITE_ROLE}",
        # Least privilege: the read role only reads; the write role changes rows but no schema
        # (PostgreSQL 15 grants no CREATE on public to PUBLIC) and not the migration state.
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READ_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {WRITE_ROLE}",
        f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {WRITE_ROLE}",
        # Identity columns draw from sequences.
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {WRITE_ROLE}",
        # Tables a later migration creates (as this owner) come with the same grants.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READ_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {WRITE_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {WRITE_ROLE}",
    ]


def _create_role(role: str) -> str:
    # No password: that is the operator's (ALTER ROLE ... PASSWORD, or the server's auth config).
    return (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')"
        f" THEN CREATE ROLE {role} LOGIN; END IF; END $$"
    )

"""orders-api serve | migrate | roles | seed | pools | config (the benchmark is ``python -m bench``)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import click
import msgspec
import sqlalchemy.exc
import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE

import writes.seed
from service import embedded
from service.app import SIDES_FOR_ROLE, ServeRole, create_app, require_query_access
from service.logs import configure_logging
from service.metrics import multiprocess_directory
from service.reference.configuration import configuration_markdown, effective_report
from service.schema import current_revision, head_revision, is_known, schema_advice, upgrade_to_head
from service.server import HeadBounds
from service.tracing import from_environment, requested
from shared.config import ConfigError, Settings, asyncpg_dsn
from shared.roles import READ_ROLE, WRITE_ROLE, SessionSettingsWrong, role_statements
from shared.sides import Side
from writes.events import POSITIONER_CONNECTIONS

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the embedded PostgreSQL keeps its data (used only when DATABASE_URL is unset).",
    show_default=f"{embedded.default_data_dir()}",
)


@click.group()
def main() -> None:
    """orders-api: a hybrid CQRS order-management service."""
    configure_logging()


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def with_database(settings: Settings, data_dir: Path | None) -> tuple[Settings, Any]:
    """Settings that name a database: the configured one, or the embedded server started here."""
    if not settings.is_embedded:
        return settings, None
    directory = data_dir or embedded.default_data_dir()
    server, url = embedded.start_with_database(directory)
    click.echo(f"embedded PostgreSQL running; data lives in {directory}")
    return on_embedded_database(settings, url), server


def on_embedded_database(settings: Settings, url: str) -> Settings:
    """``settings`` naming the embedded demo database at ``url``, where queries are open to anyone
    (READ_API_OPEN) unless READ_API_TOKENS says who may read."""
    return msgspec.structs.replace(settings, database_url=url, read_api_open=not settings.read_api_tokens)


def with_schema_at_head(data_dir: Path | None) -> tuple[Settings, Any]:
    """``with_database``, and a schema at head: the embedded database is migrated, a configured
    one must already be (its operator decides when to migrate)."""
    settings, server = with_database(load_settings(), data_dir)
    if server is not None:
        upgrade_to_head(settings.write_url)
    else:
        require_schema_at_head(settings)
    return settings, server


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--role",
    type=click.Choice(["all", "reads", "writes"]),
    default="all",
    show_default=True,
    help="The sides to serve: reads opens only the read pool (commands answer 404), writes the reverse.",
)
@DATA_DIR
def serve(host: str, port: int, workers: int, role: ServeRole, data_dir: Path | None) -> None:
    """Serve the API (on the embedded PostgreSQL when DATABASE_URL is unset)."""
    settings, _server = with_schema_at_head(data_dir)
    settings = msgspec.structs.replace(settings, orders_api_role=role)
    try:
        require_query_access(settings, SIDES_FOR_ROLE[role])
        requested(os.environ)  # an OTEL_* variable set without the otel extra stops here, not in each worker
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    require_connection_budget(settings, workers)
    require_session_settings(settings, SIDES_FOR_ROLE[role])
    # A reads process runs no command, so it needs no write token.
    if role != "reads" and not settings.write_api_tokens:
        token = secrets.token_urlsafe(24)
        settings = msgspec.structs.replace(settings, write_api_tokens=(token,))
        click.echo(f"WRITE_API_TOKENS is unset; commands accept this generated token: {token}")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM (in-flight requests drain, the lifespan closes
    # the pools), then raises the signal again for the handler it found; by default that kills the
    # process with the signal, before atexit could stop an embedded PostgreSQL, and a supervisor
    # reads it as a crash. The shutdown was clean: exit 0. Until uvicorn serves, a signal exits here.
    # (With --workers, uvicorn's supervisor takes these signals over, forwards SIGTERM to each
    # worker, waits for them, then returns here.)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_cleanly)
    options = uvicorn_options(settings)
    if workers == 1:
        serve_in_this_process(serving_app(settings, role), host=host, port=port, **options)
        return
    # Worker processes build their own app from the environment: hand them what was decided here.
    os.environ["DATABASE_URL"] = settings.write_url
    os.environ["WRITE_API_TOKENS"] = ",".join(settings.write_api_tokens)
    os.environ["READ_API_OPEN"] = "true" if settings.read_api_open else "false"
    os.environ["ORDERS_API_ROLE"] = role
    # The workers sum their metrics through files in one directory (shared.metrics).
    with multiprocess_directory():
        uvicorn.run("service.cli:app_from_env", factory=True, host=host, port=port, workers=workers, **options)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves the app, in one place: ``serve`` and the socket tests both use it."""
    bounds = HeadBounds(
        timeout=settings.header_timeout,
        max_bytes=settings.max_header_bytes,
        max_count=settings.max_headers,
        send_timeout=settings.send_timeout,
    )
    # SIGTERM: stop accepting, give in-flight requests SHUTDOWN_TIMEOUT, then cancel what is left
    # so the lifespan can close the pools. uvicorn's default (None) would wait for ever.
    return {
        "http": bounds,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        # "text" is uvicorn's own line; "json" is written by service.logs.RequestLog. Otherwise uvicorn's
        # access logger gets no handler, so it does not even build the line.
        "access_log": settings.access_log == "text",
        # No software banner: "Server: uvicorn" told every client what runs here (and which advisories
        # apply), and was one more field for uvicorn to check and write on every answer.
        "server_header": False,
    }


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def serve_in_this_process(app: Any, **options: Any) -> None:
    """``uvicorn.run(app, **options)`` for one worker, with the signals left to uvicorn's server.

    uvicorn raises the signal it stopped on again inside its event loop, right after the lifespan
    reports its shutdown complete but before the lifespan's task has returned. Exiting there
    (``_exit_cleanly``) cancels that task, and uvicorn logs "ASGI 'lifespan' protocol appears
    unsupported" after every clean shutdown. With the server's own handler in place, the signal
    raised again only repeats the request to exit: the loop ends, the lifespan's task with it, and
    this returns. The handler is installed before the loop starts, so a signal that arrives
    before uvicorn takes the signals over stops the server as soon as it starts."""
    server = uvicorn.Server(uvicorn.Config(app, **options))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, server.handle_exit)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # as uvicorn.run does: the lifespan or the socket failed


def app_from_env() -> Any:
    """The uvicorn factory for ``--workers`` > 1."""
    # A worker is a fresh interpreter, which uvicorn sets up only its own loggers in: without this its
    # orders_api.* INFO lines would go nowhere, and its warnings would lack the request they belong to.
    configure_logging()
    settings = Settings.from_env()
    # Its own tracer provider too (service.tracing), made here in the worker process: the supervisor
    # made none, and one made before the workers started would not bring its export thread along.
    return serving_app(settings, settings.orders_api_role)


def serving_app(settings: Settings, role: ServeRole) -> Starlette:
    """The app a serving process runs: it freezes the heap its start-up built (service.heap)."""
    return create_app(settings, SIDES_FOR_ROLE[role], from_environment(os.environ), freeze_heap=True)


def require_schema_at_head(settings: Settings) -> None:
    head = head_revision()
    revision = schema_revision(settings)
    if revision != head:
        raise click.ClickException(f"the database's {schema_advice(revision, head)}")


def schema_revision(settings: Settings) -> str | None:
    """The database's migration revision (None: never migrated), or one line on why it cannot be read."""
    try:
        return asyncio.run(current_revision(asyncpg_dsn(settings.write_url)))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise click.ClickException(f"cannot connect to the database at DATABASE_URL: {exc}") from None


@main.command()
@DATA_DIR
def migrate(data_dir: Path | None) -> None:
    """Upgrade the database schema to the migration head."""
    settings, _server = with_database(load_settings(), data_dir)
    head = head_revision()
    revision = schema_revision(settings)  # one line for an unreachable database, before Alembic's tracebacks
    if revision is not None and not is_known(revision):
        raise click.ClickException(f"the database's {schema_advice(revision, head)}")
    try:
        upgrade_to_head(settings.write_url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, sqlalchemy.exc.DBAPIError) as exc:
        # A failure after connecting (a lost connection, a migration's statement refused): its cause
        # on one line. The schema is where the last migration that committed left it.
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"migrating failed: {type(cause).__name__}: {str(cause).splitlines()[0]}") from None
    click.echo(f"schema is at head ({head})")


def require_session_settings(settings: Settings, sides: Sequence[Side]) -> None:
    """Behind PgBouncer, open each pool once before serving: opening checks that its sessions hold the
    side's settings (``shared.roles``), so a role left unconfigured stops here with one message,
    not in every worker's lifespan. Directly, startup parameters carry them: nothing to check."""
    if not settings.pgbouncer:
        return

    async def open_each() -> None:
        for side in sides:
            await (await side.open_pool(settings, head_revision())).close()

    try:
        asyncio.run(open_each())
    except SessionSettingsWrong as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@DATA_DIR
def roles(data_dir: Path | None) -> None:
    """Create or update the roles the sides connect as behind PgBouncer (run as the database owner)."""
    settings, _server = with_database(load_settings(), data_dir)
    try:
        asyncio.run(apply_roles(settings))
    except (OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(f"cannot set up the roles: {exc}") from None
    click.echo(
        f"roles {READ_ROLE} (READ_DATABASE_URL) and {WRITE_ROLE} (WRITE_DATABASE_URL) hold this environment's"
        " settings and grants; their passwords are yours to set (ALTER ROLE ... PASSWORD)"
    )


async def apply_roles(settings: Settings) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(settings.write_url), timeout=10, statement_cache_size=0)
    try:
        database = await connection.fetchval("SELECT quote_ident(current_database())")
        # One transaction: the roles end up fully configured, or as they were.
        async with connection.transaction():
            for statement in role_statements(settings, database):
                await connection.execute(statement)
    finally:
        await connection.close()


@main.command()
@click.option("--customers", default=10_000, show_default=True, type=click.IntRange(min=1))
@click.option("--products", default=1_000, show_default=True, type=click.IntRange(min=1))
@click.option("--orders", default=100_000, show_default=True, type=click.IntRange(min=0))
@DATA_DIR
def seed(customers: int, products: int, orders: int, data_dir: Path | None) -> None:
    """Fill the database with demo data through the bulk write paths."""
    settings, _server = with_schema_at_head(data_dir)
    counts = writes.seed.SeedCounts(customers=customers, products=products, orders=orders)
    with click.progressbar(length=counts.total, label="seeding demo data") as bar:
        asyncio.run(writes.seed.seed(settings, counts, bar.update))
    # The demo customers and products are named (their emails, their SKUs): seeding again keeps those
    # already there and adds the rest, while every run adds its orders.
    click.echo(
        f"seeded {orders} orders, for {customers} demo customers and {products} demo products"
        " (those from an earlier seed kept as they were)"
    )


@main.command()
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes you plan to run.",
)
@DATA_DIR
def pools(workers: int, data_dir: Path | None) -> None:
    """Show each pool's settings and the connection budget against max_connections; exit 1 when
    the pools do not fit."""
    settings, _server = with_database(load_settings(), data_dir)
    max_connections, reserved, in_use = fetch_server_limits(settings.write_url)
    click.echo(pool_report(settings, workers, max_connections, reserved, in_use))
    # Non-zero, so a deploy script can stop on it (`orders-api pools --workers 8 && deploy`).
    if not connection_budget(settings, workers, max_connections, reserved).fits:
        sys.exit(1)


def fetch_server_limits(url: str) -> tuple[int, int, int]:
    try:
        return asyncio.run(server_limits(asyncpg_dsn(url)))
    except (OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(f"cannot connect to the database: {exc}") from None


async def server_limits(dsn: str) -> tuple[int, int, int]:
    # No statement cache: one statement, and behind PgBouncer a named one would outlive this
    # connection (service.schema.current_revision says more).
    connection = await asyncpg.connect(dsn, timeout=10, statement_cache_size=0)
    try:
        row = await connection.fetchrow(
            "SELECT current_setting('max_connections')::int AS max_connections,"
            " current_setting('superuser_reserved_connections')::int"
            " + current_setting('reserved_connections')::int AS reserved,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS in_use"
        )
    finally:
        await connection.close()
    return row["max_connections"], row["reserved"], row["in_use"]


@dataclass(frozen=True)
class Budget:
    """The connections a process's pools may open, against what the server leaves for clients."""

    write_per_worker: int
    read_per_worker: int
    workers: int
    max_connections: int
    reserved: int  # superuser_reserved_connections + reserved_connections: not for this service

    @property
    def per_worker(self) -> int:
        return self.write_per_worker + self.read_per_worker

    @property
    def needed(self) -> int:
        return self.per_worker * self.workers

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved

    @property
    def fits(self) -> bool:
        return self.needed <= self.available


def connection_budget(settings: Settings, workers: int, max_connections: int, reserved: int) -> Budget:
    """Only the pools of ``settings.orders_api_role`` count: a reads process opens no write connection."""
    role = settings.orders_api_role
    # A process that runs commands also holds its event positioner's connection (writes.events).
    pooled = settings.write_pool_size + settings.write_pool_max_overflow
    write = 0 if role == "reads" else pooled + POSITIONER_CONNECTIONS
    read = 0 if role == "writes" else settings.read_pool_max_size
    return Budget(write, read, workers, max_connections, reserved)


def require_connection_budget(settings: Settings, workers: int) -> None:
    """Refuse to serve pools that, full, would need more connections than the server allows: the
    last ones would fail to connect under load, far from this cause."""
    # The server the counted pools reach (a reads process: the read URL; the write URL otherwise,
    # as `orders-api pools` does).
    url = settings.read_url if settings.orders_api_role == "reads" else settings.write_url
    max_connections, reserved, _in_use = fetch_server_limits(url)
    budget = connection_budget(settings, workers, max_connections, reserved)
    if budget.fits:
        return
    knobs = [
        *(["WRITE_POOL_SIZE", "WRITE_POOL_MAX_OVERFLOW"] if budget.write_per_worker else []),
        *(["READ_POOL_MAX_SIZE"] if budget.read_per_worker else []),
        "--workers",
    ]
    raise click.ClickException(
        f"the pools need more connections than the server allows: {workers} worker(s) x"
        f" ({budget.write_per_worker} write + {budget.read_per_worker} read) = {budget.needed},"
        f" but max_connections={max_connections} minus {reserved} reserved"
        f" (superuser_reserved_connections + reserved_connections) leaves {budget.available}."
        f" Lower {', '.join(knobs)}, or raise the server's max_connections."
    )


def pool_report(settings: Settings, workers: int, max_connections: int, reserved: int, in_use: int) -> str:
    budget = connection_budget(settings, workers, max_connections, reserved)
    verdict = "fits" if budget.fits else "DOES NOT FIT: lower the pool sizes or the workers"
    return "\n".join(
        [
            "write pool (SQLAlchemy, commands)",
            f"  WRITE_POOL_SIZE={settings.write_pool_size}  WRITE_POOL_MAX_OVERFLOW={settings.write_pool_max_overflow}"
            f"  WRITE_POOL_TIMEOUT={settings.write_pool_timeout}s  WRITE_POOL_RECYCLE={settings.write_pool_recycle}s"
            f"  WRITE_POOL_PRE_PING={settings.write_pool_pre_ping}"
            f"  WRITE_STATEMENT_TIMEOUT_MS={settings.write_statement_timeout_ms}",
            "read pool (asyncpg, queries)",
            f"  READ_POOL_MIN_SIZE={settings.read_pool_min_size}  READ_POOL_MAX_SIZE={settings.read_pool_max_size}"
            f"  READ_POOL_ACQUIRE_TIMEOUT={settings.read_pool_acquire_timeout}s"
            f"  READ_POOL_MAX_INACTIVE_LIFETIME={settings.read_pool_max_inactive_lifetime}s"
            f"  READ_STATEMENT_CACHE_SIZE={settings.read_statement_cache_size}"
            f"  READ_STATEMENT_TIMEOUT_MS={settings.read_statement_timeout_ms}",
            f"PGBOUNCER={settings.pgbouncer}",
            "connection budget (the write side's count includes the event positioner's own connection)",
            f"  per worker: {budget.write_per_worker} write + {budget.read_per_worker} read = {budget.per_worker}",
            f"  x {workers} worker(s) = {budget.needed}",
            f"  server max_connections={max_connections}, reserved={reserved}: {budget.available} for clients"
            f" ({in_use} in use now)",
            f"  {budget.needed} of {budget.available}: {verdict}",
        ]
    )


@main.command()
@click.option(
    "--markdown",
    is_flag=True,
    help="Print the reference table of docs/configuration.md instead (defaults only; the environment is not read).",
)
def config(markdown: bool) -> None:
    """Show every configuration variable: its effective value (secrets masked), type, default, bounds and meaning."""
    click.echo(configuration_markdown() if markdown else effective_report(load_settings()), nl=not markdown)

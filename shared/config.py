"""Settings read once from the environment, typed and validated, then passed in.

Nothing else in the service reads ``os.environ``: ``Settings.from_env`` is the only door.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

log = logging.getLogger(__name__)

MiB = 1024 * 1024

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(gt=0)]
# PostgreSQL's statement_timeout is an int4 of milliseconds.
TimeoutMs = Annotated[int, Meta(ge=0, le=2_147_483_647)]
# Ten years: a longer TTL is a typo, and past datetime's range it would break every keyed command.
TtlSeconds = Annotated[int, Meta(ge=1, le=10 * 365 * 86_400)]


class ConfigError(Exception):
    """A variable has a value the service cannot run with; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper", forbid_unknown_fields=False):
    # Field names are the environment variables (``rename="upper"``), so a validation error's
    # path names the variable the operator has to fix.
    database_url: str | None = None
    write_database_url: str | None = None
    read_database_url: str | None = None

    write_pool_size: PositiveInt = 5
    write_pool_max_overflow: NonNegativeInt = 0
    write_pool_timeout: Seconds = 2.0
    write_pool_recycle: PositiveInt = 1800
    write_pool_pre_ping: bool = True
    write_statement_timeout_ms: TimeoutMs = 5000
    # Requests allowed to queue for a write connection; past it a command is refused at once (503).
    # Writes are CPU-bound in the ORM at ~100-200 a second per worker, so 10 waiting is at most
    # about 100 ms of queue: a client hears "busy" at once instead of after WRITE_POOL_TIMEOUT.
    write_pool_max_waiting: NonNegativeInt = 10

    read_pool_min_size: NonNegativeInt = 2
    read_pool_max_size: PositiveInt = 10
    read_pool_acquire_timeout: Seconds = 1.0
    read_pool_max_inactive_lifetime: Annotated[float, Meta(ge=0)] = 300.0
    read_statement_cache_size: NonNegativeInt = 256
    read_statement_timeout_ms: TimeoutMs = 2000
    # Requests allowed to queue for a read connection; past it a query is refused at once (503).
    # A read takes about a millisecond of connection time, so 50 waiting is tens of milliseconds.
    read_pool_max_waiting: NonNegativeInt = 50
    # An export's first batch waits READ_POOL_ACQUIRE_TIMEOUT like any query (before the 200, a
    # busy pool is still a clean 503). Its later batches wait this long: once the headers are out,
    # giving up would cut the body, so a started export queues for its turn instead.
    read_export_wait: Seconds = 30.0

    pgbouncer: bool = False
    write_api_tokens: tuple[str, ...] = ()
    read_api_tokens: tuple[str, ...] = ()
    idempotency_ttl: TtlSeconds = 86_400
    max_body_bytes: PositiveInt = 1 * MiB
    max_import_bytes: PositiveInt = 64 * MiB
    # Slow or oversized requests (uvicorn bounds neither): a client that stalls its head or body
    # would hold a connection, and its buffers, for as long as it likes.
    # Seconds from connecting (or from the first byte of a later request) to the end of its head:
    # Go's usual ReadHeaderTimeout; a real client sends its head in one round trip.
    header_timeout: Annotated[float, Meta(gt=0, le=300)] = 10.0
    # Seconds to receive a whole body, from when the service starts reading it. 30 s is 2 MB/s for
    # the largest import; raise it for big imports over slow links.
    body_timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    # Request line plus header fields. 16 KiB is h11's and Node's default: room for long tokens
    # and proxy headers, while a stalled or hostile head costs about that much memory (plus one read).
    max_header_bytes: Annotated[int, Meta(ge=1024, le=1 * MiB)] = 16 * 1024
    # Header fields per request: 100 as in Apache's LimitRequestFields and Python's http.client.
    max_headers: Annotated[int, Meta(ge=8, le=10_000)] = 100
    # Seconds in-flight requests get to finish after SIGTERM before they are cut and the pools
    # closed. 10 s outlasts an ordinary request's worst case (a pool wait plus WRITE_STATEMENT_TIMEOUT_MS)
    # and sits well inside orchestrators' kill deadlines (Kubernetes' 30 s grace period), so the
    # pools close cleanly before a SIGKILL. A long export is cut at this bound.
    shutdown_timeout: Annotated[float, Meta(gt=0, le=600)] = 10.0
    # The sides this process serves. Chosen with `serve --role`, which hands it to its --workers
    # processes through this variable (they build their app from the environment).
    orders_api_role: Literal["all", "reads", "writes"] = "all"
    # Measured as server CPU per request (README, Operations, Logs): uvicorn's text line costs 40-65 µs
    # (a quarter of a read's CPU here), the JSON line about 10 µs. JSON is the default: every request
    # is accounted for, with its route and X-Request-Id, for a fraction of the price. "off" costs nothing.
    access_log: Literal["off", "text", "json"] = "json"
    # Statements slower than this many milliseconds are logged with their pool and text (never their
    # parameters). Off (0) by default: timing every statement cost a read 10-40 µs of CPU here, and
    # nothing is installed while it is off. PostgreSQL's log_min_duration_statement does the same
    # server-side; this names the pool and the request.
    slow_statement_ms: TimeoutMs = 0

    def __post_init__(self) -> None:
        for name in ("database_url", "write_database_url", "read_database_url"):
            url = getattr(self, name)
            if url is not None:
                _check_postgres_url(name.upper(), url)
        if self.database_url is None and (self.write_database_url is None) != (self.read_database_url is None):
            raise ConfigError("set DATABASE_URL, or both WRITE_DATABASE_URL and READ_DATABASE_URL")
        if self.read_pool_min_size > self.read_pool_max_size:
            raise ConfigError(
                f"READ_POOL_MIN_SIZE ({self.read_pool_min_size}) must not exceed "
                f"READ_POOL_MAX_SIZE ({self.read_pool_max_size})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        known = {f.upper() for f in cls.__struct_fields__}
        for name in sorted(env):
            if name.startswith(("WRITE_", "READ_")) and name not in known:
                log.warning("unknown setting %s is ignored (known: see the configuration table)", name)
        raw: dict[str, object] = {}
        for name in known:
            value = env.get(name)
            if value is None or value.strip() == "":
                continue
            raw[name] = _split_tokens(value) if name.endswith("_API_TOKENS") else value.strip()
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid configuration: {_name_variable(str(exc))}") from None

    @property
    def is_embedded(self) -> bool:
        """True when no URL names a server, so the CLI must start the embedded PostgreSQL."""
        return self.database_url is None and self.write_database_url is None

    @property
    def write_url(self) -> str:
        return _require(self.write_database_url or self.database_url, "WRITE_DATABASE_URL or DATABASE_URL")

    @property
    def read_url(self) -> str:
        return _require(self.read_database_url or self.database_url, "READ_DATABASE_URL or DATABASE_URL")

    @property
    def write_sqlalchemy_url(self) -> str:
        """The write URL in SQLAlchemy's form, for the asyncpg dialect."""
        return sqlalchemy_url(self.write_url)

    @property
    def read_dsn(self) -> str:
        """The read URL in the form asyncpg accepts (``postgresql://``)."""
        return asyncpg_dsn(self.read_url)


def asyncpg_dsn(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


def sqlalchemy_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def _check_postgres_url(variable: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check (":abc" raises)
    except ValueError as exc:
        raise ConfigError(f"{variable} is not a valid URL ({exc}): use postgresql://user:pass@host:port/db") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{variable} must look like postgresql://user:pass@host:port/db, got scheme {parts.scheme!r}")
    if not parts.path.strip("/"):
        raise ConfigError(f"{variable} must name a database (postgresql://user:pass@host:port/db)")


def _split_tokens(value: str) -> list[str]:
    return [token.strip() for token in value.split(",") if token.strip()]


def _name_variable(message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.WRITE_POOL_SIZE`"; lead with the variable.
    text, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return message
    variable = path.rstrip("`").split("[")[0].split(".")[0]
    return f"{variable}: {text}"


def _require(value: str | None, what: str) -> str:
    if value is None:
        raise ConfigError(f"no database configured: set {what}")
    return value

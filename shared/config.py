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
import msgspec.inspect
from msgspec import Meta

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# The event positioner's spacing between rounds (``writes.events.Positioner``): the bench's write floor
# takes the same.
EVENTS_ROUND_MS = 50

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
# Every wait is bounded ("nothing waits unbounded"): `inf` or 1e300 would make a full pool hang its
# clients, and a millisecond is the least wait that still means one. Ten minutes is the longest,
# as for SHUTDOWN_TIMEOUT.
Seconds = Annotated[float, Meta(ge=0.001, le=600)]
# Counts and sizes a typo could make absurd (1e20 waiting requests, a 1 EB body): bounded far above
# any real setting, so a wrong one stops start-up instead of meaning "no limit".
Count = Annotated[int, Meta(ge=0, le=1_000_000)]
Bytes = Annotated[int, Meta(ge=1, le=4 * 1024**3)]
# PostgreSQL's statement_timeout is an int4 of milliseconds.
TimeoutMs = Annotated[int, Meta(ge=0, le=2_147_483_647)]
# Ten years: a longer TTL is a typo, and past datetime's range it would break every keyed command.
TtlSeconds = Annotated[int, Meta(ge=1, le=10 * 365 * 86_400)]


# Meta(extra=SECRET) marks a variable whose value must never be printed whole: `orders-api config`
# masks it (a URL's password, every token).
SECRET = {"secret": True}

# The variables whose value is a comma-separated list.
LISTS = frozenset({"WRITE_API_TOKENS", "READ_API_TOKENS", "CORS_ALLOW_ORIGINS"})


class ConfigError(Exception):
    """A variable has a value the service cannot run with; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper", forbid_unknown_fields=False):
    # Field names are the environment variables (``rename="upper"``), so a validation error's
    # path names the variable the operator has to fix.
    database_url: Annotated[
        str | None,
        Meta(
            description="PostgreSQL URL for both sides (postgresql://user:pass@host:port/db). Unset, and no "
            "per-side URLs: `serve` starts an embedded PostgreSQL in its data directory and migrates it.",
            extra=SECRET,
        ),
    ] = None
    write_database_url: Annotated[
        str | None,
        Meta(
            description="The write side's database, instead of DATABASE_URL; set it with READ_DATABASE_URL.",
            extra=SECRET,
        ),
    ] = None
    read_database_url: Annotated[
        str | None,
        Meta(
            description="The read side's database, instead of DATABASE_URL; set it with WRITE_DATABASE_URL "
            "unless DATABASE_URL is set. Streaming replicas: name them all, libpq's multi-host form "
            "(postgresql://user:pass@replica1:5432,replica2:5432/db); each gets its own read pool, and the "
            "primary (WRITE_DATABASE_URL or DATABASE_URL) serves what no replica can.",
            extra=SECRET,
        ),
    ] = None

    write_pool_size: Annotated[
        PositiveInt,
        Meta(description="Connections the write pool keeps per worker (SQLAlchemy pool_size); small on purpose."),
    ] = 5
    write_pool_max_overflow: Annotated[
        NonNegativeInt,
        Meta(description="Extra write connections opened under a burst, closed when returned (max_overflow)."),
    ] = 0
    write_pool_timeout: Annotated[
        Seconds, Meta(description="Seconds a command waits for a write connection; then it gets a 503.")
    ] = 2.0
    write_pool_recycle: Annotated[
        int, Meta(ge=1, le=7 * 86_400, description="Seconds a write connection is used before it is replaced.")
    ] = 1800
    write_pool_pre_ping: Annotated[
        bool,
        Meta(
            description="Test a write connection at checkout, so one the server dropped is replaced, not used"
            " (one given back less than 0.5 s ago is not tested again)."
        ),
    ] = True
    write_statement_timeout_ms: Annotated[
        TimeoutMs,
        Meta(
            description="statement_timeout of write connections, in ms (0: none); a statement past it is a 503, and so"
            " is a database that does not answer within it and 1 s more (the connection is closed)."
        ),
    ] = 5000
    write_pool_max_waiting: Annotated[
        Count,
        Meta(
            description="Commands allowed to wait for a write connection; past it a command gets a 503 at once. "
            "Writes are CPU-bound in the ORM at ~100-200 a second per worker, so 10 waiting is at most about "
            '100 ms of queue: a client hears "busy" at once instead of after WRITE_POOL_TIMEOUT.'
        ),
    ] = 10
    read_model_stripes: Annotated[
        int,
        Meta(
            ge=1,
            le=64,
            description="Rows each UTC day's sales total is spread over. Every paying command of a day adds to that "
            "day's total; a command adds to the stripe of its database connection, so up to this many commit at "
            "once instead of queueing on one row lock. Reads sum the stripes, so it may change at any time.",
        ),
    ] = 8

    read_pool_min_size: Annotated[
        NonNegativeInt, Meta(description="Read connections opened at start-up and kept (asyncpg min_size).")
    ] = 2
    read_pool_max_size: Annotated[
        PositiveInt, Meta(description="Most read connections per worker (asyncpg max_size).")
    ] = 10
    read_replica_max_lag_ms: Annotated[
        TimeoutMs,
        Meta(
            description="With replicas: one that has not replayed the primary's last commit for longer than "
            "this is skipped until it catches up. A query without a Consistency-Token may read data this old."
        ),
    ] = 5000
    read_consistency_wait_ms: Annotated[
        TimeoutMs,
        Meta(
            description="With replicas: how long a query with a Consistency-Token waits for a replica to "
            "replay past its command before the primary answers it instead."
        ),
    ] = 50
    read_primary_pool_max_size: Annotated[
        PositiveInt,
        Meta(
            description="With replicas: the primary's own small read pool per worker, for the queries no "
            "replica can answer (a Consistency-Token ahead of them all, or no healthy replica)."
        ),
    ] = 3
    read_pool_acquire_timeout: Annotated[
        Seconds, Meta(description="Seconds a query waits for a read connection; then it gets a 503.")
    ] = 1.0
    read_pool_max_inactive_lifetime: Annotated[
        float,
        Meta(
            ge=0,
            le=7 * 86_400,
            description="Seconds an idle read connection is kept before it is closed (0: for ever).",
        ),
    ] = 300.0
    read_statement_cache_size: Annotated[
        Count,
        Meta(description="Prepared statements asyncpg keeps per read connection (0: none; PGBOUNCER=true: none)."),
    ] = 256
    read_statement_timeout_ms: Annotated[
        TimeoutMs,
        Meta(
            description="statement_timeout of read connections, in ms (0: none); a statement past it is a 503, and so"
            " is a database that does not answer within it and 1 s more (the connection is closed)."
        ),
    ] = 2000
    read_pool_max_waiting: Annotated[
        Count,
        Meta(
            description="Queries allowed to wait for a read connection; past it a query gets a 503 at once. "
            "A read holds a connection for about a millisecond, so 100 waiting is a queue of tens of milliseconds; "
            "at 50, 64 steady clients on one worker (bench/) already had part of their reads refused."
        ),
    ] = 100
    read_export_wait: Annotated[
        Seconds,
        Meta(
            description="Seconds a started export's later batches wait for a read connection. Its first batch "
            "waits READ_POOL_ACQUIRE_TIMEOUT like any query (before the 200, a busy pool is still a clean 503); "
            "once the headers are out, giving up would cut the body, so a started export queues for its turn."
        ),
    ] = 30.0

    pgbouncer: Annotated[
        bool,
        Meta(
            description="The database URLs lead to PgBouncer in transaction mode: neither side reuses "
            "server-side prepared statements."
        ),
    ] = False
    write_api_tokens: Annotated[
        tuple[str, ...],
        Meta(
            description="Bearer tokens that commands accept. Unset: `serve` generates one and prints it.",
            extra=SECRET,
        ),
    ] = ()
    read_api_tokens: Annotated[
        tuple[str, ...],
        Meta(
            description="Bearer tokens that queries require (a write token does not open them). Queries return "
            "personal data (emails, names): a process serving them needs these or READ_API_OPEN=true, else it "
            "refuses to start.",
            extra=SECRET,
        ),
    ] = ()
    read_api_open: Annotated[
        bool,
        Meta(
            description="Queries need no token: anyone who reaches the service reads every customer's email and "
            "name. Set it on purpose, and not with READ_API_TOKENS. `serve` on the embedded demo database (no "
            "DATABASE_URL) sets it unless READ_API_TOKENS is set.",
        ),
    ] = False
    cors_allow_origins: Annotated[
        tuple[str, ...],
        Meta(
            description="Origins whose web pages may call the API from a browser (CORS), each as a browser "
            "sends it in Origin: scheme://host[:port], no path (https://shop.example.com). Unset: no CORS at "
            "all, so a browser lets no other origin read an answer. `*` is refused: name each origin. "
            "Cookies are never allowed (no Access-Control-Allow-Credentials): pages send the bearer token in "
            "Authorization.",
        ),
    ] = ()
    idempotency_ttl: Annotated[
        TtlSeconds, Meta(description="Seconds an Idempotency-Key and its stored response are kept.")
    ] = 86_400
    events_retention: Annotated[
        TtlSeconds,
        Meta(
            description="Seconds an event is kept in the feed (7 days); older ones are purged in batches, and a "
            "cursor from before the oldest kept is a 410."
        ),
    ] = 7 * 86_400
    events_poll_ms: Annotated[
        int,
        Meta(
            ge=10,
            le=10_000,
            description="How often, in ms, each process reads the feed's head while clients wait on it (long-poll "
            "or stream): one query a period for all of them, never one each.",
        ),
    ] = 100
    events_round_ms: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000,
            description="Least time, in ms, between the beginnings of two positioning rounds of a writes process: "
            "the events its commands committed in the meantime are positioned (made readable) together, by one "
            "transaction. Lower delivers events sooner under load and costs the commands more rounds.",
        ),
    ] = EVENTS_ROUND_MS
    events_stream_seconds: Annotated[
        int,
        Meta(
            ge=1,
            le=86_400,
            description="Seconds an event stream (Server-Sent Events) stays open; then it ends and the client "
            "reconnects with Last-Event-ID.",
        ),
    ] = 300
    max_body_bytes: Annotated[
        Bytes, Meta(description="Largest command body, in bytes (1 MiB); a larger one is a 413.")
    ] = 1 * MiB
    max_import_bytes: Annotated[
        Bytes,
        Meta(description="Largest POST /v1/orders/import body, in bytes (64 MiB); a larger one is a 413."),
    ] = 64 * MiB
    # Slow or oversized requests (uvicorn bounds neither): a client that stalls its head or body
    # would hold a connection, and its buffers, for as long as it likes.
    header_timeout: Annotated[
        float,
        Meta(
            gt=0,
            le=300,
            description="Seconds from connecting (or from the first byte of a later request) to the end of "
            "its head, else the connection is closed. 10 s is Go's usual ReadHeaderTimeout; a real client sends "
            "its head in one round trip.",
        ),
    ] = 10.0
    body_timeout: Annotated[
        float,
        Meta(
            gt=0,
            le=3600,
            description="Seconds to receive a whole body, from when the service starts reading it, else a "
            "408. 30 s is 2 MB/s for the largest import; raise it for big imports over slow links.",
        ),
    ] = 30.0
    send_timeout: Annotated[
        float,
        Meta(
            gt=0,
            le=3600,
            description="Seconds a response may wait for its client to take more of it (the connection's send "
            "buffers full), else the connection is cut: a client that stops reading an event stream or an export "
            "holds neither past it. A client that reads at all, however slowly, is never cut.",
        ),
    ] = 60.0
    max_header_bytes: Annotated[
        int,
        Meta(
            ge=1024,
            le=1 * MiB,
            description="Largest request line plus header fields, in bytes, else a 431. 16 KiB is h11's and "
            "Node's default: room for long tokens and proxy headers, while a stalled or hostile head costs about "
            "that much memory (plus one read).",
        ),
    ] = 16 * 1024
    max_headers: Annotated[
        int,
        Meta(
            ge=8,
            le=10_000,
            description="Most header fields in a request, else a 431; 100 as in Apache's LimitRequestFields "
            "and Python's http.client.",
        ),
    ] = 100
    shutdown_timeout: Annotated[
        float,
        Meta(
            gt=0,
            le=600,
            description="Seconds in-flight requests get to finish after SIGTERM before they are cut and the "
            "pools closed. 10 s outlasts an ordinary request's worst case (a pool wait plus "
            "WRITE_STATEMENT_TIMEOUT_MS) and sits well inside orchestrators' kill deadlines (Kubernetes' 30 s), "
            "so the pools close cleanly before a SIGKILL. A long export is cut at this bound.",
        ),
    ] = 10.0
    # An environment variable because `serve --role` hands the role to its --workers processes
    # through it (they build their app from the environment).
    orders_api_role: Annotated[
        Literal["all", "reads", "writes"],
        Meta(
            description="The sides this process serves. `serve` sets it from --role, which wins over the "
            "environment, and hands it to its --workers processes."
        ),
    ] = "all"
    access_log: Annotated[
        Literal["off", "text", "json"],
        Meta(
            description="One line per request on stdout: json (one object a line, with route and X-Request-Id, "
            "the path without its query string, which may hold personal data), text (uvicorn's line, query "
            "string included) or off. JSON costs about 10 µs of server CPU a request, uvicorn's text line "
            "40-65 µs (a quarter of a read's CPU here), off nothing.",
        ),
    ] = "json"
    slow_statement_ms: Annotated[
        TimeoutMs,
        Meta(
            description="Log statements slower than this many ms, with their pool and text, never their "
            "parameters (0: off). Off by default: timing every statement cost a read 10-40 µs of CPU here. "
            "PostgreSQL's log_min_duration_statement does the same server-side; this names the pool and request.",
        ),
    ] = 0

    def __post_init__(self) -> None:
        for name in ("database_url", "write_database_url"):
            url = getattr(self, name)
            if url is not None:
                _check_postgres_url(name.upper(), url)
        for url in self.read_host_urls:
            _check_postgres_url("READ_DATABASE_URL", url)
        if self.database_url is None and (self.write_database_url is None) != (self.read_database_url is None):
            raise ConfigError("set DATABASE_URL, or both WRITE_DATABASE_URL and READ_DATABASE_URL")
        if self.read_api_open and self.read_api_tokens:
            raise ConfigError(
                "set READ_API_TOKENS (queries need one of them) or READ_API_OPEN=true (queries are open), not both"
            )
        if self.read_pool_min_size > self.read_pool_max_size:
            raise ConfigError(
                f"READ_POOL_MIN_SIZE ({self.read_pool_min_size}) must not exceed "
                f"READ_POOL_MAX_SIZE ({self.read_pool_max_size})"
            )
        for origin in self.cors_allow_origins:
            _check_origin(origin)

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
            raw[name] = _split_tokens(value) if name in LISTS else value.strip()
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
    def read_primary_url(self) -> str:
        """Where the read side's own pool on the primary connects, beside its replicas: the primary
        as the write URL names it (WRITE_DATABASE_URL or DATABASE_URL), as the role READ_DATABASE_URL
        names, when it names one. Replicas replay the primary's roles, so the read role is there too;
        the write role would hold the write side's session defaults, which PgBouncer's check refuses."""
        primary = urlsplit(self.write_url)
        credentials, at, _ = urlsplit(self.read_database_url or "").netloc.rpartition("@")
        if not at:
            return self.write_url
        return urlunsplit(primary._replace(netloc=f"{credentials}@{primary.netloc.rpartition('@')[2]}"))

    @property
    def read_host_urls(self) -> list[str]:
        """READ_DATABASE_URL with one host each: a libpq multi-host URL names several (replicas)."""
        return [] if self.read_database_url is None else split_hosts(self.read_database_url)

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


def split_hosts(url: str) -> list[str]:
    """``postgresql://u:p@h1:5432,h2:5433/db?x=y`` as one URL per host, each keeping the rest."""
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    return [urlunsplit(parts._replace(netloc=f"{credentials}{at}{host}")) for host in hosts.split(",")]


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


DEFAULT_PORTS = {"http": 80, "https": 443}
EXAMPLE_ORIGIN = "https://shop.example.com"


def _check_origin(origin: str) -> None:
    """``origin`` must be spelled as a browser serializes it in ``Origin`` (RFC 6454): CORS
    compares the two strings exactly, so any other spelling (a trailing slash, an upper-case host,
    the default port) would match no request and fail only in the browser, silently."""
    if origin == "*":
        raise ConfigError(
            "CORS_ALLOW_ORIGINS: `*` is refused: any web site could then read the answers (personal data) "
            f"through its visitors' browsers; name each origin whose pages call the API ({EXAMPLE_ORIGIN})"
        )
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        parts, port = None, None
    host = parts.hostname if parts is not None else None
    if parts is None or parts.scheme not in DEFAULT_PORTS or not host:
        raise ConfigError(
            f"CORS_ALLOW_ORIGINS: {origin!r} is not an origin: write scheme://host[:port] ({EXAMPLE_ORIGIN})"
        )
    if not host.isascii():
        raise ConfigError(f"CORS_ALLOW_ORIGINS: {origin!r}: write the host in its xn-- form, as browsers send it")
    bracketed = f"[{host}]" if ":" in host else host
    shown_port = "" if port in (None, DEFAULT_PORTS[parts.scheme]) else f":{port}"
    serialized = f"{parts.scheme}://{bracketed}{shown_port}"
    if origin != serialized:
        raise ConfigError(
            f"CORS_ALLOW_ORIGINS: {origin!r} is not an origin as a browser sends it (no path, no trailing slash, "
            f"lower case, no default port): write {serialized!r}"
        )


def _split_tokens(value: str) -> list[str]:
    return [token.strip() for token in value.split(",") if token.strip()]


def _name_variable(message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.WRITE_POOL_SIZE`"; lead with the variable. For a
    # choice ("Invalid enum value 'JSON'") name the values it takes.
    text, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return message
    variable = path.rstrip("`").split("[")[0].split(".")[0]
    if text.startswith("Invalid enum value") and (choices := _choices(variable)):
        text += f" (one of: {', '.join(map(str, choices))})"
    return f"{variable}: {text}"


def _choices(variable: str) -> tuple[object, ...]:
    """The values a setting that is a choice (a ``Literal``) takes; () for any other."""
    info = msgspec.inspect.type_info(Settings)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        if field.name == variable.lower():
            kind = field.type.type if isinstance(field.type, msgspec.inspect.Metadata) else field.type
            if isinstance(kind, msgspec.inspect.LiteralType):
                return tuple(kind.values)
    return ()


def _require(value: str | None, what: str) -> str:
    if value is None:
        raise ConfigError(f"no database configured: set {what}")
    return value

"""Which driver failures mean what, for both pools: one table, so the two sides cannot disagree.

The read side meets asyncpg's exceptions directly; the write side meets the same ones wrapped by
SQLAlchemy (``DBAPIError.orig`` and its ``__cause__``). Both ask ``classify`` and turn the answer
into a 503 with ``unavailable``, whose detail names the pool, the condition and the setting an
operator should look at. The driver's own message (host names, roles, SQL) goes to the log only.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg

from shared.errors import (
    ConnectionLost,
    DatabaseUnavailable,
    PoolExhausted,
    ServiceUnavailable,
    StatementTimeout,
)

log = logging.getLogger("orders_api.database")


class Failure(enum.Enum):
    CONFLICT = "transaction conflict"  # a fresh attempt of the whole transaction usually succeeds
    TIMEOUT = "statement timeout"
    FULL = "no connection slot on the server"
    LOST = "connection lost"  # this connection died; another one may well work
    UNAVAILABLE = "database unavailable"  # the server is away, starting, or shutting down


CONFLICTS = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
QUERY_CANCELED = "57014"  # statement_timeout fired
TOO_MANY_CONNECTIONS = "53300"
# Sent on (or just before the end of) a connection that is going away: its backend was
# terminated, the server is shutting down or crashed, or the link broke.
CONNECTION_ENDED = ("08", "57P01", "57P02")
# Nothing the request did wrong: the server is away, not ready yet (57P03 while starting up),
# or out of a resource (53: memory, disk, connections).
UNAVAILABLE_CLASSES = ("57P", "53")


# Socket errors on a link that was up (a refused connect is not one: that is UNAVAILABLE).
BROKEN_LINKS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, asyncpg.InternalClientError)


@dataclass(frozen=True)
class PoolNames:
    """How a 503 names a pool and the settings an operator would look at, and the pool's label in
    the metrics (written here, never derived from its name)."""

    pool: str
    url: str
    size: str
    acquire_timeout: str
    max_waiting: str
    statement_timeout: str
    label: str


READ = PoolNames(
    "read pool", "READ_DATABASE_URL or DATABASE_URL", "READ_POOL_MAX_SIZE", "READ_POOL_ACQUIRE_TIMEOUT",
    "READ_POOL_MAX_WAITING", "READ_STATEMENT_TIMEOUT_MS", "read",
)  # fmt: skip
WRITE = PoolNames(
    "write pool", "WRITE_DATABASE_URL or DATABASE_URL", "WRITE_POOL_SIZE + WRITE_POOL_MAX_OVERFLOW",
    "WRITE_POOL_TIMEOUT", "WRITE_POOL_MAX_WAITING", "WRITE_STATEMENT_TIMEOUT_MS", "write",
)  # fmt: skip


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: SQLAlchemy's ``orig``, then the adapter's ``__cause__``."""
    current: BaseException | None = exc
    for _ in range(4):  # the wrapping is at most three deep; never loop on a cycle
        if current is None:
            return
        yield current
        current = getattr(current, "orig", None) or current.__cause__


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE the server sent, found on ``exc`` or on the driver error it wraps."""
    for candidate in _chain(exc):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def classify(exc: BaseException, *, connection_closed: bool = False) -> Failure | None:
    """What a driver failure means for the request; None when it is not one of the database's ways
    of failing (a constraint, bad SQL, a value the driver cannot encode): that is for the caller.

    ``connection_closed`` is whether the connection the statement ran on is gone now: whatever the
    exception says, a query on a dead connection can only be retried elsewhere."""
    code = sqlstate(exc)
    if code in CONFLICTS:
        return Failure.CONFLICT
    if code == QUERY_CANCELED:
        return Failure.TIMEOUT
    if code == TOO_MANY_CONNECTIONS:
        return Failure.FULL
    chain = list(_chain(exc))
    if any(isinstance(e, TimeoutError) for e in chain):
        # No answer within the connection's bound (``shared.driver``), which closes it: the database
        # is silent, and a query repeated on a fresh connection would only wait as long again.
        return Failure.UNAVAILABLE
    if (
        connection_closed
        or (code is not None and code.startswith(CONNECTION_ENDED))
        # The client noticed before the server said anything: a reset socket, or asyncpg's
        # protocol left mid-message by a backend that vanished ("cannot switch to state ...").
        or any(isinstance(e, BROKEN_LINKS) for e in chain)
    ):
        return Failure.LOST
    if (code is not None and code.startswith(UNAVAILABLE_CLASSES)) or any(isinstance(e, OSError) for e in chain):
        return Failure.UNAVAILABLE
    return None


def unavailable(failure: Failure, names: PoolNames, exc: BaseException) -> ServiceUnavailable:
    """The 503 for ``failure``; logs the driver's exception, which the client never sees."""
    driver = list(_chain(exc))[-1]  # the driver's own exception: its message, on one line
    log.warning("%s: %s: %s: %s", names.pool, failure.value, type(driver).__name__, driver)
    match failure:
        case Failure.CONFLICT:
            return ServiceUnavailable(f"{names.pool}: the transaction kept conflicting with concurrent ones")
        case Failure.TIMEOUT:
            return StatementTimeout(f"{names.pool}: a statement ran past {names.statement_timeout}")
        case Failure.FULL:
            return DatabaseUnavailable(
                f"{names.pool}: the database has no connection slot free; check {names.size} x workers"
                " against the server's max_connections"
            )
        case Failure.LOST:
            return ConnectionLost(f"{names.pool}: connection to the database lost; check the server at {names.url}")
        case Failure.UNAVAILABLE:
            return DatabaseUnavailable(
                f"{names.pool}: database unreachable, not accepting connections or not answering; check the server"
                f" at {names.url}"
            )


def exhausted(names: PoolNames, timeout: float | None = None) -> PoolExhausted:
    within = names.acquire_timeout if timeout is None else f"{timeout} s ({names.acquire_timeout})"
    return PoolExhausted(f"{names.pool}: no connection free within {within}")

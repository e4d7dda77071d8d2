"""Exceptions named for what happened, and the one table that maps them to problem+json.

Handlers raise these with a ``detail`` that names the offending field path, id or rule; the app's
exception handler looks the class (or its nearest listed base) up in ``PROBLEMS``.
"""

from __future__ import annotations

from typing import NamedTuple


class ApiError(Exception):
    """Base of every error a client can cause or see; ``str(error)`` is the problem's detail."""

    headers: dict[str, str] = {}  # noqa: RUF012 - class-level default, never mutated


# 400
class MalformedRequest(ApiError):
    """Not HTTP/1.1 the parser can read (a bad request line, header or chunk); the connection is
    closed, since where the next request would start is unknown."""

    headers = {"Connection": "close"}  # noqa: RUF012


class MalformedJson(ApiError): ...


class BadCursor(ApiError): ...


class BadConsistencyToken(ApiError): ...


# 401
class Unauthenticated(ApiError):
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012


# 404
class NotFound(ApiError): ...


# 405
class MethodNotAllowed(ApiError): ...


# 408
class RequestTimeout(ApiError):
    """The body did not arrive within ``BODY_TIMEOUT``; the connection is closed, since the rest of
    the body may still be on its way (RFC 9110, 15.5.9)."""

    headers = {"Connection": "close"}  # noqa: RUF012


# 409
class EmailTaken(ApiError): ...


class SkuTaken(ApiError): ...


class InsufficientStock(ApiError): ...


class StockLimit(ApiError): ...


class InvalidTransition(ApiError): ...


class EventsPurged(ApiError):
    """A feed cursor from before the oldest event kept (EVENTS_RETENTION purged what followed it)."""


class RequestInProgress(ApiError): ...


# 412
class VersionMismatch(ApiError): ...


# 413
class BodyTooLarge(ApiError): ...


# 415
class NotJson(ApiError): ...


# 431
class HeadersTooLarge(ApiError): ...


# 499 (nginx's "client closed request"): nobody reads it, but the access log and metrics do.
class ClientClosedRequest(ApiError): ...


# 422
class InvalidInput(ApiError): ...


class IdempotencyKeyReused(ApiError): ...


# 503
class ServiceUnavailable(ApiError):
    headers = {"Retry-After": "1"}  # noqa: RUF012


class PoolExhausted(ServiceUnavailable):
    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class DatabaseUnavailable(ServiceUnavailable): ...


class ConnectionLost(DatabaseUnavailable):
    """The connection died under a statement (its backend was terminated, the server restarted):
    a query is safe to run again on a fresh connection, so the read side retries it once."""


class StatementTimeout(ServiceUnavailable): ...


class ProblemKind(NamedTuple):
    status: int
    title: str
    # Written out, not derived from the class name: renaming an exception never changes the contract.
    type: str


PROBLEMS: dict[type[ApiError], ProblemKind] = {
    MalformedRequest: ProblemKind(400, "Malformed HTTP request", "/problems/malformed-request"),
    MalformedJson: ProblemKind(400, "Malformed JSON", "/problems/malformed-json"),
    BadCursor: ProblemKind(400, "Bad cursor", "/problems/bad-cursor"),
    BadConsistencyToken: ProblemKind(400, "Bad consistency token", "/problems/bad-consistency-token"),
    Unauthenticated: ProblemKind(401, "Missing or invalid bearer token", "/problems/unauthenticated"),
    NotFound: ProblemKind(404, "Not found", "/problems/not-found"),
    MethodNotAllowed: ProblemKind(405, "Method not allowed", "/problems/method-not-allowed"),
    RequestTimeout: ProblemKind(408, "Request timeout", "/problems/request-timeout"),
    EmailTaken: ProblemKind(409, "Email already taken", "/problems/email-taken"),
    SkuTaken: ProblemKind(409, "SKU already taken", "/problems/sku-taken"),
    InsufficientStock: ProblemKind(409, "Insufficient stock", "/problems/insufficient-stock"),
    StockLimit: ProblemKind(409, "Stock limit reached", "/problems/stock-limit"),
    InvalidTransition: ProblemKind(409, "Invalid status transition", "/problems/invalid-transition"),
    RequestInProgress: ProblemKind(
        409, "Request with this idempotency key is in progress", "/problems/request-in-progress"
    ),
    EventsPurged: ProblemKind(410, "Events purged", "/problems/events-purged"),
    VersionMismatch: ProblemKind(412, "Version mismatch", "/problems/version-mismatch"),
    BodyTooLarge: ProblemKind(413, "Request body too large", "/problems/body-too-large"),
    NotJson: ProblemKind(415, "Unsupported media type", "/problems/not-json"),
    InvalidInput: ProblemKind(422, "Invalid input", "/problems/invalid-input"),
    IdempotencyKeyReused: ProblemKind(
        422, "Idempotency key reused with a different request", "/problems/idempotency-key-reused"
    ),
    HeadersTooLarge: ProblemKind(431, "Request header fields too large", "/problems/headers-too-large"),
    ClientClosedRequest: ProblemKind(499, "Client closed request", "/problems/client-closed-request"),
    PoolExhausted: ProblemKind(503, "Database pool exhausted", "/problems/pool-exhausted"),
    DatabaseUnavailable: ProblemKind(503, "Database unavailable", "/problems/database-unavailable"),
    StatementTimeout: ProblemKind(503, "Statement timed out", "/problems/statement-timeout"),
    ServiceUnavailable: ProblemKind(503, "Service unavailable", "/problems/service-unavailable"),
}


def problem_kind(error: ApiError) -> ProblemKind:
    for cls in type(error).__mro__:
        kind = PROBLEMS.get(cls)
        if kind is not None:
            return kind
    raise LookupError(f"{type(error).__name__} has no entry in PROBLEMS")

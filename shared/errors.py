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
class MalformedJson(ApiError): ...


class BadCursor(ApiError): ...


# 401
class Unauthenticated(ApiError):
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012


# 404
class NotFound(ApiError): ...


# 409
class EmailTaken(ApiError): ...


class SkuTaken(ApiError): ...


class InsufficientStock(ApiError): ...


class InvalidTransition(ApiError): ...


class RequestInProgress(ApiError): ...


# 412
class VersionMismatch(ApiError): ...


# 413
class BodyTooLarge(ApiError): ...


# 415
class NotJson(ApiError): ...


# 422
class InvalidInput(ApiError): ...


class IdempotencyKeyReused(ApiError): ...


# 503
class ServiceUnavailable(ApiError):
    headers = {"Retry-After": "1"}  # noqa: RUF012


class PoolExhausted(ServiceUnavailable): ...


class DatabaseUnavailable(ServiceUnavailable): ...


class ProblemKind(NamedTuple):
    status: int
    title: str


PROBLEMS: dict[type[ApiError], ProblemKind] = {
    MalformedJson: ProblemKind(400, "Malformed JSON"),
    BadCursor: ProblemKind(400, "Bad cursor"),
    Unauthenticated: ProblemKind(401, "Missing or invalid bearer token"),
    NotFound: ProblemKind(404, "Not found"),
    EmailTaken: ProblemKind(409, "Email already taken"),
    SkuTaken: ProblemKind(409, "SKU already taken"),
    InsufficientStock: ProblemKind(409, "Insufficient stock"),
    InvalidTransition: ProblemKind(409, "Invalid status transition"),
    RequestInProgress: ProblemKind(409, "Request with this idempotency key is in progress"),
    VersionMismatch: ProblemKind(412, "Version mismatch"),
    BodyTooLarge: ProblemKind(413, "Request body too large"),
    NotJson: ProblemKind(415, "Unsupported media type"),
    InvalidInput: ProblemKind(422, "Invalid input"),
    IdempotencyKeyReused: ProblemKind(422, "Idempotency key reused with a different request"),
    PoolExhausted: ProblemKind(503, "Database pool exhausted"),
    DatabaseUnavailable: ProblemKind(503, "Database unavailable"),
    ServiceUnavailable: ProblemKind(503, "Service unavailable"),
}


def problem_kind(error: ApiError) -> ProblemKind:
    for cls in type(error).__mro__:
        kind = PROBLEMS.get(cls)
        if kind is not None:
            return kind
    raise LookupError(f"{type(error).__name__} has no entry in PROBLEMS")


def problem_type(error: ApiError) -> str:
    """A stable URI reference per problem kind, e.g. ``/problems/insufficient-stock``."""
    name = type(error).__name__
    slug = "".join(f"-{c.lower()}" if c.isupper() else c for c in name).lstrip("-")
    return f"/problems/{slug}"

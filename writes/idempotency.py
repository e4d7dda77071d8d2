"""Idempotency keys: a command's first successful response, stored in the command's own transaction.

The key row is claimed first, with ``INSERT ... ON CONFLICT DO NOTHING`` on its primary key: a
concurrent request with the same key blocks on the unique index until the first one commits (then
it replays the stored response) or rolls back (then it runs the command itself). A failed request
rolls back its claim with everything else, so it stores nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta

import msgspec
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from shared.dbfailures import sqlstate
from shared.errors import IdempotencyKeyReused, InvalidInput, RequestInProgress
from shared.sides import resources
from writes.models import IdempotencyKey

KEY = re.compile(r"[\x20-\x7e]{1,255}")
# How long a retry waits for the first request with its key before it gets a 409 instead.
IN_PROGRESS_WAIT = "2s"
LOCK_NOT_AVAILABLE = "55P03"
# Expired keys are deleted a bounded batch at a time by the requests that claim new ones.
PURGE_BATCH = 100

PURGE_EXPIRED = text(
    """
    DELETE FROM idempotency_keys
    WHERE expires_at < now()
      AND ((token_hash = :token_hash AND key = :key)
           OR ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys WHERE expires_at < now()
                               LIMIT :batch FOR UPDATE SKIP LOCKED)))
    """
)


class StoredResponse(msgspec.Struct, frozen=True):
    """A response exactly as sent: what a replay sends again."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Claim:
    token_hash: bytes
    key: str
    fingerprint: bytes
    ttl_seconds: int


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and KEY.fullmatch(key) is None:
        raise InvalidInput("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


def claim_for(request: Request, token: str, key: str, body: bytes) -> Claim:
    """The key scoped to the caller's token, and the fingerprint of the request it names."""
    fingerprint = hashlib.sha256(b"\n".join([request.method.encode(), request.url.path.encode(), body])).digest()
    token_hash = hashlib.sha256(token.encode()).digest()
    return Claim(token_hash, key, fingerprint, resources(request).settings.idempotency_ttl)


async def store_response(session: AsyncSession, claim: Claim, response: StoredResponse) -> None:
    """Keep the response for replays; it commits with the command's effects, or not at all."""
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.token_hash == claim.token_hash, IdempotencyKey.key == claim.key)
        .values(status_code=response.status, headers=msgspec.json.encode(response.headers), body=response.body)
    )


async def claim_key(session: AsyncSession, claim: Claim) -> StoredResponse | None:
    """None when this request now owns the key; the stored response when another request did."""
    await session.execute(text(f"SET LOCAL lock_timeout = '{IN_PROGRESS_WAIT}'"))
    try:
        await session.execute(PURGE_EXPIRED, {"token_hash": claim.token_hash, "key": claim.key, "batch": PURGE_BATCH})
        claimed = await session.scalar(
            insert(IdempotencyKey)
            .values(
                token_hash=claim.token_hash,
                key=claim.key,
                fingerprint=claim.fingerprint,
                # Placeholders until the command succeeds; no other transaction ever sees them.
                status_code=0,
                headers=b"",
                body=b"",
                expires_at=func.now() + timedelta(seconds=claim.ttl_seconds),
            )
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.key)
        )
    except DBAPIError as exc:
        if sqlstate(exc) == LOCK_NOT_AVAILABLE:
            raise RequestInProgress(f"a request with Idempotency-Key {claim.key!r} is still running") from None
        raise
    await session.execute(text("SET LOCAL lock_timeout = DEFAULT"))
    return None if claimed is not None else await _stored(session, claim)


async def _stored(session: AsyncSession, claim: Claim) -> StoredResponse:
    row = (
        await session.execute(
            select(
                IdempotencyKey.fingerprint, IdempotencyKey.status_code, IdempotencyKey.headers, IdempotencyKey.body
            ).where(IdempotencyKey.token_hash == claim.token_hash, IdempotencyKey.key == claim.key)
        )
    ).one()
    if row.fingerprint != claim.fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {claim.key!r} was first used with another request (method, path or body)"
        )
    headers = msgspec.json.decode(row.headers, type=dict[str, str])
    return StoredResponse(status=row.status_code, headers=headers, body=row.body)

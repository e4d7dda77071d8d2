"""Idempotency keys: a command's first successful response, stored in the command's own transaction.

A keyed command costs two statements: ``CLAIM`` before the command and ``store_response`` after it.
The claim inserts the key row; a concurrent request with the same key blocks on the unique index
until the first one commits (then it replays the stored response) or rolls back (then it runs the
command itself). A failed request rolls back its claim with everything else, so it stores nothing.
Expired keys are never replayed: a claim takes an expired row over, and ``purge_periodically``
deletes the rest off the request path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import partial

import msgspec
from sqlalchemy import CursorResult, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from shared.dbfailures import sqlstate
from shared.errors import IdempotencyKeyReused, InvalidInput, RequestInProgress
from shared.sides import resources
from writes.db import WritePool, in_batches, periodically
from writes.models import IdempotencyKey
from writes.ondriver import OnDriver

KEY = re.compile(r"[\x20-\x7e]{1,255}")
# How long a retry waits for the first request with its key before it gets a 409 instead.
IN_PROGRESS_WAIT = "2s"
LOCK_NOT_AVAILABLE = "55P03"

# One round trip for what took four (SET LOCAL lock_timeout, purge, INSERT, SET LOCAL back): 38 %
# of write throughput before, measured (issue 10). Each step reads the one before it, which is
# what orders them inside the statement:
# - ``bounded`` notes the session's lock_timeout, then bounds it. The INSERT reads ``bounded``, so
#   the bound is in force before it can wait on a first request's uncommitted row;
# - ``claimed`` takes the key: a new row, or an expired one taken over in place (DO UPDATE ...
#   WHERE), so an expired response is never replayed and no DELETE is needed on the request path.
#   A live row is left alone and nothing is returned (it stays locked until the replay commits:
#   DO UPDATE locks before it tests WHERE; replays of one key queue for a round trip each);
# - the outer SELECT restores lock_timeout once ``claimed`` has run (it joins on it): the command's
#   own locks wait as long as any command's, up to WRITE_STATEMENT_TIMEOUT_MS. It also reads the
#   stored response, so a replay needs no second statement, unless the row was committed by the
#   transaction the INSERT waited for: the statement's snapshot predates it (see ``_stored``).
CLAIM = OnDriver(
    text(
        """
    WITH previous AS MATERIALIZED (SELECT current_setting('lock_timeout') AS lock_timeout),
    bounded AS MATERIALIZED (
        SELECT lock_timeout, set_config('lock_timeout', :in_progress_wait, true) FROM previous
    ),
    claimed AS (
        INSERT INTO idempotency_keys AS held
            (token_hash, key, fingerprint, status_code, headers, body, created_at, expires_at)
        -- Placeholders until the command succeeds; no other transaction ever sees them.
        SELECT :token_hash, :key, :fingerprint, 0, '', '', now(),
               now() + make_interval(secs => CAST(:ttl_seconds AS integer))
          FROM bounded
        ON CONFLICT (token_hash, key) DO UPDATE
            SET fingerprint = excluded.fingerprint, status_code = 0, headers = '', body = '',
                created_at = excluded.created_at, expires_at = excluded.expires_at
            WHERE held.expires_at < now()
        RETURNING true AS claimed
    )
    SELECT set_config('lock_timeout', bounded.lock_timeout, true) AS restored,
           claimed.claimed IS NOT NULL AS claimed,
           stored.fingerprint, stored.status_code, stored.headers, stored.body
      FROM bounded
      LEFT JOIN claimed ON true
      LEFT JOIN idempotency_keys AS stored
        ON stored.token_hash = :token_hash AND stored.key = :key AND stored.expires_at >= now()
    """
    )
)

# Expired keys are deleted in the background, a bounded batch per transaction: rows a claim is
# taking over are locked, and skipped rather than waited for.
PURGE_EVERY = 10.0  # seconds
PURGE_BATCH = 1000
# Up to PURGE_BATCH x PURGE_BATCHES keys a round (1 000 a second): more than the workers can claim.
PURGE_BATCHES = 10
PURGE_EXPIRED = text(
    """
    DELETE FROM idempotency_keys
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys WHERE expires_at < now()
                           LIMIT :batch FOR UPDATE SKIP LOCKED))
      AND expires_at < now()
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


# A plain statement, not the ORM's update(IdempotencyKey): that one looks for matching objects in
# the session to synchronize, and cost 0.8 ms of CPU a command against 0.1 ms for this (measured).
# On the driver (``OnDriver``), with the read models' statement when the command left one.
STORE = OnDriver(
    text(
        """
    UPDATE idempotency_keys SET status_code = :status, headers = :headers, body = :body
     WHERE token_hash = :token_hash AND key = :key
    """
    )
)


async def store_response(session: AsyncSession, claim: Claim, response: StoredResponse) -> None:
    """Keep the response for replays; it commits with the command's effects, or not at all."""
    await STORE.execute(
        session,
        {
            "token_hash": claim.token_hash,
            "key": claim.key,
            "status": response.status,
            "headers": msgspec.json.encode(response.headers),
            "body": response.body,
        },
    )


async def claim_key(session: AsyncSession, claim: Claim) -> StoredResponse | None:
    """None when this request now owns the key; the stored response when another request did."""
    parameters = {
        "token_hash": claim.token_hash,
        "key": claim.key,
        "fingerprint": claim.fingerprint,
        "ttl_seconds": claim.ttl_seconds,
        "in_progress_wait": IN_PROGRESS_WAIT,
    }
    try:
        [row] = await CLAIM.fetch(session, parameters)
    except DBAPIError as exc:
        if sqlstate(exc) == LOCK_NOT_AVAILABLE:
            raise RequestInProgress(f"a request with Idempotency-Key {claim.key!r} is still running") from None
        raise
    if row["claimed"]:
        return None
    if row["fingerprint"] is None:
        return await _stored(session, claim)
    return _replay(claim, row["fingerprint"], row["status_code"], row["headers"], row["body"])


async def _stored(session: AsyncSession, claim: Claim) -> StoredResponse:
    """The response of the request the claim waited for: committed after the claim's snapshot was
    taken, so only a new statement sees it."""
    row = (
        await session.execute(
            select(
                IdempotencyKey.fingerprint, IdempotencyKey.status_code, IdempotencyKey.headers, IdempotencyKey.body
            ).where(IdempotencyKey.token_hash == claim.token_hash, IdempotencyKey.key == claim.key)
        )
    ).one()
    return _replay(claim, row.fingerprint, row.status_code, row.headers, row.body)


def _replay(claim: Claim, fingerprint: bytes, status: int, headers: bytes, body: bytes) -> StoredResponse:
    if fingerprint != claim.fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {claim.key!r} was first used with another request (method, path or body)"
        )
    return StoredResponse(status=status, headers=msgspec.json.decode(headers, type=dict[str, str]), body=body)


async def purge_expired(session: AsyncSession, batch: int) -> int:
    """Delete up to ``batch`` expired keys; how many were deleted."""
    result = await session.execute(PURGE_EXPIRED, {"batch": batch})
    assert isinstance(result, CursorResult)
    return result.rowcount


async def purge_round(pool: WritePool, *, batch: int = PURGE_BATCH, batches: int = PURGE_BATCHES) -> int:
    """Delete expired keys, a transaction per ``batch``, until a batch comes back short or
    ``batches`` ran; how many were deleted. An expired key is never replayed meanwhile."""
    return await in_batches(pool, purge_expired, batch=batch, batches=batches)


async def purge_periodically(pool: WritePool, every: float = PURGE_EVERY) -> None:
    await periodically(every, partial(purge_round, pool), "purging expired idempotency keys")

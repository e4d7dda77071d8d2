"""The opaque keyset cursor: the last row's sort key, sealed to the query that produced it.

A cursor is ``base64url(digest || json(position))`` where the digest is a keyed BLAKE2b over the
position and the query's filters. That gives integrity, not secrecy: the position is readable by
anyone who decodes it, and the key is a constant of the code, not a secret. It exists so that a
bit flipped in transit, a hand-edited cursor or one reused with other filters is a clean 400
instead of a silently wrong page. A forged cursor could at worst start a page at another position
of the same query, since every value is still type-checked and bound as a parameter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from shared.dto import Page
from shared.errors import BadCursor

P = TypeVar("P")
T = TypeVar("T")

_KEY = b"orders-api keyset cursor v1"
_DIGEST_SIZE = 16
_ENCODER = msgspec.json.Encoder()


def _digest(position: bytes, bound_to: Any) -> bytes:
    seal = hashlib.blake2b(position, key=_KEY, digest_size=_DIGEST_SIZE)
    seal.update(b"\0" + _ENCODER.encode(bound_to))
    return seal.digest()


def encode_cursor(position: Any, *, bound_to: Any) -> str:
    """A cursor for the page after ``position``, valid only with the same ``bound_to`` filters."""
    body = _ENCODER.encode(position)
    return base64.urlsafe_b64encode(_digest(body, bound_to) + body).rstrip(b"=").decode()


def decode_cursor(cursor: str, position: type[P], *, bound_to: Any) -> P:
    """The position ``cursor`` carries; BadCursor when it is garbage, tampered or from other filters."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise BadCursor("cursor is not valid base64url") from None
    seal, body = raw[:_DIGEST_SIZE], raw[_DIGEST_SIZE:]
    if not hmac.compare_digest(seal, _digest(body, bound_to)):
        raise BadCursor("cursor was altered or belongs to a query with other filters") from None
    try:
        return msgspec.json.decode(body, type=position)
    except msgspec.DecodeError:
        # Sealed by us but not of this shape: a cursor from an older release of the query.
        raise BadCursor("cursor does not fit this query") from None


def page_of(rows: list[T], limit: int, position: Callable[[T], Any], *, bound_to: Any) -> Page[T]:
    """The first ``limit`` of ``rows`` (fetched as ``limit + 1``), with a cursor when more follow."""
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    items = rows[:limit]
    return Page(items=items, next_cursor=encode_cursor(position(items[-1]), bound_to=bound_to))

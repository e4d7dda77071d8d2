"""Bearer-token checks, in constant time so a token cannot be guessed byte by byte."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from shared.errors import Unauthenticated


def bearer_token(request: Request, tokens: tuple[str, ...]) -> str:
    """The caller's token if it is one of ``tokens``; otherwise 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("missing bearer token")
    matched = False
    for known in tokens:
        # Compare against every token, without stopping early, so timing says nothing.
        matched |= hmac.compare_digest(token.encode(), known.encode())
    if not matched:
        raise Unauthenticated("invalid bearer token")
    return token

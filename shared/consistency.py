"""The ``Consistency-Token``: read-your-writes across streaming replicas.

After a command commits, the write side reads the primary's WAL position (an LSN) and returns it,
encoded, in ``Consistency-Token``. A query that sends the token back is answered only from a
database that has replayed at least that far: a replica past it, or else the primary. The token is
opaque to clients; inside it is the LSN as 16 hex digits behind a version tag, so a later release
can change what it carries.
"""

from __future__ import annotations

import re

from shared.errors import BadConsistencyToken

HEADER = "Consistency-Token"
FIELD = HEADER.lower().encode()  # its name as an ASGI server gives it
_PREFIX = "1."
_TOKEN = re.compile(r"1\.[0-9a-f]{16}")


def encode_token(lsn: int) -> str:
    return f"{_PREFIX}{lsn:016x}"


def decode_token(token: str) -> int:
    """The LSN in ``token``; a 400 naming the header when it is not one of ours. A client that
    sends a broken token asked for read-your-writes: serving it possibly stale data would hide the
    bug, so the request is refused rather than the token ignored."""
    if not _TOKEN.fullmatch(token):
        raise BadConsistencyToken(f"{HEADER} is not a token this service issued")
    return int(token[len(_PREFIX) :], 16)


def lsn_from_text(text: str) -> int:
    """PostgreSQL's ``pg_lsn`` text form (``16/B374D848``) as an integer."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)

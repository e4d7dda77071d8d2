"""Schemathesis hooks (schemathesis.toml loads them).

- NDJSON both ways, since Schemathesis knows only JSON-like media types. The document describes an
  NDJSON body as an array of its lines.
- Unique idempotency keys. Schemathesis draws keys from a small space ("0", "00", ...) and so sends
  one key with different requests, which the contract answers with 422 (the key was first used with
  another request). A valid drawn key gets a unique prefix (replacing its first characters when it
  is already long), so it stays 1..255 printable ASCII and a valid request stays valid; an invalid
  key is sent as drawn.
- No repeated product in a positive order (below).
- A short `wait` on GET /v1/events: a drawn one of up to 30 s would hold each such case that long
  when nothing new arrives; one second still exercises the long-poll.
- A valid Consistency-Token in positive cases. Schemathesis's coverage phase draws no value for a
  header whose pattern holds a "." (the token's "1." prefix), and seeds the optional header with a
  negative one ("0") that its positive cases then carry; those get a well-formed token instead.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from typing import Any

import schemathesis
from schemathesis.core.transport import Response

NDJSON = ("application/x-ndjson", "application/jsonl")
VALID_KEY = re.compile(r"[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?")
RUN = secrets.token_hex(4)  # two runs against one database must not share keys either
SEQUENCE = itertools.count()
TOKEN = "Consistency-Token"
VALID_TOKEN = re.compile(r"1\.[0-9a-f]{16}")  # shared.consistency


@schemathesis.serializer(*NDJSON)
def ndjson_lines(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    # A negative case may draw any JSON value instead of an array; it is sent as a single line.
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


@schemathesis.deserializer(*NDJSON)
def ndjson_array(ctx: schemathesis.DeserializationContext, response: Response) -> list[Any]:
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]


@schemathesis.hook
def before_call(ctx: schemathesis.HookContext, case: schemathesis.Case[Any], kwargs: dict[str, Any]) -> None:
    key = case.headers.get("Idempotency-Key")  # headers are case-insensitive
    if isinstance(key, str) and VALID_KEY.fullmatch(key):
        prefix = f"{RUN}-{next(SEQUENCE)}-"
        case.headers["Idempotency-Key"] = prefix + key if len(prefix + key) <= 255 else prefix + key[len(prefix) :]
    wait = case.query.get("wait") if isinstance(case.query, dict) else None
    if isinstance(wait, int) and not isinstance(wait, bool) and wait > 1:
        case.query["wait"] = 1
    token = case.headers.get(TOKEN)
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and isinstance(token, str) and not VALID_TOKEN.fullmatch(token):
        case.headers[TOKEN] = "1.0000000000000001"


@schemathesis.hook
def filter_case(ctx: schemathesis.HookContext, case: schemathesis.Case[Any]) -> bool:
    # docs/http.md: a product repeated within one order is a 422. JSON Schema cannot say "unique by
    # product_id", so the document admits such an order; positive cases leave them out.
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or (case.method, case.path) != ("POST", "/v1/orders"):
        return True
    items = case.body.get("items") if isinstance(case.body, dict) else None
    if not isinstance(items, list):
        return True
    # Compared as numbers: 198 and 198.0 name the same product.
    products = [item.get("product_id") for item in items if isinstance(item, dict)]
    numbers = [p for p in products if isinstance(p, int | float)]
    return len(numbers) == len(set(numbers))

"""The msgspec response class and request-decoding helpers, with codecs built once."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, TypeVar

import msgspec
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shared.dto import Problem
from shared.errors import (
    ApiError,
    BodyTooLarge,
    ClientClosedRequest,
    InvalidInput,
    MalformedJson,
    NotFound,
    RequestTimeout,
    problem_kind,
)

T = TypeVar("T")

log = logging.getLogger("orders_api.http")

ENCODER = msgspec.json.Encoder()


class MsgspecResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return ENCODER.encode(content)


class ProblemResponse(Response):
    media_type = "application/problem+json"

    def render(self, content: Any) -> bytes:
        return ENCODER.encode(content)


def problem_response(error: ApiError) -> ProblemResponse:
    kind = problem_kind(error)
    body = Problem(type=kind.type, title=kind.title, status=kind.status, detail=str(error))
    return ProblemResponse(body, status_code=kind.status, headers=error.headers)


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def weights(header: str) -> dict[str, float]:
    """A list header with weights (``Accept``, ``Accept-Encoding``) as each item's q, items
    lower-cased (media types and content codings compare case-insensitively): 1 without a q, 0 for
    one that is not a qvalue (RFC 9110 §12.4.2: 0 to 1, three decimals), the highest of an item
    named twice. A q of 0 means "not acceptable"."""
    found: dict[str, float] = {}
    for item in header.split(","):
        name, *parameters = (part.strip() for part in item.split(";"))
        if not name:
            continue
        q = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                q = float(value.strip()) if QVALUE.fullmatch(value.strip()) else 0.0
        name = name.lower()
        found[name] = max(found.get(name, 0.0), q)
    return found


QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def header_fields(request: Request, name: bytes) -> list[str]:
    """Every ``name`` field of the request in order (``name`` lower-case, as ASGI servers give
    them): Starlette's ``request.headers.getlist`` without building its ``Headers`` and encoding the
    name each time. A query reads two on every request."""
    return [value.decode("latin-1") for key, value in request.scope["headers"] if key == name]


def decoder_for(type_: type[T]) -> msgspec.json.Decoder[T]:
    """One decoder per type, built on first use and reused."""
    decoder = _DECODERS.get(type_)
    if decoder is None:
        decoder = _DECODERS[type_] = msgspec.json.Decoder(type_)
    return decoder


def decode_typed(data: bytes, type_: type[T]) -> T:
    """``data`` (JSON) decoded and validated as ``type_``; msgspec's errors as they are.

    JSON Schema, and so the OpenAPI document, counts ``92.0`` as an integer; msgspec does not. A
    value refused only for that is decoded again with integral numbers as ints. The first, typed
    pass stays the fast path: every body that is valid as sent never takes the second."""
    try:
        return decoder_for(type_).decode(data)
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            raise
    except msgspec.DecodeError as exc:
        if str(exc) != TRUNCATED:
            raise
        raise msgspec.DecodeError(_truncated_or_malformed(data)) from None
    return msgspec.convert(_integral_as_int(msgspec.json.decode(data)), type_, strict=True)


TRUNCATED = "Input data was truncated"


def _truncated_or_malformed(data: bytes) -> str:
    """What is wrong with JSON msgspec calls truncated. msgspec says so of whole documents too: a
    ``\\u`` escape of a lone UTF-16 surrogate (``"\\ud800"``) or with fewer than four digits
    (``"\\u12"``). The standard library's parser, on this error path only, tells them apart."""
    try:
        json.loads(data)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string"):
            return TRUNCATED
        return f"JSON is malformed: {exc.msg} (character {exc.pos})"
    except (UnicodeDecodeError, RecursionError):
        return TRUNCATED
    # Parsed whole by the standard library, which lets lone surrogates through; msgspec does not.
    return "JSON is malformed: a \\u escape names half of a UTF-16 surrogate pair without the other half"


def _integral_as_int(value: Any, depth: int = 0) -> Any:
    # Command bodies nest a few levels; anything deeper fails validation as it stands.
    if depth > 8:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_as_int(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {key: _integral_as_int(item, depth + 1) for key, item in value.items()}
    return value


def decode_json(data: bytes, type_: type[T]) -> T:
    """Decode and validate; malformed JSON is a 400, a schema violation a 422 naming the path."""
    try:
        return decode_typed(data, type_)
    except msgspec.ValidationError as exc:
        raise InvalidInput(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedJson(str(exc)) from None
    except UnicodeDecodeError:
        raise MalformedJson("body is not valid UTF-8") from None


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower-cased (``""`` when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(request: Request) -> bool:
    kind = media_type(request)
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def read_body(request: Request, limit: int, within: float) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` (before reading it all),
    and with 408 when it has not all arrived ``within`` seconds (``BODY_TIMEOUT``)."""
    declared = request.headers.get("content-length")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    try:
        async with asyncio.timeout(within):
            return await _read_within(request, limit)
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {within} s (BODY_TIMEOUT)") from None
    except ClientDisconnect:
        # Not a fault of ours: one line, no traceback; nothing has run yet, so nothing changed.
        log.info("client closed the connection mid-body: %s %s", request.method, request.url.path)
        raise ClientClosedRequest("client closed the connection before sending the whole body") from None


async def _read_within(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def etag(version: int) -> str:
    return f'"{version}"'


STRONG_VERSION_TAG = re.compile(r'"([0-9]{1,10})"')
MAX_VERSION = 2**31 - 1  # versions are int4 columns


def if_match_versions(request: Request) -> frozenset[int] | None:
    """The versions ``If-Match`` names; None when it is absent or ``*`` (any current version).

    RFC 9110 compares If-Match strongly, so a weak (``W/``) or malformed tag names no version: a
    request whose tags name none of the current version gets a 412 and changes nothing."""
    header = request.headers.get("if-match")
    if header is None or header.strip() == "*":
        return None
    matches = (STRONG_VERSION_TAG.fullmatch(tag.strip()) for tag in header.split(","))
    return frozenset(v for m in matches if m is not None and (v := int(m.group(1))) <= MAX_VERSION)


class IdConvertor(Convertor[int]):
    """``{id:id}``: a positive integer written canonically (no sign, no leading zero). Anything
    else (``abc``, ``0001``, ``1e3``) matches no route, so it is the same 404 as any unknown path.
    The path is matched after percent-decoding (RFC 3986 treats ``%31`` and ``1`` as the same
    URI), exactly as the query string is."""

    regex = "[1-9][0-9]{0,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())


def path_id(request: Request, kind: str) -> int:
    """The ``{id:id}`` path parameter; an id no row can have (past bigint) is a plain 404."""
    value: int = request.path_params["id"]
    if not 1 <= value <= 2**63 - 1:
        raise NotFound(f"{kind} {value} not found")
    return value

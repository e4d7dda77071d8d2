"""The msgspec response class and request-decoding helpers, with codecs built once."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from shared.dto import Problem
from shared.errors import (
    ApiError,
    BodyTooLarge,
    InvalidInput,
    MalformedJson,
    NotFound,
    problem_kind,
    problem_type,
)

T = TypeVar("T")

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
    body = Problem(type=problem_type(error), title=kind.title, status=kind.status, detail=str(error))
    return ProblemResponse(body, status_code=kind.status, headers=error.headers)


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def decoder_for(type_: type[T]) -> msgspec.json.Decoder[T]:
    """One decoder per type, built on first use and reused."""
    decoder = _DECODERS.get(type_)
    if decoder is None:
        decoder = _DECODERS[type_] = msgspec.json.Decoder(type_)
    return decoder


def decode_json(data: bytes, type_: type[T]) -> T:
    """Decode and validate; malformed JSON is a 400, a schema violation a 422 naming the path."""
    try:
        return decoder_for(type_).decode(data)
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


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` (before reading it all)."""
    declared = request.headers.get("content-length")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
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


def path_id(request: Request, kind: str) -> int:
    """The ``{id:int}`` path parameter; an id no row can have (0, past bigint) is a plain 404."""
    value: int = request.path_params["id"]
    if not 1 <= value <= 2**63 - 1:
        raise NotFound(f"{kind} {value} not found")
    return value

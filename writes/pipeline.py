"""The path every command request takes: authenticate, decode the body, run the handler as one
unit of work (in ``WritePool.run``, which retries conflicts and turns database failures into 503s,
with the idempotency key claimed and stored in the same transaction), and answer with bytes that a
replay can send again unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from shared import consistency
from shared.auth import bearer_token
from shared.dto import Command, EventType
from shared.errors import NotJson
from shared.http import ENCODER, decode_json, etag, is_json, read_body
from shared.pools import Admission
from shared.sides import resources
from writes import events, idempotency
from writes.db import write_pool
from writes.events import NewEvent
from writes.idempotency import Claim, StoredResponse

T = TypeVar("T")
V = TypeVar("V")


class Identified(Protocol):
    @property
    def id(self) -> int: ...


@dataclass(frozen=True)
class Incoming(Generic[T]):
    """An authenticated, decoded command, and its idempotency claim when the client sent a key."""

    command: T
    claim: Claim | None
    admission: Admission  # its place at the write pool's gate, reserved as it arrived


async def accept(
    request: Request, decode: Callable[[bytes], T], *, limit: int, wrong_media: str | None = None
) -> Incoming[T]:
    settings = resources(request).settings
    # The token is checked before a byte of the body is read: strangers cannot make us buffer.
    token = bearer_token(request, settings.write_api_tokens)
    key = idempotency.idempotency_key(request)
    if wrong_media is not None:
        raise NotJson(wrong_media)
    # Overload is answered before the body is read, and a command admitted keeps its place in the
    # queue while it reads its body (shared.pools.Gate.admit): ``execute`` hands the place over.
    admission = write_pool(request).gate.admit()
    try:
        body = await read_body(request, limit, within=settings.body_timeout)
        command = decode(body)
        claim = None if key is None else idempotency.claim_for(request, token, key, body)
    except BaseException:
        admission.release()
        raise
    return Incoming(command, claim, admission)


async def accept_json(request: Request, type_: type[T]) -> Incoming[T]:
    limit = resources(request).settings.max_body_bytes
    return await accept(
        request,
        lambda body: decode_json(body, type_),
        limit=limit,
        wrong_media=None if is_json(request) else NOT_JSON,
    )


class NoFields(Command):
    """A transition's body, when one is sent: an object without fields (``{}``)."""


NOT_JSON = "Content-Type must be application/json"


async def accept_empty(request: Request) -> Incoming[None]:
    """Transitions take no body. One that is sent is held to every command body's rules: JSON (else
    a 415), and an object without fields, ``{}`` (malformed JSON is a 400, an unknown field a 422)."""
    json = is_json(request)

    def no_fields(body: bytes) -> None:
        if not body:
            return
        if not json:
            raise NotJson(NOT_JSON)
        decode_json(body, NoFields)

    return await accept(request, no_fields, limit=resources(request).settings.max_body_bytes)


async def execute(
    request: Request,
    incoming: Incoming[Any],
    work: Callable[[AsyncSession], Awaitable[V]],
    reply: Callable[[V], StoredResponse],
    event: EventType | None = None,
) -> Response:
    """Run ``work`` and answer with ``reply`` of its view. With ``event``, the command's event, whose
    data is the answer's body (``writes.events``), is appended in the same transaction."""
    claim = incoming.claim

    async def unit_of_work(session: AsyncSession) -> tuple[StoredResponse, bool, Counter[str] | None]:
        # One transaction (opened by WritePool.run): claim the key, run the command, store its
        # response, append its events. They commit together, or nothing does.
        if claim is not None and (stored := await idempotency.claim_key(session, claim)) is not None:
            return stored, True, None
        view = await work(session)
        response = reply(view)
        if claim is not None:
            await idempotency.store_response(session, claim, response)
        if event is not None:
            subject = cast(Identified, view).id  # every view a single-resource command answers has an id
            await events.append(session, [NewEvent(event, subject, response.body.decode())])
        return response, False, session.info.get(events.APPENDED)

    try:
        (stored, replayed, appended), position = await write_pool(request).run_marked(unit_of_work, incoming.admission)
    finally:
        incoming.admission.release()  # given up on entering; here whatever happened before
    if appended:
        events.count_committed(appended)
    headers = {**stored.headers, "Idempotent-Replayed": "true"} if replayed else dict(stored.headers)
    if position is not None:
        # Not stored with the key: a replay carries where the WAL stands now, which is past the
        # first answer's commit too.
        headers[consistency.HEADER] = consistency.encode_token(position)
    return Response(stored.body, status_code=stored.status, headers=headers, media_type="application/json")


def ok(view: Any) -> StoredResponse:
    headers = {"ETag": etag(view.version)} if hasattr(view, "version") else {}
    return StoredResponse(status=200, headers=headers, body=ENCODER.encode(view))


def created(collection: str) -> Callable[[Any], StoredResponse]:
    def reply(view: Any) -> StoredResponse:
        response = ok(view)
        return StoredResponse(201, {**response.headers, "Location": f"{collection}/{view.id}"}, response.body)

    return reply

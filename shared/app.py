"""create_app(settings): the composition root, and the only module importing both writes and reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

import reads.db
import reads.routes
import writes.db
import writes.routes
from shared.config import Settings
from shared.dto import Problem
from shared.errors import ApiError, MethodNotAllowed, NotFound, ServiceUnavailable
from shared.http import ProblemResponse, problem_response
from shared.openapi import build_openapi, operation
from shared.routing import by_path
from shared.schema import head_revision

VERSION = "0.1.0"

log = logging.getLogger("orders_api")


def create_app(settings: Settings) -> Starlette:
    head = head_revision()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        engine = writes.db.create_write_engine(settings)
        try:
            await writes.db.warm(engine, settings.write_pool_size)
            read_pool = reads.db.ReadPool(await reads.db.create_read_pool(settings), settings.read_pool_acquire_timeout)
            resources = {
                "settings": settings,
                "engine": engine,
                "sessions": writes.db.create_session_maker(engine),
                "reads": read_pool,
                "schema_head": head,
            }
            # Requests see these as request.state.<name>; operations tooling and tests reach the
            # same objects through app.state.resources.
            app.state.resources = resources
            try:
                yield resources
            finally:
                await read_pool.close()
        finally:
            await engine.dispose()

    @operation("The OpenAPI 3.1 document of every route", tag="operations", responses={200: None})
    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    commands, queries = writes.routes.ROUTES, reads.routes.ROUTES
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *commands,
        *queries,
    ]
    # Built once, from the same table the app serves (openapi_json reads it when called). Commands
    # always need a token; queries only when READ_API_TOKENS is set.
    secured = [*commands, *(queries if settings.read_api_tokens else [])]
    openapi = build_openapi(routes, title="orders-api", version=VERSION, secured=secured)
    return Starlette(
        # A path both sides serve (GET and POST /v1/orders) is one route, so a 405 lists every method.
        routes=by_path(routes),
        lifespan=lifespan,
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error},
    )


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return problem_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own refusals (no route, wrong method) get the same problem types as ours: a path
    # with a malformed id is the same 404 as an unknown id.
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return problem_response(NotFound(f"no resource at {request.url.path}"))
    if exc.status_code == 405:
        response = problem_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        response.headers.update(exc.headers or {})  # Allow
        return response
    body = Problem(type="about:blank", title=exc.detail, status=exc.status_code, detail=exc.detail)
    return ProblemResponse(body, status_code=exc.status_code, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    # A 500 is always a bug: the client gets problem+json without internals, the log the traceback
    # (Starlette re-raises the exception after this response is sent).
    body = Problem(type="about:blank", title="Internal Server Error", status=500, detail="unexpected error")
    return ProblemResponse(body, status_code=500)


@operation("Liveness: 200 while the process runs", tag="operations", responses={200: None})
async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


@operation(
    "Readiness: both pools answer and the schema is at the migration head",
    tag="operations",
    responses={200: None, 503: None},
)
async def readyz(request: Request) -> Response:
    """200 when both pools answer and the schema is at head; else 503 naming each failure."""
    state = request.state
    settings: Settings = state.settings

    async def write_pool() -> None:
        await writes.db.run(lambda: writes.db.ping(state.engine))

    async def read_pool_and_schema() -> None:
        revision = await state.reads.schema_revision()
        if revision != state.schema_head:
            found = "not migrated" if revision is None else f"at {revision}"
            raise SchemaNotAtHead(f"schema {found}, head is {state.schema_head}: run `orders-api migrate`")

    failures = [
        failure
        for failure in await asyncio.gather(
            _check("write pool", write_pool, settings.write_pool_timeout, "WRITE_POOL_TIMEOUT"),
            _check("read pool", read_pool_and_schema, settings.read_pool_acquire_timeout, "READ_POOL_ACQUIRE_TIMEOUT"),
        )
        if failure is not None
    ]
    if failures:
        return PlainTextResponse("not ready: " + "; ".join(failures), status_code=503, headers={"Retry-After": "1"})
    return PlainTextResponse("ready")


class SchemaNotAtHead(ServiceUnavailable): ...


async def _check(name: str, probe: Callable[[], Awaitable[None]], bound: float, setting: str) -> str | None:
    # The contract: readiness never takes longer than the pools' acquire timeouts, query included.
    try:
        async with asyncio.timeout(bound):
            await probe()
    except TimeoutError:
        return f"{name}: no answer within {bound} s ({setting})"
    except ApiError as exc:
        # Our own words (the pool, the condition, the setting); the driver's message is in the log.
        return str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
    except Exception:  # a readiness probe reports every failure; it never raises
        log.exception("%s: readiness probe failed", name)
        return f"{name}: unexpected failure (the log has it)"
    return None

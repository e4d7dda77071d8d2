"""create_app(settings): the composition root, and the only module importing both writes and reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

import reads.side
import writes.side
from service import docs
from service.compression import COMPRESSION
from service.cors import cors
from service.heap import freeze_startup_heap
from service.logs import RequestLog
from service.metrics import RequestMetrics, metrics, publishing_pools
from service.schema import head_revision, schema_advice
from service.tracing import Tracing
from shared.config import ConfigError, Settings
from shared.dto import Problem
from shared.errors import ApiError, MethodNotAllowed, NotFound
from shared.http import ProblemResponse, problem_response
from shared.openapi import build_openapi, operation
from shared.paths import by_path, template
from shared.sides import STATE_KEY, Degradable, Pool, Resources, Side, SideName, resources

VERSION = "0.1.0"

log = logging.getLogger("orders_api")


ALL_SIDES: tuple[Side, ...] = (writes.side.SIDE, reads.side.SIDE)
# What `orders-api serve --role` serves: a process of one role opens only that side's pool.
ServeRole = Literal["all", "reads", "writes"]
SIDES_FOR_ROLE: Mapping[ServeRole, tuple[Side, ...]] = {
    "all": ALL_SIDES,
    "reads": (reads.side.SIDE,),
    "writes": (writes.side.SIDE,),
}


def create_app(
    settings: Settings, sides: Sequence[Side] = ALL_SIDES, tracing: Tracing | None = None, *, freeze_heap: bool = False
) -> Starlette:
    """The app serving ``sides`` (both by default; one for ``serve --role``): their routes, their
    pools, and readiness over just those pools. The other side's routes answer 404. With
    ``tracing`` (``service.tracing``), its requests and their statements are traced. With
    ``freeze_heap``, for the one app a serving process runs, its start-up ends by setting what it
    built aside from the garbage collector (``service.heap``)."""
    require_query_access(settings, sides)
    head = head_revision()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Resources]]:
        async with AsyncExitStack() as stack:
            pools: dict[SideName, Pool] = {}
            for side in sides:
                pool = await side.open_pool(settings, head)
                stack.push_async_callback(pool.close)
                pools[side.name] = pool
            resources = Resources(settings=settings, pools=pools, schema_head=head)
            if tracing is not None:
                stack.enter_context(tracing.instrumenting(pools))
            await stack.enter_async_context(publishing_pools(pools.values()))
            # Requests reach it through shared.sides.resources(request); operations tooling and
            # tests through app.state.resources.
            app.state.resources = resources
            if freeze_heap:
                freeze_startup_heap()
            yield {STATE_KEY: resources}

    @operation("The OpenAPI 3.1 document of every route", tag="operations", responses={200: None})
    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    operations: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *docs.ROUTES,
    ]
    served = [route for side in sides for route in side.routes]
    # The router tries routes in order, a regex match each: the queries, the hot path, go first.
    queries_first = [route for side in sorted(sides, key=lambda side: side.name != "reads") for route in side.routes]
    elsewhere = [not_served(route, side.name) for side in ALL_SIDES if side not in sides for route in side.routes]
    # Built once, from the routes this process serves. Commands always need a token; queries unless
    # READ_API_OPEN opened them.
    secured = [route for side in sides if side.name == "writes" or not settings.read_api_open for route in side.routes]
    openapi = build_openapi([*operations, *served], title="orders-api", version=VERSION, secured=secured)
    app = Starlette(
        # A path both sides serve (GET and POST /v1/orders) is one route, so a 405 lists every method.
        routes=by_path([*queries_first, *elsewhere, *operations]),
        lifespan=lifespan,
        # RequestLog first: outermost, it gives every request its id before anything else logs, and
        # answers (and logs, once) any exception the others let through.
        # With tracing on, its server span is outside even that: the access line names the span.
        # CORS (when CORS_ALLOW_ORIGINS is set) outside them all: it answers preflights before any
        # other work (auth included), and marks every answer readable, a 500 of RequestLog's too.
        # Compression innermost: the metrics' and the access log's durations include its CPU.
        middleware=[
            *cors(settings),
            *([] if tracing is None else [tracing.middleware()]),
            Middleware(
                RequestLog,
                access_log=settings.access_log,
                internal_error=internal_error,
                trace_ids=None if tracing is None else tracing.ids,
                metrics=RequestMetrics(),
            ),
            COMPRESSION,
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error},
    )
    # A path no route has is a 404, with or without a trailing slash: Starlette would answer
    # /v1/orders/1/ with a redirect to /v1/orders/1, a second public spelling of every path.
    app.router.redirect_slashes = False
    return app


def require_query_access(settings: Settings, sides: Sequence[Side]) -> None:
    """Queries return personal data (emails, names): a process serving them must be told who may
    read them (READ_API_TOKENS) or that anyone may (READ_API_OPEN). With neither, every query would
    be a 401, so the process refuses to start instead. ``serve`` opens them on the embedded demo
    database; a writes process serves no query and needs neither."""
    if any(side.name == "reads" for side in sides) and not (settings.read_api_tokens or settings.read_api_open):
        raise ConfigError(
            "queries return personal data (emails, names): set READ_API_TOKENS to the bearer tokens that may"
            " read them, or READ_API_OPEN=true to open them to anyone"
        )


def not_served(route: BaseRoute, side: SideName) -> Route:
    """``route`` in a process that does not serve its side: the same path and methods, a 404."""
    assert isinstance(route, Route)

    async def elsewhere(request: Request) -> Response:
        raise NotFound(f"{request.method} {template(route.path)} is served by processes with --role {side} or all")

    return Route(route.path, elsewhere, methods=sorted((route.methods or set()) - {"HEAD"}))


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
    # A 500 is always a bug: the client gets problem+json without internals, the log the traceback.
    # RequestLog calls this after logging the exception once, with the request's route and id. Only
    # an exception in RequestLog itself reaches Starlette's ServerErrorMiddleware, which calls this
    # too, then re-raises for uvicorn to log.
    body = Problem(type="about:blank", title="Internal Server Error", status=500, detail="unexpected error")
    return ProblemResponse(body, status_code=500)


@operation("Liveness: 200 while the process runs", tag="operations", responses={200: None})
async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


@operation(
    "Readiness: every pool of this process answers and the schema is at the migration head",
    tag="operations",
    responses={200: None, 503: None},
)
async def readyz(request: Request) -> Response:
    """200 when every pool of this process answers and the schema is at head; else 503 naming each
    failure. Either way the body names what serves at reduced capacity (a replica down or lagging)."""
    found = resources(request)
    # The schema is read through one pool (the read pool where there is one); the others are pinged.
    pools = sorted(found.pools.items(), key=lambda item: item[0] != "reads")
    checks = [_check(pool, found.schema_head if n == 0 else None) for n, (_, pool) in enumerate(pools)]
    failures = [failure for failure in await asyncio.gather(*checks) if failure is not None]
    notes = [note for _, pool in pools if isinstance(pool, Degradable) for note in pool.degraded()]
    degraded = f"; degraded: {', '.join(notes)}" if notes else ""
    if failures:
        body = "not ready: " + "; ".join(failures) + degraded
        return PlainTextResponse(body, status_code=503, headers={"Retry-After": "1"})
    return PlainTextResponse("ready" + degraded)


async def _check(pool: Pool, head: str | None) -> str | None:
    """Why ``pool`` is not ready (and, with ``head``, the schema it reads), or None."""
    name = pool.names.pool
    # The contract: readiness never takes longer than the pools' acquire timeouts, query included.
    try:
        async with asyncio.timeout(pool.timeout):
            if head is None:
                await pool.ping()
                return None
            revision = await pool.schema_revision()
    except TimeoutError:
        return f"{name}: no answer within {pool.timeout} s ({pool.names.acquire_timeout})"
    except ApiError as exc:
        return str(exc)  # our own words: the pool, the condition, the setting; the driver's are logged
    except Exception:  # a readiness probe reports every failure; it never raises
        log.exception("%s: readiness probe failed", name)
        return f"{name}: unexpected failure (the log has it)"
    if revision != head:
        return f"{name}: {schema_advice(revision, head)}"
    return None

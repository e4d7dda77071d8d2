"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

WRITE_TOKEN = "test-write-token"
AUTH = {"Authorization": f"Bearer {WRITE_TOKEN}"}


@asynccontextmanager
async def running_client(app: Starlette, *, raise_app_exceptions: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client over ``app`` with its lifespan (both pools) running; with
    ``raise_app_exceptions=False`` a crash is seen as the client would see it (a 500 response)."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@asynccontextmanager
async def serving(app: Starlette, **options: Any) -> AsyncIterator[str]:
    """``app`` served by a real uvicorn on 127.0.0.1 (an ephemeral port) in this event loop, for tests
    that need real sockets: framing, slow clients, cut streams. Yields the base URL; stops the server
    (and the app's lifespan) on exit."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # start-up failed: raise its error here
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Wait until ``condition()`` holds (or, when it is a coroutine, its result does), polling every
    10 ms, for ``within`` seconds at most."""
    for _ in range(int(within / 0.01)):
        held = condition()
        if held if isinstance(held, bool) else await held:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not so within {within} s")

"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
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

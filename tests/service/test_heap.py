"""A serving process freezes the heap its start-up built, once its pools are open; other apps
(every test's) leave the collector alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette

from service.app import create_app
from service.cli import serving_app
from shared.config import Settings
from tests.support import running_client


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """No frozen object before the test, none after it: the test process goes on collecting."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()


def frozen(thing: object) -> bool:
    """Whether ``thing`` is frozen: tracked, yet in none of the generations a collection scans."""
    assert gc.is_tracked(thing)
    return not any(found is thing for found in gc.get_objects())


async def started(app: Starlette) -> tuple[bool, bool]:
    """Run ``app``'s start-up and one request; whether its app and its open pools are frozen."""
    async with running_client(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        pools = app.state.resources.pools
        return frozen(app), all(frozen(pool) for pool in pools.values())


@pytest.mark.usefixtures("unfrozen")
async def test_a_serving_app_freezes_its_startup_heap_once_its_pools_are_open(settings: Settings) -> None:
    app = serving_app(settings, "all")
    assert gc.get_freeze_count() == 0  # not while it is only built: the lifespan opens the pools
    assert await started(app) == (True, True)


@pytest.mark.usefixtures("unfrozen")
async def test_an_app_made_without_freeze_heap_leaves_the_collector_alone(settings: Settings) -> None:
    assert await started(create_app(settings)) == (False, False)
    assert gc.get_freeze_count() == 0

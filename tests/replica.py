"""The test server's streaming hot standby (``testkit.standby.Standby``) as fixtures: ``standby`` for
the session, and ``replay_delay``, which turns an apply delay off again after the test (and starts
a standby a test left stopped). A test that stops the standby starts it again in a ``finally``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import asyncpg
import pytest

from testkit.standby import Standby

__all__ = ["Standby", "replay_delay", "standby"]


@pytest.fixture(scope="session")
def standby(server_url: str) -> Iterator[Standby]:
    """A hot standby of the test server, streaming. Against TEST_DATABASE_URL's server it may be
    impossible (another major version, no replication access): then the tests that need it skip."""
    replica = Standby(server_url)
    try:
        try:
            replica.create()
        except (RuntimeError, OSError, subprocess.SubprocessError, asyncpg.PostgresError) as exc:
            if not os.environ.get("TEST_DATABASE_URL"):
                raise
            pytest.skip(f"cannot run a streaming standby of TEST_DATABASE_URL's server: {exc}")
        yield replica
    finally:
        replica.destroy()


@pytest.fixture
def replay_delay(standby: Standby) -> Iterator[Callable[[int], None]]:
    """``standby.set_apply_delay`` for one test, off again after it whatever the test did (a standby
    left stopped is started first)."""
    yield standby.set_apply_delay
    if not standby.running:
        standby.start()
    standby.set_apply_delay(0)

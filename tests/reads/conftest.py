"""Fixtures for the read side's tests."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.reads.factories import Shop


@pytest.fixture
def shop(client: httpx.AsyncClient, db: asyncpg.Connection) -> Shop:
    return Shop(client, db)

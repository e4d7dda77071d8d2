"""Commands answer with a Consistency-Token when queries may read elsewhere (READ_DATABASE_URL set):
the primary's WAL position right after the commit, so a query that sends it back can demand data
at least that fresh. Without a separate read database there is nothing to be consistent with, and
no token (and no extra statement)."""

from __future__ import annotations

import asyncpg
import httpx
import msgspec

from service.app import create_app
from shared.config import Settings
from shared.consistency import HEADER, decode_token, lsn_from_text
from tests.support import AUTH, running_client

CUSTOMER = {"email": "token@example.com", "name": "T"}


async def wal_position(db: asyncpg.Connection) -> int:
    return lsn_from_text(await db.fetchval("SELECT pg_current_wal_insert_lsn()::text"))


async def test_a_command_carries_the_position_of_its_own_commit(settings: Settings, db: asyncpg.Connection) -> None:
    app = create_app(msgspec.structs.replace(settings, read_database_url=settings.database_url))
    async with running_client(app) as http:
        before = await wal_position(db)
        created = await http.post("/v1/customers", json=CUSTOMER, headers=AUTH)
        after = await wal_position(db)

    assert created.status_code == 201, created.text
    position = decode_token(created.headers[HEADER])
    # Past everything before the command (its commit record came after), not past now.
    assert before < position <= after


async def test_a_replayed_command_carries_a_token_no_older_than_its_first_answer(
    settings: Settings, db: asyncpg.Connection
) -> None:
    app = create_app(msgspec.structs.replace(settings, read_database_url=settings.database_url))
    keyed = {**AUTH, "Idempotency-Key": "token-replay"}
    async with running_client(app) as http:
        first = await http.post("/v1/customers", json=CUSTOMER, headers=keyed)
        replay = await http.post("/v1/customers", json=CUSTOMER, headers=keyed)

    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.headers["idempotent-replayed"] == "true"
    assert decode_token(replay.headers[HEADER]) >= decode_token(first.headers[HEADER])


async def test_without_a_separate_read_database_there_is_no_token(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/customers", json=CUSTOMER, headers=AUTH)
    assert created.status_code == 201
    assert HEADER.lower() not in created.headers

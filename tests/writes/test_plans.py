"""How the write side's statements are planned (``shared.roles``, ``writes.handlers.imports``): a
command's once a connection, whatever values it is given (seen in ``pg_prepared_statements`` of the
write pool's one connection, which counts each statement's generic and custom plans); an import's
so that no plan depends on how many orders it carries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette

from service.app import create_app
from shared.config import Settings, asyncpg_dsn
from testkit.database import connected
from tests.reads.factories import Shop
from tests.support import running_client
from tests.test_read_models import import_orders
from tests.writes.support import line

PLANS = text("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
PLACES = 8  # past the five custom plans PostgreSQL makes before it may settle on a generic one


@pytest.fixture
def app(settings: Settings) -> Starlette:
    # One write connection: every command's statements are prepared, and counted, on it.
    return create_app(msgspec.structs.replace(settings, write_pool_size=1, write_pool_max_overflow=0))


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(app) as http:
        yield http


async def plans(app: Starlette, containing: str) -> tuple[int, int]:
    """(generic, custom) plans of the one prepared statement on the write connection whose text
    contains ``containing``."""

    async def prepared(session: AsyncSession) -> list[Any]:
        return list((await session.execute(PLANS)).all())

    found = [row for row in await app.state.resources.pools["writes"].run(prepared) if containing in row.statement]
    assert len(found) == 1, [row.statement[:80] for row in found]
    return found[0].generic_plans, found[0].custom_plans


async def test_a_commands_statement_is_planned_once_whatever_its_values(app: Starlette, shop: Shop) -> None:
    customer = (await shop.customer())["id"]
    products = [(await shop.product())["id"] for _ in range(3)]
    for n in range(PLACES):
        await shop.order(customer, [(product, 1) for product in products[: 1 + n % 3]])

    # The stock statement (its arrays of one to three products): left to choose, PostgreSQL planned
    # it anew on every call, a custom plan looking cheaper than the generic one.
    assert await plans(app, "FOR NO KEY UPDATE") == (PLACES, 0)


# --- an import whatever the planner guesses --------------------------------------------------------

STEER = """
    DO $$ BEGIN
        EXECUTE format('ALTER DATABASE %I {action} enable_hashjoin {value}', current_database());
        EXECUTE format('ALTER DATABASE %I {action} enable_mergejoin {value}', current_database());
    END $$
"""
# PostgreSQL estimates a table's rows from its pages now and its statistics' rows per page.
ITEMS_LOOK_EMPTY = """
    SELECT pg_restore_relation_stats('schemaname', 'public', 'relname', 'order_items',
                                     'relpages', 100000, 'reltuples', 1::real)
"""
LARGE_IMPORT = 50_000


@pytest.fixture
async def nested_loops(database_url: str) -> AsyncIterator[None]:
    """Every new connection to the run's database joins by nested loops: the plans PostgreSQL picks
    for rows it guesses are a handful, as for rows loaded in the same transaction, which its
    statistics know nothing of."""
    async with connected(asyncpg_dsn(database_url)) as connection:
        await connection.execute(STEER.format(action="SET", value="= off"))
    try:
        yield
    finally:
        async with connected(asyncpg_dsn(database_url)) as connection:
            await connection.execute(STEER.format(action="RESET", value=""))


@pytest.fixture
async def steered_client(nested_loops: None, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    timeout = msgspec.structs.replace(settings, write_statement_timeout_ms=10_000)
    async with running_client(create_app(timeout)) as http:
        yield http


async def test_a_large_imports_statements_do_not_depend_on_the_planners_guesses(
    steered_client: httpx.AsyncClient, shop: Shop, db: asyncpg.Connection
) -> None:
    """The read models' sums of 50 000 imported orders: joined to the rows just copied in, by the
    nested loop a guess of a handful of rows picks, they ran past any timeout (a CI run of
    2026-12-04: 100 000 orders, a minute); from the import's own records there is nothing to join."""
    customer = (await shop.customer())["id"]
    product = (await shop.product(price_cents=250))["id"]
    # Statistics that know nothing of the rows an import copies in: a table of items all but empty.
    await db.execute(ITEMS_LOOK_EMPTY)
    await import_orders(steered_client, [line(customer, (product, 2, 250)) for _ in range(LARGE_IMPORT)])

    totals = await db.fetchrow("SELECT order_count, lifetime_value_cents FROM customer_totals")
    assert (totals["order_count"], totals["lifetime_value_cents"]) == (LARGE_IMPORT, LARGE_IMPORT * 500)
    sold = await db.fetchval("SELECT units FROM product_sales WHERE product_id = $1 AND days = 256", product)
    assert sold == 2 * LARGE_IMPORT

"""Reads from streaming replicas, on a real hot standby (tests/replica.py): a query with a command's
Consistency-Token always sees the command, one without may read a replica that has not replayed it
yet, a replica that stops, lags or has not replayed a migration is set aside (reads go on from the
primary, /readyz and /metrics name it), and a malformed token is a 400 that reads nothing."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from starlette.applications import Starlette

import reads.events
from reads.balancing import Replicas, Routed
from reads.db import ReadPool
from reads.replicas import LONG_PAGE_HEADER, covers, lag
from service.app import create_app
from service.schema import alembic_config, head_revision
from shared.config import Settings
from shared.consistency import HEADER, encode_token
from testkit.processes import free_port
from tests.reads.test_export import insert_orders
from tests.replica import Standby
from tests.support import AUTH, WRITE_TOKEN, eventually, running_client, serving
from tests.test_metrics import Scrape, scrape

DELAY_MS = 1500  # the standby's recovery_min_apply_delay while a test needs it behind
_serial = itertools.count(1)


def replica_url(standby: Standby, database_url: str, *, hosts: int = 1) -> str:
    """This run's database on the standby; ``hosts`` > 1 names it that many times, libpq's multi-host form."""
    url = standby.url(urlsplit(database_url).path.lstrip("/"))
    parts = urlsplit(url)
    credentials, at, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{credentials}{at}{','.join([host] * hosts)}"))


def replica_settings(database_url: str, read_database_url: str, **changes: Any) -> Settings:
    return Settings(
        database_url=database_url,
        read_database_url=read_database_url,
        write_api_tokens=(WRITE_TOKEN,),
        read_api_open=True,
        read_pool_min_size=1,
        **changes,
    )


@pytest.fixture
def caught_up(standby: Standby, database_url: str) -> Standby:
    """The standby, with everything the primary has (the emptied tables included)."""
    standby.wait_caught_up(database_url)
    return standby


@pytest.fixture
def delayed(caught_up: Standby, replay_delay: Callable[[int], None]) -> Standby:
    """The standby, caught up, then replaying every commit ``DELAY_MS`` late (on time after the test)."""
    replay_delay(DELAY_MS)
    return caught_up


@asynccontextmanager
async def replica_client(settings: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    app = create_app(settings)
    async with running_client(app) as client:
        assert isinstance(app.state.resources.pools["reads"], Replicas)
        yield app, client


def replicas_of(app: Starlette) -> Replicas:
    pool = app.state.resources.pools["reads"]
    assert isinstance(pool, Replicas)
    return pool


async def command(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    response = await client.post(path, json=body, headers=AUTH)
    assert response.status_code in (200, 201), response.text
    assert HEADER in response.headers, "with READ_DATABASE_URL set every command carries a token"
    return response


async def customer_and_product(client: httpx.AsyncClient) -> tuple[int, int]:
    n = next(_serial)
    customer = await command(client, "/v1/customers", {"email": f"replica{n}@example.com", "name": "Ada"})
    product = {"sku": f"REPLICA-{n}", "name": "Widget", "price_cents": 1000, "stock": 1000}
    return customer.json()["id"], (await command(client, "/v1/products", product)).json()["id"]


async def place_order(client: httpx.AsyncClient, customer_id: int, product_id: int) -> httpx.Response:
    body = {"customer_id": customer_id, "items": [{"product_id": product_id, "quantity": 1}]}
    return await command(client, "/v1/orders", body)


def with_token(response: httpx.Response) -> dict[str, str]:
    return {HEADER: response.headers[HEADER]}


def routed(found: Scrape, route: str) -> float:
    return found("db_reads_routed_total", route=route)


async def until(condition: Callable[[], Awaitable[bool]], within: float) -> None:
    """``eventually`` for a condition that needs a request."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not so within {within} s")
        await asyncio.sleep(0.02)


# --- read-your-writes --------------------------------------------------------------------------------


async def test_a_query_with_the_commands_token_always_sees_the_command(database_url: str, delayed: Standby) -> None:
    # The replica replays 1.5 s late and a query waits 50 ms for it: the primary answers.
    settings = replica_settings(database_url, replica_url(delayed, database_url))
    async with replica_client(settings) as (_, client):
        customer_id, product_id = await customer_and_product(client)
        before = await scrape(client)
        for _ in range(5):
            placed = await place_order(client, customer_id, product_id)
            read = await client.get(f"/v1/orders/{placed.json()['id']}", headers=with_token(placed))
            assert read.status_code == 200, read.text
            assert read.json() == placed.json()
        after = await scrape(client)
    assert routed(after, "primary") - routed(before, "primary") == 5


async def test_a_query_that_may_wait_longer_than_the_replay_delay_is_answered_by_the_replica(
    database_url: str, delayed: Standby
) -> None:
    wait_ms = DELAY_MS + 3000
    settings = replica_settings(database_url, replica_url(delayed, database_url), read_consistency_wait_ms=wait_ms)
    async with replica_client(settings) as (_, client):
        before = await scrape(client)
        for n in range(2):
            email = f"waits{n}-{next(_serial)}@example.com"
            created = await command(client, "/v1/customers", {"email": email, "name": "Ada"})
            read = await client.get(f"/v1/customers/{created.json()['id']}", headers=with_token(created))
            assert read.status_code == 200, read.text
            assert read.json()["email"] == email
        after = await scrape(client)
    assert routed(after, "waited") - routed(before, "waited") == 2
    assert routed(after, "primary") == routed(before, "primary")


async def test_without_the_token_a_query_may_read_the_replica_before_it_has_the_command(
    database_url: str, delayed: Standby
) -> None:
    settings = replica_settings(database_url, replica_url(delayed, database_url))
    async with replica_client(settings) as (_, client):
        customer_id, product_id = await customer_and_product(client)
        placed = await place_order(client, customer_id, product_id)
        path = f"/v1/orders/{placed.json()['id']}"
        stale = await client.get(path)
        current = await client.get(path, headers=with_token(placed))

        async def replayed() -> bool:
            return (await client.get(path)).status_code == 200

        await until(replayed, within=DELAY_MS / 1000 + 10)  # and it is stale only for a while

    assert stale.status_code == 404, "the replica had not replayed the order yet: the token does the work"
    assert current.status_code == 200


async def test_a_kept_top_products_answer_serves_every_database_at_its_version_and_no_other(
    database_url: str, delayed: Standby
) -> None:
    """The answers are kept once for the primary and its replicas, and a version names the same
    product sales on each (its rows replicate with them): a replica behind computes its own answer,
    never the one kept from the primary, and at the same version the kept answer is reused."""
    settings = replica_settings(database_url, replica_url(delayed, database_url))
    top = "/v1/stats/products/top"
    async with replica_client(settings) as (_, client):
        customer_id, product_id = await customer_and_product(client)
        placed = await place_order(client, customer_id, product_id)
        paid = await client.post(f"/v1/orders/{placed.json()['id']}/pay", headers=AUTH)
        assert paid.status_code == 200, paid.text
        current = await client.get(top, headers=with_token(paid))  # the primary, with the sale
        stale = await client.get(top)  # the replica, 1.5 s behind: without it

        async def replayed() -> bool:
            return bool((await client.get(top)).json() == current.json())

        await until(replayed, within=DELAY_MS / 1000 + 10)  # the replica's answer at the new version
        before = await scrape(client)
        created = await command(client, "/v1/customers", {"email": f"kept{next(_serial)}@example.com", "name": "A"})
        again = await client.get(top, headers=with_token(created))  # the primary again: nothing sold since
        after = await scrape(client)

    sold = [(p["product_id"], p["name"], p["units"], p["revenue_cents"]) for p in current.json()["products"]]
    assert sold == [(product_id, "Widget", 1, 1000)]
    assert stale.json() == {"products": []}
    assert again.json() == current.json()
    assert routed(after, "primary") - routed(before, "primary") == 1
    assert after("stats_answers_total", result="reused") - before("stats_answers_total", result="reused") == 1


async def test_an_export_reads_every_batch_from_one_database(
    database_url: str, delayed: Standby, db: asyncpg.Connection
) -> None:
    await insert_orders(db, 2500)  # three batches
    await asyncio.to_thread(delayed.wait_caught_up, database_url)
    settings = replica_settings(database_url, replica_url(delayed, database_url))
    async with replica_client(settings) as (_, client):
        customer_id, product_id = await customer_and_product(client)
        placed = await place_order(client, customer_id, product_id)
        replica = await client.get("/v1/exports/orders")
        primary = await client.get("/v1/exports/orders", headers=with_token(placed))
    assert (replica.status_code, primary.status_code) == (200, 200)
    assert len(replica.text.splitlines()) == 2500  # the replica's, whole: without the order just placed
    assert len(primary.text.splitlines()) == 2501


# --- tokens --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["nonsense", "1.", "2.00000000000000ff", "1.00000000000000FF", "1.0" * 9])
async def test_a_malformed_token_is_a_400_problem_that_reads_nothing(
    database_url: str, caught_up: Standby, token: str
) -> None:
    settings = replica_settings(database_url, replica_url(caught_up, database_url))
    async with replica_client(settings) as (_, client):
        before = await scrape(client)
        response = await client.get("/v1/orders", headers={HEADER: token})
        after = await scrape(client)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/bad-consistency-token"
    assert HEADER in response.json()["detail"]
    for pool in ("read", "read-replica-1"):
        assert after("db_pool_acquire_seconds_count", pool=pool) == before("db_pool_acquire_seconds_count", pool=pool)
    for route in ("replica", "waited", "primary"):
        assert routed(after, route) == routed(before, route)


async def test_without_replicas_a_token_is_checked_and_otherwise_needs_nothing(database_url: str) -> None:
    # READ_DATABASE_URL naming the primary itself (or PgBouncer in front of it): one read pool, always current.
    settings = replica_settings(database_url, database_url)
    app = create_app(settings)
    async with running_client(app) as client:
        assert isinstance(app.state.resources.pools["reads"], ReadPool)
        created = await command(client, "/v1/customers", {"email": "plain@example.com", "name": "Ada"})
        read = await client.get(f"/v1/customers/{created.json()['id']}", headers=with_token(created))
        far_ahead = await client.get("/v1/orders", headers={HEADER: encode_token(2**63)})
        malformed = await client.get("/v1/orders", headers={HEADER: "nonsense"})
    assert read.status_code == 200
    assert far_ahead.status_code == 200
    assert malformed.status_code == 400


# --- a replica out of service --------------------------------------------------------------------------


async def test_reads_go_on_from_the_primary_while_the_replica_stops_and_is_down(
    database_url: str, caught_up: Standby
) -> None:
    settings = replica_settings(database_url, replica_url(caught_up, database_url), read_pool_acquire_timeout=1.0)
    statuses: Counter[int] = Counter()
    slowest = 0.0
    async with replica_client(settings) as (app, client):
        customer_id, product_id = await customer_and_product(client)
        placed = await place_order(client, customer_id, product_id)
        urls = [f"/v1/orders/{placed.json()['id']}", "/v1/orders", f"/v1/customers/{customer_id}", "/v1/exports/orders"]
        replica = replicas_of(app).replicas[0]
        assert replica.fresh

        async def read(url: str) -> None:
            nonlocal slowest
            started = time.monotonic()
            response = await client.get(url)
            slowest = max(slowest, time.monotonic() - started)
            statuses[response.status_code] += 1

        # Reads all along: while the replica shuts down (its backends terminated under them) and after.
        stopping = asyncio.create_task(asyncio.to_thread(caught_up.stop))
        try:
            down_since = None
            for _ in range(2000):  # bounded: the stop takes seconds at most, then half a second more
                await asyncio.gather(*(read(url) for url in urls * 2))
                if stopping.done():
                    down_since = down_since or time.monotonic()
                    if time.monotonic() - down_since > 0.5:  # a few of the monitor's rounds
                        break
            await stopping
            ready = await client.get("/readyz")
        finally:
            await asyncio.to_thread(caught_up.start)
        await eventually(lambda: replica.fresh, within=30)  # back in service once it answers again
        back = await scrape(client)
        await client.get("/v1/orders")
        served = await scrape(client)

    assert set(statuses) == {200}, statuses
    assert slowest < settings.read_pool_acquire_timeout + 2.0  # the primary answered within its acquire timeout
    assert ready.status_code == 200, ready.text
    assert ready.text == "ready; degraded: replica-1 unreachable"
    assert routed(served, "replica") == routed(back, "replica") + 1


@pytest.mark.parametrize("form", ["alone", "beside a live one"])
async def test_a_replica_down_at_start_up_is_out_of_service_not_fatal(
    database_url: str, caught_up: Standby, form: str
) -> None:
    """READ_DATABASE_URL naming the dead replica alone (one host) or after a live one (two hosts)."""
    parts = urlsplit(replica_url(caught_up, database_url))
    credentials, at, live = parts.netloc.rpartition("@")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: a connection is refused at once
    hosts = dead if form == "alone" else f"{live},{dead}"
    name = "replica-1" if form == "alone" else "replica-2"
    async with replica_client(
        replica_settings(database_url, urlunsplit(parts._replace(netloc=f"{credentials}{at}{hosts}")))
    ) as (_, client):
        ready = await client.get("/readyz")
        reads = [await client.get("/v1/orders") for _ in range(4)]
        found = await scrape(client)
    assert ready.status_code == 200
    assert ready.text == f"ready; degraded: {name} unreachable", ready.text
    assert [read.status_code for read in reads] == [200] * 4
    assert found("db_replica_healthy", replica=name) == 0
    if form == "alone":
        assert routed(found, "primary") >= 4
    else:
        assert found("db_replica_healthy", replica="replica-1") == 1


async def test_a_single_replica_down_at_start_up_serves_once_it_is_up(database_url: str, caught_up: Standby) -> None:
    settings = replica_settings(database_url, replica_url(caught_up, database_url))
    await asyncio.to_thread(caught_up.stop)
    try:
        async with replica_client(settings) as (app, client):
            down = await client.get("/readyz")
            read_while_down = await client.get("/v1/orders")
            await asyncio.to_thread(caught_up.start)
            replica = replicas_of(app).replicas[0]
            await eventually(lambda: replica.fresh, within=30)  # the monitor found it, and opened its pool
            up = await client.get("/readyz")
            before = await scrape(client)
            read_while_up = await client.get("/v1/orders")
            after = await scrape(client)
    finally:
        if not caught_up.running:
            await asyncio.to_thread(caught_up.start)
    assert (down.status_code, down.text) == (200, "ready; degraded: replica-1 unreachable")
    assert read_while_down.status_code == 200
    assert (up.status_code, up.text) == (200, "ready")
    assert read_while_up.status_code == 200
    assert routed(after, "replica") == routed(before, "replica") + 1


async def test_a_single_replica_that_refuses_the_service_for_another_reason_stops_start_up(
    database_url: str, standby: Standby
) -> None:
    # Not "unreachable": a database the server does not have is a misconfiguration to fix, not to wait out.
    settings = replica_settings(database_url, standby.url("no_such_database"))
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        async with running_client(create_app(settings)):
            pass


# --- a replica behind the schema ----------------------------------------------------------------------

MIGRATION_DELAY_MS = 4000  # how late the standby replays the migration: the test's requests go first


def previous_revision(head: str) -> str:
    down = ScriptDirectory.from_config(alembic_config("postgresql://unused/db")).get_revision(head).down_revision
    assert isinstance(down, str), down
    return down


async def set_schema(db: asyncpg.Connection, *, table: str, revision: str) -> None:
    """The primary at ``revision``, ``product_sales_versions`` (which the top products read) named
    ``table``, in one transaction: a migration as a replica replays it, all at once."""
    async with db.transaction():
        current = "product_sales_versions_held" if table == "product_sales_versions" else "product_sales_versions"
        await db.execute(f"ALTER TABLE {current} RENAME TO {table}")
        await db.execute("UPDATE alembic_version SET version_num = $1", revision)


async def test_a_replica_that_has_not_replayed_a_migration_is_set_aside_until_it_has(
    database_url: str, caught_up: Standby, replay_delay: Callable[[int], None], db: asyncpg.Connection
) -> None:
    head = head_revision()
    before_head = previous_revision(head)
    # Primary and replica one revision back, without the table the top products need; then the
    # "migration" on the primary, which the replica replays MIGRATION_DELAY_MS late.
    await set_schema(db, table="product_sales_versions_held", revision=before_head)
    try:
        await asyncio.to_thread(caught_up.wait_caught_up, database_url)
        await asyncio.to_thread(replay_delay, MIGRATION_DELAY_MS)
    finally:
        await set_schema(db, table="product_sales_versions", revision=head)
    # Well inside the lag bound: only the schema can set the replica aside.
    settings = replica_settings(database_url, replica_url(caught_up, database_url), read_replica_max_lag_ms=60_000)
    top = "/v1/stats/products/top"
    async with replica_client(settings) as (_, client):
        behind = await scrape(client)
        while_behind = await client.get(top)
        ready_while_behind = await client.get("/readyz")
        after_behind = await scrape(client)

        async def replayed() -> bool:
            return (await client.get("/readyz")).text == "ready"

        await until(replayed, within=MIGRATION_DELAY_MS / 1000 + 10)
        before = await scrape(client)
        once_replayed = await client.get(top)
        after = await scrape(client)

    assert while_behind.status_code == 200, while_behind.text
    assert routed(after_behind, "primary") == routed(behind, "primary") + 1
    assert ready_while_behind.status_code == 200
    assert ready_while_behind.text == (
        f"ready; degraded: replica-1 schema at {before_head}, this process expects {head}:"
        " out of service until they match"
    )
    assert once_replayed.status_code == 200, once_replayed.text
    assert once_replayed.json() == while_behind.json()
    assert routed(after, "replica") == routed(before, "replica") + 1


async def test_a_replica_never_migrated_is_out_of_service_not_an_error(database_url: str, standby: Standby) -> None:
    # The standby's maintenance database: a standby without alembic_version, or any other table.
    settings = replica_settings(database_url, standby.url("postgres"))
    async with replica_client(settings) as (_, client):
        ready = await client.get("/readyz")
        read = await client.get("/v1/orders")
    assert ready.status_code == 200
    assert ready.text == (
        f"ready; degraded: replica-1 has no schema, this process expects {head_revision()}:"
        " out of service until they match"
    )
    assert read.status_code == 200


async def test_a_query_meeting_a_table_the_replica_lacks_runs_on_the_primary_which_has_it(
    database_url: str, caught_up: Standby, replay_delay: Callable[[int], None], db: asyncpg.Connection
) -> None:
    """Between the monitor's rounds: the replica is at the schema head, so only the query finds out."""
    replay_delay(MIGRATION_DELAY_MS)
    settings = replica_settings(database_url, replica_url(caught_up, database_url))
    async with replica_client(settings) as (app, _):
        replicas = replicas_of(app)
        replica = replicas.replicas[0]
        await db.execute("CREATE TABLE replica_lacks_this AS SELECT 7 AS n")  # on the replica 4 s later
        try:
            fell_back = Routed(replicas, replica, "replica")
            answer = await fell_back.value("SELECT n::text FROM replica_lacks_this", int)
            condition = replica.condition()
            await eventually(lambda: replica.in_service, within=5)  # the monitor's next round: at head
            with pytest.raises(asyncpg.UndefinedTableError):
                await Routed(replicas, replica, "replica").value("SELECT n::text FROM nowhere_at_all", int)
            still_in_service = replica.in_service
        finally:
            await db.execute("DROP TABLE replica_lacks_this")
    assert answer == 7
    assert fell_back.route == "primary"
    assert str(condition).startswith("replica-1 lacks a table, column or function")
    assert still_in_service, "the primary failed alike: the query is at fault, not the replica"


# --- visibility ----------------------------------------------------------------------------------------


async def test_metrics_and_readyz_show_each_replicas_lag_health_routes_and_pool(
    database_url: str, delayed: Standby
) -> None:
    settings = replica_settings(
        database_url, replica_url(delayed, database_url, hosts=2), read_replica_max_lag_ms=300, read_pool_max_size=4
    )
    async with replica_client(settings) as (_, client):
        before = await scrape(client)
        created = await command(client, "/v1/customers", {"email": "lag@example.com", "name": "Ada"})
        await client.get("/v1/orders")  # a replica: it has not lagged 300 ms yet
        await client.get(f"/v1/customers/{created.json()['id']}", headers=with_token(created))  # the primary
        lagging: list[httpx.Response] = []

        async def reported_lagging() -> bool:
            lagging.append(await client.get("/readyz"))
            return "replica-1 lagging" in lagging[-1].text

        await until(reported_lagging, within=DELAY_MS / 1000 + 5)
        behind = await scrape(client)

        async def caught_up_again() -> bool:
            return (await client.get("/readyz")).text == "ready"

        await until(caught_up_again, within=DELAY_MS / 1000 + 10)
        after = await scrape(client)

    assert lagging[-1].status_code == 200
    assert lagging[-1].text.startswith("ready; degraded: replica-1 lagging ")
    assert "(READ_REPLICA_MAX_LAG_MS=300)" in lagging[-1].text
    assert behind("db_replica_lag_seconds", replica="replica-1") > 0.3
    assert behind("db_replica_healthy", replica="replica-1") == 0
    for replica in ("replica-1", "replica-2"):
        assert after("db_replica_lag_seconds", replica=replica) == 0
        assert after("db_replica_healthy", replica=replica) == 1
    assert routed(after, "replica") > routed(before, "replica")
    assert routed(after, "primary") > routed(before, "primary")
    for pool, size in (("read-replica-1", 4), ("read-replica-2", 4), ("read", settings.read_primary_pool_max_size)):
        assert after("db_pool_max", pool=pool) == size
        assert after("db_pool_size", pool=pool) >= 1
        assert ("db_pool_timeouts_total", frozenset({("pool", pool)})) in after.samples


# --- the parts that need no server ---------------------------------------------------------------------

PAGE = 8192


@pytest.mark.parametrize(
    ("replayed", "position", "expected"),
    [
        (1000, 1000, True),
        (1001, 1000, True),
        (999, 1000, False),
        # At a page boundary the primary's insert position is past the next page's header.
        (3 * PAGE, 3 * PAGE + 24, True),
        (3 * PAGE, 3 * PAGE + LONG_PAGE_HEADER, True),
        (3 * PAGE, 3 * PAGE + LONG_PAGE_HEADER + 8, False),
        (3 * PAGE - 8, 3 * PAGE + 24, False),
    ],
)
def test_a_replay_position_covers_a_position_up_to_the_next_pages_header(
    replayed: int, position: int, expected: bool
) -> None:
    assert covers(replayed, position, PAGE) is expected


def test_lag_is_how_long_ago_the_primary_stood_where_the_replica_stands() -> None:
    history = [(100.0, 10), (100.2, 10), (100.4, 50), (100.6, 90)]
    assert lag(history, 90, 600.0, 100.7, PAGE) == 0
    assert lag(history, 50, 600.0, 100.7, PAGE) == pytest.approx(0.3)
    # A quiet primary: the replica's last commit is old, but it lacks only what came after 100.2.
    assert lag(history, 10, 600.0, 100.7, PAGE) == pytest.approx(0.5)
    # Behind all the history holds: the age of its last replayed commit, or at least the history's span.
    assert lag(history, 5, 600.0, 100.7, PAGE) == 600.0
    assert lag(history, 5, 0.1, 100.7, PAGE) == pytest.approx(0.7)
    assert lag([], 5, 0.1, 100.7, PAGE) == 0.1


# --- the event feed ------------------------------------------------------------------------------------


async def test_the_event_feed_is_read_from_the_replica_and_with_a_commands_token_shows_its_event_at_once(
    database_url: str, delayed: Standby
) -> None:
    settings = replica_settings(database_url, replica_url(delayed, database_url))
    async with asyncio.timeout(60), serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        created = await command(client, "/v1/customers", {"email": f"feed{next(_serial)}@example.com", "name": "A"})
        stale = await client.get("/v1/events")  # the replica, 1.5 s behind
        own = await client.get("/v1/events", headers=with_token(created))

        async def replayed() -> bool:
            return bool((await client.get("/v1/events")).json()["items"])

        await until(replayed, within=DELAY_MS / 1000 + 10)
        before = await scrape(client)
        from_replica = await client.get("/v1/events")
        after = await scrape(client)
        # A long-poll without a token: woken by the primary's head, answered once the replica has the event.
        second = await command(client, "/v1/customers", {"email": f"feed{next(_serial)}@example.com", "name": "B"})
        polled = await client.get("/v1/events", params={"after": own.json()["next_cursor"], "wait": 20}, timeout=30)

    assert stale.json()["items"] == [], "the replica had not replayed the event yet: the token does the work"
    assert [(e["type"], e["data"]) for e in own.json()["items"]] == [("customer.created", created.json())]
    assert from_replica.json() == own.json()
    assert routed(after, "replica") == routed(before, "replica") + 1
    assert [(e["type"], e["data"]) for e in polled.json()["items"]] == [("customer.created", second.json())]


@asynccontextmanager
async def rounds_held(
    settings: Settings, database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, asyncpg.Connection, Any, str]]:
    """The app served with ``settings``, a client, and the feed's end (its ``next_cursor``); then
    the positioning rounds queue behind a lock on the feed's head row until the yielded transaction
    (of the yielded connection) rolls back, or the block ends."""
    holder = await asyncpg.connect(database_url)
    try:
        async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
            seen = (await client.get("/v1/events")).json()["next_cursor"]
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("SELECT FROM events_head FOR UPDATE")
            yield client, holder, transaction, seen
    finally:
        await holder.close()


async def page_after_a_held_command(
    client: httpx.AsyncClient, standby: Standby, database_url: str, seen: str
) -> tuple[httpx.Response, asyncio.Task[httpx.Response]]:
    """With the rounds held: a command, replayed by the replica; then, in a task, the feed's page
    after ``seen`` with the command's token (it waits for the command's round)."""
    created = await command(client, "/v1/customers", {"email": f"held{next(_serial)}@example.com", "name": "H"})
    await asyncio.to_thread(standby.wait_caught_up, database_url)  # the replica has the commit
    reading = asyncio.create_task(client.get("/v1/events", params={"after": seen}, headers=with_token(created)))
    await asyncio.sleep(0.5)
    return created, reading


async def test_a_replica_that_has_the_commands_commit_but_not_its_round_waits_for_the_round(
    database_url: str, caught_up: Standby
) -> None:
    """A command answers at its commit, before the round that positions its event (``writes.events``).
    A replica can have replayed the commit, so the token sends the read there, while the round is
    still held on the primary: the page waits for the round to reach the replica and shows the event."""
    settings = replica_settings(database_url, replica_url(caught_up, database_url))
    async with asyncio.timeout(60), rounds_held(settings, database_url) as (client, holder, held, seen):
        before = await scrape(client)
        created, reading = await page_after_a_held_command(client, caught_up, database_url, seen)
        waited = not reading.done()
        unpositioned = await holder.fetchval("SELECT count(*) FROM events WHERE position IS NULL")
        await held.rollback()  # the round goes on, and the replica replays it
        own = await reading
        after = await scrape(client)

    assert unpositioned == 1, "the command's event waited for its round"
    assert waited, "the page waited for the round rather than answering without the event"
    assert [(e["type"], e["data"]) for e in own.json()["items"]] == [("customer.created", created.json())]
    # "waited": the replica, once the monitor saw it past the token (it may see it at once: "replica").
    answered = {route: routed(after, route) - routed(before, route) for route in ("replica", "waited", "primary")}
    assert answered["replica"] + answered["waited"] == 1, answered
    assert answered["primary"] == 0, answered


async def test_a_page_waiting_for_its_round_on_a_replica_that_stops_is_answered_by_the_primary(
    database_url: str, caught_up: Standby, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of the feed waits on its replica for the round that positions a command's event; the
    replica stops meanwhile. The primary, which has everything the replica had, answers the rest of
    the page's queries, its wait included: the event, not a 503."""
    monkeypatch.setattr(reads.events, "SETTLE_WITHIN", 30.0)  # the wait outlasts the replica's stop
    settings = replica_settings(database_url, replica_url(caught_up, database_url), read_pool_acquire_timeout=1.0)
    async with asyncio.timeout(90), rounds_held(settings, database_url) as (client, _, held, seen):
        created, reading = await page_after_a_held_command(client, caught_up, database_url, seen)
        assert not reading.done(), "the page waits for the round"
        try:
            await asyncio.to_thread(caught_up.stop)
            await asyncio.sleep(0.5)  # the page's next look goes to the primary
            await held.rollback()  # the round goes on
            own = await reading
        finally:
            await asyncio.to_thread(caught_up.start)

    assert own.status_code == 200, own.text
    assert [(e["type"], e["data"]) for e in own.json()["items"]] == [("customer.created", created.json())]

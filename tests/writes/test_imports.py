"""POST /v1/orders/import: NDJSON, every line validated, all or nothing, stock untouched."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import httpx
import msgspec
import pytest
from starlette.applications import Starlette

from service.app import create_app
from shared.config import Settings, asyncpg_dsn
from tests.support import AUTH, running_client
from tests.writes.support import NDJSON, assert_problem, line, ndjson, new_customer, new_order, new_product


async def nothing_imported(db: asyncpg.Connection) -> bool:
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM order_items) AS items"
    )
    return tuple(counts) == (0, 0)


async def test_a_good_file_stores_every_order_with_totals_and_leaves_stock_alone(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada, bob = await new_customer(client, "ada@example.com"), await new_customer(client, "bob@example.com")
    mug, tea = await new_product(client, "MUG", stock=5), await new_product(client, "TEA", stock=0)
    body = ndjson(
        line(ada, (tea, 3, 100), (mug, 1, 999)),
        line(bob, (mug, 2, 950), status="shipped", created_at="2025-12-31T23:59:59Z"),
        line(ada, (tea, 1, 100), status="cancelled"),
    )
    response = await client.post("/v1/orders/import", content=body, headers=NDJSON)
    assert response.status_code == 200, response.text
    assert response.json() == {"imported": 3}
    orders = await db.fetch(
        "SELECT customer_id, status, item_count, total_cents, version, created_at, updated_at FROM orders ORDER BY id"
    )
    assert [tuple(order) for order in orders] == [
        (
            ada,
            "paid",
            4,
            1299,
            1,
            datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
            datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
        ),
        (
            bob,
            "shipped",
            2,
            1900,
            1,
            datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
            datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
        ),
        (
            ada,
            "cancelled",
            1,
            100,
            1,
            datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
            datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
        ),
    ]
    items = await db.fetch(
        "SELECT line_no, product_id, quantity, unit_price_cents FROM order_items ORDER BY order_id, line_no"
    )
    assert [tuple(item) for item in items] == [(1, tea, 3, 100), (2, mug, 1, 999), (1, mug, 2, 950), (1, tea, 1, 100)]
    assert await db.fetchval("SELECT array_agg(stock ORDER BY id) FROM products") == [5, 0]


# Identities restart for every test, so the first customer and the first product are both id 1.
GOOD = line(1, (1, 1, 5))


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (ndjson(GOOD, GOOD, line(1, (1, 0, 5)), GOOD), ["line 3: Expected `int` >= 1 - at `$.items[0].quantity`"]),
        (ndjson(GOOD) + b"\n" + b'{"customer_id": 1,\n', ["line 3: Input data was truncated"]),
        (ndjson(GOOD, {**GOOD, "total_cents": 1}), ["line 2:", "total_cents"]),
        (ndjson(GOOD, line(1, (1, 1, 5), (1, 2, 5))), ["line 2: product 1 appears on more", "$.items[1].product_id"]),
        (ndjson(GOOD, line(1, (1, 1, 5), (404, 1, 5))), ["line 2: product 404 not found", "$.items[1].product_id"]),
        (ndjson(GOOD, GOOD, line(77, (1, 1, 5))), ["line 3: customer 77 not found", "$.customer_id"]),
    ],
    ids=["invalid field", "malformed json", "server field", "repeated product", "unknown product", "unknown customer"],
)
async def test_a_bad_line_is_422_naming_its_number_and_the_field_and_nothing_is_stored(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes, fragments: list[str]
) -> None:
    assert (await new_customer(client), await new_product(client)) == (1, 1)
    response = await client.post("/v1/orders/import", content=body, headers=NDJSON)
    assert_problem(response, 422, *fragments)
    assert await nothing_imported(db)


async def test_an_empty_import_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/orders/import", content=b"\n", headers=NDJSON)
    assert_problem(response, 422, "no orders")


async def test_an_import_sent_as_json_is_415_naming_the_ndjson_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/orders/import", content=b"{}", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert_problem(response, 415, "application/x-ndjson")


async def test_an_import_over_max_import_bytes_is_413(settings: Settings, db: asyncpg.Connection) -> None:
    app = create_app(msgspec.structs.replace(settings, max_import_bytes=100))
    async with running_client(app) as client:
        ada, mug = await new_customer(client), await new_product(client)
        body = ndjson(*[line(ada, (mug, 1, 5))] * 2)
        response = await client.post("/v1/orders/import", content=body, headers=NDJSON)
    assert_problem(response, 413, "100 bytes")
    assert await nothing_imported(db)


async def test_a_timestamp_without_offset_is_422_naming_the_line(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada, mug = await new_customer(client), await new_product(client)
    body = ndjson(line(ada, (mug, 1, 5)), line(ada, (mug, 1, 5), created_at="2026-01-01T12:00:00"))
    response = await client.post("/v1/orders/import", content=body, headers=NDJSON)
    assert_problem(response, 422, "line 2:", "$.created_at")
    assert await nothing_imported(db)


async def test_a_timestamp_with_an_offset_is_stored_as_that_instant(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada, mug = await new_customer(client), await new_product(client)
    body = ndjson(line(ada, (mug, 1, 5), created_at="2026-01-01T14:00:00+02:00"))
    assert (await client.post("/v1/orders/import", content=body, headers=NDJSON)).status_code == 200
    assert await db.fetchval("SELECT created_at FROM orders") == datetime(2026, 1, 1, 12, tzinfo=UTC)


async def test_more_than_100_000_orders_is_422_naming_the_first_line_past_the_limit(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada, mug = await new_customer(client), await new_product(client)
    body = ndjson(line(ada, (mug, 1, 5))) * 100_001
    response = await client.post("/v1/orders/import", content=body, headers=NDJSON)
    assert_problem(response, 422, "line 100001:", "at most 100000 orders")
    assert await nothing_imported(db)


async def test_imported_orders_read_back_through_get_as_they_were_sent(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada = await new_customer(client, "ada@example.com", "Ada")
    mug, tea, jam = [await new_product(client, sku, stock=7) for sku in ("MUG", "TEA", "JAM")]
    sent = [
        line(ada, (tea, 3, 100), (mug, 1, 999), (jam, 2, 0), created_at="2026-01-01T14:00:00.5+02:00"),
        line(ada, (jam, 1, 450), status="shipped", created_at="0001-01-02T00:00:00Z"),
        line(ada, (mug, 4, 999), (tea, 1, 100), status="cancelled", created_at="9999-12-30T23:59:59.999999Z"),
    ]
    response = await client.post("/v1/orders/import", content=ndjson(*sent), headers=NDJSON)
    assert response.json() == {"imported": 3}, response.text
    ids = [row["id"] for row in await db.fetch("SELECT id FROM orders ORDER BY id")]
    skus = {mug: "MUG", tea: "TEA", jam: "JAM"}
    for order_id, order in zip(ids, sent, strict=True):
        view = (await client.get(f"/v1/orders/{order_id}", headers=AUTH)).json()
        instant = datetime.fromisoformat(order["created_at"])
        assert view["id"] == order_id
        assert view["customer"] == {"id": ada, "email": "ada@example.com", "name": "Ada"}
        assert (view["status"], view["version"]) == (order["status"], 1)
        assert [(i["product_id"], i["sku"], i["quantity"], i["unit_price_cents"]) for i in view["items"]] == [
            (i["product_id"], skus[i["product_id"]], i["quantity"], i["unit_price_cents"]) for i in order["items"]
        ]
        assert view["item_count"] == sum(i["quantity"] for i in order["items"])
        assert view["total_cents"] == sum(i["quantity"] * i["unit_price_cents"] for i in order["items"])
        assert datetime.fromisoformat(view["created_at"]) == datetime.fromisoformat(view["updated_at"]) == instant
    # The imported ids came from the identity's sequence: an order placed afterwards gets a fresh one.
    placed = await new_order(client, ada, (mug, 1))
    assert placed["id"] > max(ids)
    assert (await client.get(f"/v1/orders/{placed['id']}", headers=AUTH)).json() == placed


async def test_a_product_deleted_while_an_import_validates_is_a_422_and_stores_nothing(
    app: Starlette, database_url: str, db: asyncpg.Connection
) -> None:
    """A product deleted by hand (no command deletes) while the import validates: the validation
    waits for the delete, then finds no product: a 422 naming the line, never a foreign-key failure
    after the orders were copied."""
    async with running_client(app) as client:
        ada = await new_customer(client)
        mug, tea = await new_product(client, "MUG"), await new_product(client, "TEA")
        body = ndjson(line(ada, (mug, 1, 5)), line(ada, (mug, 2, 5), (tea, 1, 5)))
        async with db.transaction():
            await db.execute("DELETE FROM products WHERE id = $1", tea)
            headers = {**NDJSON, "Idempotency-Key": "import-1"}
            posting = asyncio.create_task(client.post("/v1/orders/import", content=body, headers=headers))
            await wait_blocked_on_a_lock(database_url, "SELECT%FOR KEY SHARE%")
        response = await posting
    assert_problem(response, 422, "line 2:", f"product {tea} not found")
    assert await nothing_imported(db)
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def wait_blocked_on_a_lock(database_url: str, query: str) -> None:
    """Until a statement LIKE ``query`` is waiting on a lock; at most 10 s."""
    watcher = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for _ in range(1000):
            waiting = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1", query
            )
            if waiting:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no statement like {query!r} came to wait on a lock")
    finally:
        await watcher.close()


async def test_a_copy_past_the_statement_timeout_is_a_503_like_any_statement_and_stores_nothing(
    settings: Settings, database_url: str, db: asyncpg.Connection
) -> None:
    """COPY runs on the driver's connection, beside SQLAlchemy: its failures must still reach
    WritePool.run as the database failures they are, not escape it as a 500."""
    app = create_app(msgspec.structs.replace(settings, write_statement_timeout_ms=300))
    async with running_client(app, raise_app_exceptions=False) as client:
        ada, mug = await new_customer(client), await new_product(client)
        async with db.transaction():
            # The orders are copied; the items' COPY waits behind this lock, past the statement timeout.
            await db.execute("LOCK TABLE order_items IN SHARE MODE")
            posting = asyncio.create_task(
                client.post("/v1/orders/import", content=ndjson(line(ada, (mug, 1, 5))), headers=NDJSON)
            )
            await wait_blocked_on_a_lock(database_url, 'COPY "order_items"%')
            response = await posting
    assert_problem(response, 503, "WRITE_STATEMENT_TIMEOUT_MS")
    assert await nothing_imported(db)


async def test_a_connection_lost_during_the_copy_is_a_503_and_the_pool_recovers(
    app: Starlette, settings: Settings, database_url: str, db: asyncpg.Connection
) -> None:
    async with running_client(app, raise_app_exceptions=False) as client:
        ada, mug = await new_customer(client), await new_product(client)
        body = ndjson(line(ada, (mug, 1, 5)))
        async with db.transaction():
            await db.execute("LOCK TABLE order_items IN SHARE MODE")
            posting = asyncio.create_task(client.post("/v1/orders/import", content=body, headers=NDJSON))
            await wait_blocked_on_a_lock(database_url, 'COPY "order_items"%')
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'COPY \"order_items\"%'"
            )
            response = await posting
        assert_problem(response, 503, "connection to the database lost")
        assert await nothing_imported(db)
        # More imports than the pool has connections: the dead one was discarded, not handed out again.
        tea = await new_product(client, "TEA")
        for attempt in range(settings.write_pool_size + 1):
            response = await client.post("/v1/orders/import", content=ndjson(line(ada, (tea, 1, 5))), headers=NDJSON)
            assert response.status_code == 200, (attempt, response.text)


async def test_an_import_under_way_does_not_hold_up_changes_to_its_products(
    app: Starlette, database_url: str, db: asyncpg.Connection
) -> None:
    """The import keeps its customers and products from being deleted (FOR KEY SHARE) while it runs,
    and nothing more: a restock of the same product goes through meanwhile."""
    async with running_client(app) as client:
        ada, mug = await new_customer(client), await new_product(client, stock=1)
        async with db.transaction():
            await db.execute("LOCK TABLE order_items IN SHARE MODE")  # the import now waits in its COPY
            posting = asyncio.create_task(
                client.post("/v1/orders/import", content=ndjson(line(ada, (mug, 1, 5))), headers=NDJSON)
            )
            await wait_blocked_on_a_lock(database_url, 'COPY "order_items"%')
            restock = await asyncio.wait_for(
                client.post(f"/v1/products/{mug}/restock", json={"quantity": 2}, headers=AUTH), 3
            )
        imported = await posting
    assert restock.status_code == 200, restock.text
    assert restock.json()["stock"] == 3
    assert imported.status_code == 200, imported.text


WHEN = "2026-11-02T10:00:00Z"


async def test_places_racing_imports_on_the_same_products_never_deadlock(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """Places on a few products while imports of orders of the same products run: the imports' rows
    share-lock the products (their foreign keys), and a place that locks its products in id order
    must then not deadlock with another (each deadlock also costs its commands a second's wait)."""
    roomy = msgspec.structs.replace(settings, write_pool_max_waiting=64)
    before = await deadlocks(db)
    async with running_client(create_app(roomy)) as client:
        customers = [await new_customer(client, f"race{n}@example.com") for n in range(3)]
        products = [await new_product(client, f"RACE-{n}", stock=10**8) for n in range(3)]
        rng = random.Random(7)  # noqa: S311 - test data, not a secret

        def order() -> str:
            items = [{"product_id": p, "quantity": 1, "unit_price_cents": 10} for p in rng.sample(products, 2)]
            customer = rng.choice(customers)
            return json.dumps({"customer_id": customer, "status": "paid", "created_at": WHEN, "items": items})

        def lines(count: int) -> bytes:
            return "".join(order() + "\n" for _ in range(count)).encode()

        deadline = time.monotonic() + 6.0
        statuses: Counter[int] = Counter()

        async def placing() -> None:
            while time.monotonic() < deadline:
                items = [{"product_id": p, "quantity": 1} for p in rng.sample(products, rng.randint(1, 3))]
                body = {"customer_id": rng.choice(customers), "items": items}
                statuses[(await client.post("/v1/orders", json=body, headers=AUTH)).status_code] += 1

        async def importing() -> None:
            while time.monotonic() < deadline:
                headers = {**AUTH, "Content-Type": "application/x-ndjson"}
                statuses[(await client.post("/v1/orders/import", content=lines(300), headers=headers)).status_code] += 1

        async with asyncio.timeout(60), asyncio.TaskGroup() as load:
            for _ in range(6):
                load.create_task(placing())
            for _ in range(2):
                load.create_task(importing())
    # Each backend reports its statistics as it ends: count once the app's are all gone.
    for _ in range(200):  # 10 s at most
        await db.execute("SELECT pg_stat_clear_snapshot()")
        if not await db.fetchval(APP_BACKENDS):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the app's connections were still open 10 s after it stopped")
    found = await deadlocks(db) - before
    assert set(statuses) == {200, 201}, statuses
    assert found == 0, f"{found} deadlocks in {sum(statuses.values())} commands"


APP_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'orders-api:%'"
)


async def deadlocks(db: asyncpg.Connection) -> int:
    """The deadlocks PostgreSQL has detected in this database, as its ended backends reported them."""
    await db.execute("SELECT pg_stat_clear_snapshot()")
    found: int = await db.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    return found

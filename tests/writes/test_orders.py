"""POST /v1/orders and the transitions pay, ship and cancel."""

from __future__ import annotations

import asyncio
from functools import partial

import asyncpg
import httpx
import msgspec
import pytest

from service.app import create_app
from shared.config import Settings
from shared.errors import InsufficientStock
from tests.support import AUTH, running_client
from tests.writes.support import (
    NDJSON,
    assert_problem,
    line,
    ndjson,
    new_customer,
    new_order,
    new_product,
    place,
    rfc3339,
)
from writes.db import WritePool
from writes.handlers.orders import return_stock


async def stocks(db: asyncpg.Connection) -> dict[int, int]:
    return {row["id"]: row["stock"] for row in await db.fetch("SELECT id, stock FROM products")}


async def test_placing_an_order_answers_201_with_the_view_of_the_stored_rows(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client, "ada@example.com", "Ada")
    mug = await new_product(client, "MUG", price_cents=1250, stock=5)
    tea = await new_product(client, "TEA", price_cents=300, stock=50)
    response = await place(client, customer_id, (tea, 10), (mug, 2))
    assert response.status_code == 201, response.text
    order = await db.fetchrow("SELECT * FROM orders")
    assert response.headers["location"] == f"/v1/orders/{order['id']}"
    assert response.headers["etag"] == '"1"'
    assert response.json() == {
        "id": order["id"],
        "customer": {"id": customer_id, "email": "ada@example.com", "name": "Ada"},
        "status": "pending",
        "items": [
            {
                "product_id": tea,
                "sku": "TEA",
                "name": "Product TEA",
                "quantity": 10,
                "unit_price_cents": 300,
                "line_total_cents": 3000,
            },
            {
                "product_id": mug,
                "sku": "MUG",
                "name": "Product MUG",
                "quantity": 2,
                "unit_price_cents": 1250,
                "line_total_cents": 2500,
            },
        ],
        "item_count": 12,
        "total_cents": 5500,
        "version": 1,
        "created_at": rfc3339(order["created_at"]),
        "updated_at": rfc3339(order["updated_at"]),
    }
    assert (order["item_count"], order["total_cents"], order["status"]) == (12, 5500, "pending")
    items = await db.fetch("SELECT line_no, product_id, quantity, unit_price_cents FROM order_items ORDER BY line_no")
    assert [tuple(item) for item in items] == [(1, tea, 10, 300), (2, mug, 2, 1250)]
    assert await stocks(db) == {mug: 3, tea: 40}


async def test_an_order_short_of_stock_is_409_naming_each_short_product_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    plenty = await new_product(client, "A", stock=100)
    few = await new_product(client, "B", stock=3)
    none = await new_product(client, "C", stock=0)
    response = await place(client, customer_id, (plenty, 5), (few, 4), (none, 1))
    assert_problem(response, 409, f"product {few} has 3 in stock", f"product {none} has 0 in stock")
    assert f"product {plenty} " not in response.json()["detail"]
    assert await stocks(db) == {plenty: 100, few: 3, none: 0}
    assert await db.fetchval("SELECT count(*) FROM orders") == 0
    assert await db.fetchval("SELECT max(version) FROM products") == 1


async def test_an_unknown_customer_is_404_naming_it(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    product_id = await new_product(client)
    response = await place(client, 77, (product_id, 1))
    assert_problem(response, 404, "customer 77")
    assert await stocks(db) == {product_id: 10}


async def test_an_unknown_product_is_404_naming_it_and_takes_no_stock(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    product_id = await new_product(client)
    response = await place(client, customer_id, (product_id, 1), (991, 1))
    assert_problem(response, 404, "product 991")
    assert await stocks(db) == {product_id: 10}
    assert await db.fetchval("SELECT count(*) FROM orders") == 0


async def test_a_product_on_two_lines_is_422_naming_the_second_line(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    product_id = await new_product(client)
    response = await place(client, customer_id, (product_id, 1), (product_id, 2))
    assert_problem(response, 422, f"product {product_id}", "$.items[1].product_id")
    assert await db.fetchval("SELECT count(*) FROM orders") == 0


@pytest.mark.parametrize(
    ("lines", "path"),
    [([], "$.items"), ([(1, 0)], "$.items[0].quantity"), ([(1, 1001)], "$.items[0].quantity")],
)
async def test_line_limits_are_422_naming_the_field(
    client: httpx.AsyncClient, lines: list[tuple[int, int]], path: str
) -> None:
    customer_id = await new_customer(client)
    await new_product(client)
    assert_problem(await place(client, customer_id, *lines), 422, path)


@pytest.mark.parametrize("field", ["id", "status", "total_cents", "version"])
async def test_a_body_that_sets_a_server_field_is_422_and_writes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, field: str
) -> None:
    customer_id = await new_customer(client)
    product_id = await new_product(client)
    body = {"customer_id": customer_id, "items": [{"product_id": product_id, "quantity": 1}], field: 1}
    response = await client.post("/v1/orders", json=body, headers=AUTH)
    assert_problem(response, 422, field)
    assert await db.fetchval("SELECT count(*) FROM orders") == 0
    assert await stocks(db) == {product_id: 10}


async def test_pay_then_ship_moves_the_status_and_bumps_version_and_updated_at(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    order = await new_order(client, customer_id, (await new_product(client), 1))
    paid = await client.post(f"/v1/orders/{order['id']}/pay", headers=AUTH)
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["version"], paid.headers["etag"]) == ("paid", 2, '"2"')
    shipped = await client.post(f"/v1/orders/{order['id']}/ship", headers=AUTH)
    assert shipped.status_code == 200, shipped.text
    row = await db.fetchrow("SELECT status, version, created_at, updated_at FROM orders")
    assert (row["status"], row["version"]) == ("shipped", 3)
    assert shipped.json()["updated_at"] == rfc3339(row["updated_at"]) > order["updated_at"]
    assert shipped.json()["created_at"] == order["created_at"]
    assert shipped.json()["items"] == order["items"]


@pytest.mark.parametrize(
    ("steps", "refused", "status"),
    [
        ([], "ship", "pending"),
        (["pay"], "pay", "paid"),
        (["pay", "ship"], "cancel", "shipped"),
        (["cancel"], "pay", "cancelled"),
        (["cancel"], "cancel", "cancelled"),
    ],
)
async def test_a_transition_the_status_does_not_allow_is_409_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, steps: list[str], refused: str, status: str
) -> None:
    customer_id = await new_customer(client)
    order = await new_order(client, customer_id, (await new_product(client), 1))
    for step in steps:
        assert (await client.post(f"/v1/orders/{order['id']}/{step}", headers=AUTH)).status_code == 200
    before = await db.fetchrow("SELECT * FROM orders")
    stock = await db.fetchval("SELECT stock FROM products")
    response = await client.post(f"/v1/orders/{order['id']}/{refused}", headers=AUTH)
    assert_problem(response, 409, f"order {order['id']} is {status}")
    assert await db.fetchrow("SELECT * FROM orders") == before
    assert await db.fetchval("SELECT stock FROM products") == stock


async def test_a_transition_of_an_unknown_order_is_404_naming_it(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/v1/orders/5/pay", headers=AUTH), 404, "order 5")


@pytest.mark.parametrize("paid_first", [False, True])
async def test_cancel_returns_the_stock_of_every_line(
    client: httpx.AsyncClient, db: asyncpg.Connection, paid_first: bool
) -> None:
    customer_id = await new_customer(client)
    a, b = await new_product(client, "A", stock=10), await new_product(client, "B", stock=4)
    order = await new_order(client, customer_id, (a, 3), (b, 4))
    if paid_first:
        assert (await client.post(f"/v1/orders/{order['id']}/pay", headers=AUTH)).status_code == 200
    assert await stocks(db) == {a: 7, b: 0}
    response = await client.post(f"/v1/orders/{order['id']}/cancel", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert await stocks(db) == {a: 10, b: 4}


async def test_cancelling_an_imported_order_returns_no_stock_it_never_took(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    mug = await new_product(client, "MUG", stock=5)
    body = ndjson(line(customer_id, (mug, 3, 100), status="pending"), line(customer_id, (mug, 2, 100), status="paid"))
    assert (await client.post("/v1/orders/import", content=body, headers=NDJSON)).status_code == 200
    assert await stocks(db) == {mug: 5}  # an import leaves stock untouched
    for order_id in await db.fetchval("SELECT array_agg(id) FROM orders"):
        response = await client.post(f"/v1/orders/{order_id}/cancel", headers=AUTH)
        assert response.status_code == 200, response.text
    assert await stocks(db) == {mug: 5}  # and so do their cancels
    placed = await new_order(client, customer_id, (mug, 4))
    assert (await client.post(f"/v1/orders/{placed['id']}/cancel", headers=AUTH)).status_code == 200
    assert await stocks(db) == {mug: 5}  # a placed order's cancel returns what it took


async def test_orders_go_on_taking_a_products_stock_past_two_billion_changes(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Every order bumps its products' versions: a popular product passes int4 in its lifetime."""
    customer_id = await new_customer(client)
    mug = await new_product(client, "MUG", stock=5)
    await db.execute("UPDATE products SET version = 2147483647")
    order = await new_order(client, customer_id, (mug, 1))
    response = await client.post(f"/v1/orders/{order['id']}/cancel", headers=AUTH)
    assert response.status_code == 200, response.text
    product = await client.get(f"/v1/products/{mug}")
    assert (product.json()["version"], product.headers["etag"]) == (2**31 + 1, f'"{2**31 + 1}"')


async def test_a_stale_if_match_is_412_and_leaves_the_order_unchanged(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    order = await new_order(client, customer_id, (await new_product(client), 1))
    assert (await client.post(f"/v1/orders/{order['id']}/pay", headers=AUTH)).status_code == 200
    before = await db.fetchrow("SELECT * FROM orders")
    response = await client.post(f"/v1/orders/{order['id']}/ship", headers={**AUTH, "If-Match": '"1"'})
    assert_problem(response, 412, "version 2")
    assert await db.fetchrow("SELECT * FROM orders") == before


async def test_a_current_if_match_lets_the_transition_through(client: httpx.AsyncClient) -> None:
    customer_id = await new_customer(client)
    order = await new_order(client, customer_id, (await new_product(client), 1))
    response = await client.post(f"/v1/orders/{order['id']}/cancel", headers={**AUTH, "If-Match": '"1"'})
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'


async def test_200_concurrent_buyers_of_stock_10_get_exactly_10_orders_and_stock_ends_at_0(
    settings: Settings, db: asyncpg.Connection
) -> None:
    assert (settings.write_pool_size, settings.write_pool_timeout) == (5, 2.0)
    # Room for all 200 in the queue: this is about stock, not shedding (see tests/test_shedding.py).
    app = create_app(msgspec.structs.replace(settings, write_pool_max_waiting=200))
    async with running_client(app) as client:
        customer_id = await new_customer(client)
        product_id = await new_product(client, stock=10)
        responses = await asyncio.gather(*(place(client, customer_id, (product_id, 1)) for _ in range(200)))
    statuses = [response.status_code for response in responses]
    assert statuses.count(201) == 10
    assert statuses.count(409) == 190
    assert await db.fetchval("SELECT stock FROM products") == 0
    assert await db.fetchval("SELECT count(*) FROM orders") == 10
    assert await db.fetchval("SELECT sum(quantity) FROM order_items") == 10


async def test_the_response_timestamps_equal_what_a_raw_read_returns(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    customer_id = await new_customer(client)
    order = await new_order(client, customer_id, (await new_product(client), 1))
    row = await db.fetchrow("SELECT created_at, updated_at FROM orders WHERE id = $1", order["id"])
    assert order["created_at"].endswith("Z")
    assert (order["created_at"], order["updated_at"]) == (rfc3339(row["created_at"]), rfc3339(row["updated_at"]))


async def test_the_stock_update_itself_refuses_to_go_below_zero(
    client: httpx.AsyncClient, settings: Settings, db: asyncpg.Connection
) -> None:
    # The handler checks stock under a lock first; this proves the UPDATE's own condition holds the
    # invariant even when called with more than is there.
    mug, tea = await new_product(client, "MUG", stock=3), await new_product(client, "TEA", stock=9)
    pool = await WritePool.open(settings)
    try:
        with pytest.raises(InsufficientStock, match=f"product {mug}"):
            await pool.run(partial(return_stock, deltas={mug: -4, tea: -1}))
    finally:
        await pool.close()
    assert await stocks(db) == {mug: 3, tea: 9}


async def test_a_transition_answers_in_utc_for_an_order_whose_creation_was_written_as_infinity(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # No command stores infinity; a row written by hand may. asyncpg reads it as a naive
    # datetime.max, which the view must still give in UTC, as for every other instant.
    customer_id = await new_customer(client)
    order = await new_order(client, customer_id, (await new_product(client), 1))
    await db.execute("UPDATE orders SET created_at = 'infinity' WHERE id = $1", order["id"])
    paid = await client.post(f"/v1/orders/{order['id']}/pay", headers=AUTH)
    assert paid.status_code == 200, paid.text
    assert paid.json()["created_at"] == "9999-12-31T23:59:59.999999Z"
    assert paid.json()["updated_at"].endswith("Z")

"""Cache-Control on the queries (docs/http.md § Caching): a product or an order may be kept by the
client alone and is revalidated with its ETag on every use; every other answer is never stored.
No query's answer may be reused unasked: a query right after a command sees its effect."""

from __future__ import annotations

import httpx
import pytest

from tests.reads.factories import Shop

REVALIDATE = "private, no-cache"


async def test_a_product_or_order_is_revalidated_with_its_etag_on_every_use(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    customer, product = await shop.customer(), await shop.product()
    order = await shop.order(customer["id"], [(product["id"], 1)])
    for path in (f"/v1/products/{product['id']}", f"/v1/orders/{order['id']}"):
        fresh = await client.get(path)
        unchanged = await client.get(path, headers={"If-None-Match": fresh.headers["etag"]})
        assert (fresh.status_code, unchanged.status_code) == (200, 304)
        # RFC 9110: a 304 carries the Cache-Control the 200 would have.
        assert fresh.headers["cache-control"] == unchanged.headers["cache-control"] == REVALIDATE


@pytest.mark.parametrize(
    "path",
    [
        "/v1/customers/{customer}",
        "/v1/products?q=SKU",
        "/v1/orders?limit=5",
        "/v1/stats/revenue/daily?days=7",
        "/v1/stats/products/top",
        "/v1/exports/orders",
    ],
)
async def test_answers_without_a_validator_are_never_stored(client: httpx.AsyncClient, shop: Shop, path: str) -> None:
    customer = await shop.customer()
    response = await client.get(path.format(customer=customer["id"]))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"

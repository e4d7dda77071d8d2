"""GET /v1/products/{id} with ETag and 304, and the product search paged by id."""

from __future__ import annotations

import httpx

from tests.reads.factories import Shop


async def test_product_read_equals_the_create_response_and_carries_its_version_as_etag(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    created = await shop.product(sku="LAMP-1", name="Desk lamp", price_cents=3999, stock=7)

    response = await client.get(f"/v1/products/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == f'"{created["version"]}"'


async def test_if_none_match_with_the_current_etag_is_a_bodiless_304_until_the_product_changes(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    product = await shop.product()
    first = await client.get(f"/v1/products/{product['id']}")

    cached = await client.get(f"/v1/products/{product['id']}", headers={"If-None-Match": first.headers["etag"]})
    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["etag"] == first.headers["etag"]

    repriced = await shop.reprice(product["id"], 1)
    changed = await client.get(f"/v1/products/{product['id']}", headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200
    assert changed.json() == repriced
    assert changed.headers["etag"] == f'"{repriced["version"]}"' != first.headers["etag"]


async def test_if_none_match_accepts_a_list_and_weak_tags(client: httpx.AsyncClient, shop: Shop) -> None:
    product = await shop.product()
    tag = f'"{product["version"]}"'

    for header in (f'"99", W/{tag}', "*"):
        response = await client.get(f"/v1/products/{product['id']}", headers={"If-None-Match": header})
        assert response.status_code == 304, header
    assert (await client.get(f"/v1/products/{product['id']}", headers={"If-None-Match": '"99"'})).status_code == 200


async def test_if_none_match_sent_as_several_fields_is_read_whole(client: httpx.AsyncClient, shop: Shop) -> None:
    """A list header's fields join into one list (RFC 9110 §5.3): the current tag in the second counts."""
    product = await shop.product()
    fields = [("If-None-Match", '"99"'), ("If-None-Match", f'"{product["version"]}"')]
    response = await client.get(f"/v1/products/{product['id']}", headers=fields)
    assert response.status_code == 304


async def test_unknown_product_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/products/77")

    assert response.status_code == 404
    assert response.json()["detail"] == "product 77 not found"


async def test_search_matches_name_or_sku_case_insensitively_by_id(client: httpx.AsyncClient, shop: Shop) -> None:
    lamp = await shop.product(sku="LMP-1", name="Desk Lamp")
    await shop.product(sku="CHAIR-1", name="Chair")
    floor_lamp = await shop.product(sku="LMP-2", name="Floor lamp")
    by_sku = await shop.product(sku="XLAMPX", name="Bulb")

    response = await client.get("/v1/products", params={"q": "lAmP"})

    assert response.status_code == 200
    assert response.json() == {"items": [lamp, floor_lamp, by_sku], "next_cursor": None}


async def test_percent_underscore_and_backslash_in_q_are_literal(client: httpx.AsyncClient, shop: Shop) -> None:
    percent = await shop.product(sku="P-1", name="100% cotton")
    await shop.product(sku="P-2", name="100 cotton")
    underscore = await shop.product(sku="SNAKE_CASE", name="Snake")
    await shop.product(sku="SNAKEXCASE", name="Other snake")
    backslash = await shop.product(sku="B-1", name=r"back\slash")

    async def ids(q: str) -> list[int]:
        return [p["id"] for p in (await client.get("/v1/products", params={"q": q})).json()["items"]]

    assert await ids("0%") == [percent["id"]]
    assert await ids("%") == [percent["id"]]
    assert await ids("e_c") == [underscore["id"]]
    assert await ids("_") == [underscore["id"]]
    assert await ids("\\") == [backslash["id"]]


async def test_search_walks_all_products_in_pages_by_id(client: httpx.AsyncClient, shop: Shop) -> None:
    created = [await shop.product(name=f"Mug {n}") for n in range(12)]
    await shop.product(name="Plate")

    seen: list[int] = []
    sizes: list[int] = []
    params: dict[str, str | int] = {"q": "mug", "limit": 5}
    while True:
        page = (await client.get("/v1/products", params=params)).json()
        sizes.append(len(page["items"]))
        seen += [p["id"] for p in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]

    assert sizes == [5, 5, 2]
    assert seen == [p["id"] for p in created]


async def test_a_search_cursor_used_with_another_q_is_a_400(client: httpx.AsyncClient, shop: Shop) -> None:
    for _ in range(3):
        await shop.product(name="Mug")
    cursor = (await client.get("/v1/products", params={"q": "mug", "limit": 1})).json()["next_cursor"]

    response = await client.get("/v1/products", params={"q": "plate", "limit": 1, "cursor": cursor})

    assert response.status_code == 400
    assert response.json()["title"] == "Bad cursor"

"""gzip (docs/http.md § Compression): pages, stats and exports are compressed for a client that
accepts it, with a Content-Length that counts the bytes sent; single resources stay as they are;
a 304 stays bodiless; an export streams compressed, and a cut one still looks cut."""

from __future__ import annotations

import gzip

import asyncpg
import httpx
import msgspec
import pytest

from service.app import create_app
from service.compression import MINIMUM_SIZE
from shared.config import Settings
from tests.reads.factories import Shop
from tests.reads.test_export import insert_orders
from tests.reads.test_faults import export_while_the_pool_is_held
from tests.support import serving

GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}


async def raw(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    """The response and its body as sent, before any decoding."""
    async with client.stream("GET", path, headers=headers) as response:
        return response, b"".join([chunk async for chunk in response.aiter_raw()])


def vary(response: httpx.Response) -> set[str]:
    return {value.strip().lower() for value in response.headers.get("vary", "").split(",")}


async def test_a_page_is_gzipped_and_its_content_length_counts_the_bytes_sent(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    for _ in range(20):
        await shop.product()
    compressed, sent = await raw(client, "/v1/products?limit=20", GZIP)
    plain, as_is = await raw(client, "/v1/products?limit=20", IDENTITY)

    assert compressed.status_code == plain.status_code == 200
    assert compressed.headers["content-encoding"] == "gzip"
    assert int(compressed.headers["content-length"]) == len(sent)
    assert gzip.decompress(sent) == as_is
    assert len(sent) < len(as_is) / 3
    assert "content-encoding" not in plain.headers
    assert int(plain.headers["content-length"]) == len(as_is)
    # A cache in between keeps the two apart.
    assert "accept-encoding" in vary(compressed)
    assert "accept-encoding" in vary(plain)


@pytest.mark.parametrize(
    ("accept_encoding", "compressed"),
    [
        ("gzip", True),
        ("GZIP", True),  # content codings compare case-insensitively
        ("br, gzip;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),  # q=0: not acceptable (RFC 9110 §12.5.3)
        ("gzip; q=0, identity", False),
        ("*, gzip;q=0", False),
        ("*;q=0", False),
        ("gzipx, notgzip", False),
        ("br", False),
        ("gzip;q=2", False),  # not a qvalue: accepts nothing
    ],
)
async def test_gzip_only_for_an_accept_encoding_that_takes_it(
    client: httpx.AsyncClient, shop: Shop, accept_encoding: str, compressed: bool
) -> None:
    for _ in range(20):
        await shop.product()
    response, sent = await raw(client, "/v1/products?limit=20", {"Accept-Encoding": accept_encoding})
    assert response.status_code == 200
    assert (response.headers.get("content-encoding") == "gzip") is compressed
    assert "accept-encoding" in vary(response)
    if compressed:
        assert msgspec.json.decode(gzip.decompress(sent))["items"]


async def test_a_single_product_or_order_is_sent_as_it_is(client: httpx.AsyncClient, shop: Shop) -> None:
    customer, product = await shop.customer(), await shop.product()
    order = await shop.order(customer["id"], [(product["id"], 2)])
    for path in (f"/v1/products/{product['id']}", f"/v1/orders/{order['id']}", f"/v1/customers/{customer['id']}"):
        response, sent = await raw(client, path, GZIP)
        assert response.status_code == 200
        assert len(sent) < MINIMUM_SIZE, path
        assert "content-encoding" not in response.headers, path
        assert int(response.headers["content-length"]) == len(sent)


async def test_a_large_order_is_gzipped_with_its_etag_and_revalidates_to_a_bodiless_304(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    customer = await shop.customer()
    products = [await shop.product() for _ in range(20)]
    order = await shop.order(customer["id"], [(product["id"], 1) for product in products])
    path = f"/v1/orders/{order['id']}"

    compressed, sent = await raw(client, path, GZIP)
    assert compressed.headers["content-encoding"] == "gzip"
    assert msgspec.json.decode(gzip.decompress(sent)) == order
    unchanged, nothing = await raw(client, path, {**GZIP, "If-None-Match": compressed.headers["etag"]})

    assert unchanged.status_code == 304
    assert nothing == b""
    assert "content-encoding" not in unchanged.headers
    assert unchanged.headers["etag"] == compressed.headers["etag"] == f'"{order["version"]}"'
    assert unchanged.headers["cache-control"] == compressed.headers["cache-control"]


async def test_an_export_streams_gzipped_and_decodes_to_every_line(settings: Settings, db: asyncpg.Connection) -> None:
    await insert_orders(db, 2500)  # three batches, so three compressed chunks
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        compressed, sent = await raw(http, "/v1/exports/orders", GZIP)
        plain, as_is = await raw(http, "/v1/exports/orders", IDENTITY)

    assert compressed.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert compressed.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in compressed.headers
    assert gzip.decompress(sent) == as_is
    assert [msgspec.json.decode(line)["id"] for line in as_is.splitlines()] == list(range(1, 2501))


async def test_a_cut_export_still_ends_as_an_incomplete_response_when_gzipped(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_orders(db, 2500)
    app = create_app(
        msgspec.structs.replace(settings, read_pool_max_size=1, read_pool_acquire_timeout=0.2, read_export_wait=0.3)
    )
    received, error = await export_while_the_pool_is_held(app, hold_for=1.0, headers=GZIP, encoding="gzip")

    assert error is not None, "the client was not told the export was cut"
    assert "incomplete" in str(error)
    # The first batch was flushed whole: a client can use what arrived, and knows it is not all.
    assert received.count(b"\n") == 1000


async def test_every_answer_to_a_client_without_gzip_varies_on_accept_encoding(
    client: httpx.AsyncClient, shop: Shop
) -> None:
    """Such a client's answers skip the compressor (service.compression.Compression); a cache in
    between still keeps them apart from the answers a gzip client may get."""
    product = await shop.product()
    for headers in (IDENTITY, {"Accept-Encoding": ""}):
        small, sent = await raw(client, f"/v1/products/{product['id']}", headers)
        assert small.status_code == 200
        assert "content-encoding" not in small.headers
        assert int(small.headers["content-length"]) == len(sent)
        assert "accept-encoding" in vary(small)

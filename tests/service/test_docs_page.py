"""GET /docs (docs/http.md § The OpenAPI document and /docs): Swagger UI from assets the service
serves itself, at versioned URLs a browser may keep; no other file of the package is served.
tests/test_browser.py checks that the page renders the operations in a real browser."""

from __future__ import annotations

import re

import httpx

from service.docs import IMMUTABLE

ASSET = re.compile(r'(?:href|src)="([^"]+)"')


async def test_the_page_loads_only_assets_the_service_serves(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assets = ASSET.findall(page.text)
    assert len(assets) == 3
    # Relative URLs: no CDN, and the page still works when a proxy serves the API under a prefix.
    assert all(asset.startswith("docs/static/swagger-ui-") for asset in assets), assets
    assert '"openapi.json"' in page.text
    for asset in assets:
        served = await client.get(f"/{asset}")
        assert served.status_code == 200, asset
        assert served.headers["cache-control"] == IMMUTABLE
    kinds = {asset.rsplit(".", 1)[1]: (await client.get(f"/{asset}")).headers["content-type"] for asset in assets}
    assert kinds["js"].startswith(("text/javascript", "application/javascript"))
    assert kinds["css"].startswith("text/css")


async def test_the_bundle_is_sent_gzipped_to_a_browser(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    bundle = next(asset for asset in ASSET.findall(page.text) if asset.endswith("swagger-ui-bundle.js"))
    async with client.stream("GET", f"/{bundle}", headers={"Accept-Encoding": "gzip"}) as response:
        sent = sum([len(chunk) async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert sent < 1_000_000 < int((await client.head(f"/{bundle}")).headers["content-length"])


async def test_no_other_file_of_the_package_is_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    folder = ASSET.findall(page.text)[0].rsplit("/", 1)[0]
    # The package's demo page and initializer would load an example from another site.
    version = folder.rsplit("/", 1)[1]
    for name in ("index.html", "swagger-initializer.js", f"../{version}/index.html", ""):
        refused = await client.get(f"/{folder}/{name}")
        assert refused.status_code == 404, name
        assert refused.headers["content-type"] == "application/problem+json"


async def test_the_page_is_an_operation_of_the_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["paths"]["/docs"]["get"]["operationId"] == "getDocsPage"
    assert not [path for path in document["paths"] if path.startswith("/docs/")]

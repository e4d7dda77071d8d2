"""A real browser against a real `orders-api serve` process: headless Chromium (Debian's package,
which .ci/run installs) loads pages from other origins that call the API, and loads /docs.

Chromium runs with ``--dump-dom``: it loads a page, runs its scripts until they are idle (their
fetches included, however long the service takes) and prints the DOM, which the tests read.
Without Chromium these tests are skipped, except in CI (``CI`` set, as .ci/run's runner sets it),
where a missing browser fails them: there they must run."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import serve_env, serving_process, wait_ready
from tests.support import WRITE_TOKEN

READ_TOKEN = "browser-read-token"
RESULT = re.compile(r'<pre id="result">(.*?)</pre>', re.DOTALL)

# A shop's page: a command and a query with custom headers (so the browser sends a preflight
# before each), then an unknown product and an unauthenticated list (errors a page must be able to
# read). It writes what it could read of each answer into the DOM.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>shop</title></head>
<body><pre id="result">pending</pre>
<script>
const API = "%(api)s";
const WRITE = {"Authorization": "Bearer %(write)s"};
const READ = {"Authorization": "Bearer %(read)s"};

async function call(path, init) {
  try {
    const response = await fetch(API + path, init);
    const header = (name) => response.headers.get(name);
    return {status: response.status, body: await response.json(), etag: header("ETag"),
            location: header("Location"), requestId: header("X-Request-Id"), cacheControl: header("Cache-Control")};
  } catch (error) {
    return {error: String(error)};
  }
}

(async () => {
  const product = {sku: "%(sku)s", name: "From a browser", price_cents: 1250, stock: 3};
  const command = await call("/v1/products", {
    method: "POST", body: JSON.stringify(product),
    headers: {...WRITE, "Content-Type": "application/json", "Idempotency-Key": "%(sku)s"},
  });
  const query = await call(command.location || "/v1/products/1", {headers: READ});
  const missing = await call("/v1/products/999999", {headers: READ});
  const unauthenticated = await call("/v1/products", {});
  document.getElementById("result").textContent = JSON.stringify({command, query, missing, unauthenticated});
})();
</script></body></html>
"""


class Site:
    """A web server of its own on 127.0.0.1: another port, so another origin than the API's. It
    serves ``pages`` by path, filled in once the API's address is known."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page = pages.get(self.path)
                body = (page or "not found").encode()
                self.send_response(404 if page is None else 200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def site() -> Iterator[Site]:
    served = Site()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()
        thread.join()


@dataclass(frozen=True)
class Browsing:
    api: str  # the service's base URL
    allowed: Site  # its origin is CORS_ALLOW_ORIGINS
    foreign: Site  # not allowed


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs these tests")
    return found


@pytest.fixture(scope="module")
def browsing(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browsing]:
    """`orders-api serve` on the test database, queries behind READ_TOKEN, pages of one site allowed."""
    log = tmp_path_factory.mktemp("browser") / "serve.log"
    with site() as allowed, site() as foreign:
        env = serve_env(database_url, READ_API_TOKENS=READ_TOKEN, CORS_ALLOW_ORIGINS=allowed.origin)
        with serving_process(env=env, log=log) as (process, api):
            wait_ready(api, process, log)
            yield Browsing(api, allowed, foreign)


def dump_dom(chromium: str, url: str, profile: Path) -> str:
    """The DOM of ``url`` once its scripts are idle, as headless Chromium prints it."""
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            f"--user-data-dir={profile}",  # a fresh profile: no cache, no preflight kept from before
            # Virtual time stands still while a fetch is under way, so this bounds the page's own
            # timers (Swagger UI's rendering), never how long the service takes to answer.
            "--virtual-time-budget=30000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def shop_page(browsing: Browsing, sku: str) -> str:
    return PAGE % {"api": browsing.api, "write": WRITE_TOKEN, "read": READ_TOKEN, "sku": sku}


def what_the_page_read(dom: str) -> dict[str, Any]:
    found = RESULT.search(dom)
    assert found is not None, dom[-2000:]
    assert found.group(1) != "pending", "the page's script did not finish"
    read: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return read


def products_with(browsing: Browsing, sku: str) -> list[Any]:
    response = httpx.get(
        f"{browsing.api}/v1/products", params={"q": sku}, headers={"Authorization": f"Bearer {READ_TOKEN}"}
    )
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


def test_a_page_of_an_allowed_origin_runs_a_command_and_a_query_and_reads_errors(
    chromium: str, browsing: Browsing, tmp_path: Path
) -> None:
    browsing.allowed.pages["/"] = shop_page(browsing, "BROWSER-ALLOWED")
    read = what_the_page_read(dump_dom(chromium, f"{browsing.allowed.origin}/", tmp_path / "profile"))

    command, query = read["command"], read["query"]
    assert command["status"] == 201, read
    assert command["body"]["sku"] == "BROWSER-ALLOWED"
    # The exposed headers: where the product is, its version, the request's id.
    assert command["location"] == f"/v1/products/{command['body']['id']}"
    assert command["etag"] == '"1"'
    assert command["requestId"]
    assert query["status"] == 200, read
    assert query["body"] == command["body"]
    assert (query["etag"], query["cacheControl"]) == ('"1"', "private, no-cache")
    # Errors are readable too, problem+json and all.
    assert read["missing"]["status"] == 404
    assert read["missing"]["body"]["type"] == "/problems/not-found"
    assert read["unauthenticated"]["status"] == 401
    assert read["unauthenticated"]["body"]["type"] == "/problems/unauthenticated"


def test_a_page_of_another_origin_can_neither_call_nor_read(chromium: str, browsing: Browsing, tmp_path: Path) -> None:
    browsing.foreign.pages["/"] = shop_page(browsing, "BROWSER-FOREIGN")
    read = what_the_page_read(dump_dom(chromium, f"{browsing.foreign.origin}/", tmp_path / "profile"))

    for call in ("command", "query", "missing", "unauthenticated"):
        assert read[call] == {"error": "TypeError: Failed to fetch"}, (call, read)
    # The refused preflight kept the command from being sent at all.
    assert products_with(browsing, "BROWSER-FOREIGN") == []


def test_the_docs_page_renders_every_operation_from_the_service_alone(
    chromium: str, browsing: Browsing, tmp_path: Path
) -> None:
    dom = html.unescape(dump_dom(chromium, f"{browsing.api}/docs", tmp_path / "profile"))
    document = httpx.get(f"{browsing.api}/openapi.json").json()
    operations = [op for item in document["paths"].values() for op in item.values()]

    assert 'class="swagger-ui' in dom
    # Each operation's summary and operationId, as Swagger UI lists them (the page itself holds neither).
    missing = [op["operationId"] for op in operations if op["operationId"] not in dom or op["summary"] not in dom]
    assert missing == []


@contextmanager
def under_prefix(api: str, prefix: str) -> Iterator[str]:
    """A reverse proxy on 127.0.0.1 serving the API's GETs under ``prefix`` (``/api/docs`` is the
    API's ``/docs``), as one in front of a service often does; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.path.startswith(prefix + "/"):
                self.send_error(404)
                return
            answer = httpx.get(api + self.path.removeprefix(prefix))
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("content-type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{prefix}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_docs_page_calls_the_api_where_the_page_was_served_from(
    chromium: str, browsing: Browsing, tmp_path: Path
) -> None:
    # Behind a proxy that serves the API under /api, "Try it out" must call /api/v1/..., not the
    # host's /v1/... (an outside probe's finding): the page names where it was served from as the
    # document's one server, which Swagger UI lists and calls.
    with under_prefix(browsing.api, "/api") as proxied:
        dom = html.unescape(dump_dom(chromium, f"{proxied}/docs", tmp_path / "profile"))
    assert 'class="swagger-ui' in dom
    assert f'<option value="{proxied}">{proxied}</option>' in dom, dom[-3000:]

"""CORS (docs/http.md § Browsers): off unless CORS_ALLOW_ORIGINS names origins; then their preflights
are answered before anything else (auth included), and every answer, errors included, is readable
by them and by no other origin. tests/test_browser.py checks the same in a real browser."""

from __future__ import annotations

import httpx
import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.app import create_app
from service.cors import ALLOWED_HEADERS, EXPOSED_HEADERS, cors
from shared.config import ConfigError, Settings
from tests.support import AUTH, running_client

SHOP = "https://shop.example.com"
READ = {"Authorization": "Bearer read-token"}


def listed(response: httpx.Response, header: str) -> set[str]:
    return {value.strip().lower() for value in response.headers.get(header, "").split(",") if value.strip()}


def preflight(method: str, headers: str, origin: str = SHOP) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


@pytest.fixture
def closed(settings: Settings) -> Settings:
    """Queries need a read token, and pages of SHOP may call the API."""
    return msgspec.structs.replace(
        settings, read_api_open=False, read_api_tokens=("read-token",), cors_allow_origins=(SHOP,)
    )


async def test_without_allowed_origins_nothing_is_installed_and_a_preflight_is_a_405(settings: Settings) -> None:
    assert cors(settings) == []  # not installed: no request pays for a check
    app = create_app(settings)
    async with running_client(app) as client:
        refused = await client.options("/v1/orders", headers=preflight("POST", "authorization"))
        answer = await client.get("/v1/orders", headers={"Origin": SHOP})
    assert refused.status_code == 405
    assert "access-control-allow-origin" not in refused.headers
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


async def test_a_preflight_of_an_allowed_origin_is_answered_before_auth(closed: Settings) -> None:
    async with running_client(create_app(closed)) as client:
        query = await client.options("/v1/orders/1", headers=preflight("GET", "authorization, consistency-token"))
        command = await client.options(
            "/v1/orders/1/pay", headers=preflight("POST", "authorization,content-type,idempotency-key,if-match")
        )
    for answer in (query, command):
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == SHOP
        assert listed(answer, "access-control-allow-methods") == {"get", "head", "post"}
        assert {header.lower() for header in ALLOWED_HEADERS} <= listed(answer, "access-control-allow-headers")
        assert answer.headers["access-control-max-age"] == "7200"
        # Bearer tokens travel in Authorization; cookies never go cross-origin.
        assert "access-control-allow-credentials" not in answer.headers


@pytest.mark.parametrize(
    ("origin", "method", "headers", "refused"),
    [
        ("https://evil.example.com", "GET", "authorization", "origin"),
        ("https://shop.example.com.evil.example.com", "GET", "authorization", "origin"),
        ("http://shop.example.com", "GET", "authorization", "origin"),  # another scheme is another origin
        (SHOP, "PUT", "authorization", "method"),
        (SHOP, "POST", "authorization, x-forwarded-for", "headers"),
    ],
)
async def test_a_preflight_of_another_origin_method_or_header_is_refused(
    closed: Settings, origin: str, method: str, headers: str, refused: str
) -> None:
    async with running_client(create_app(closed)) as client:
        answer = await client.options("/v1/orders", headers=preflight(method, headers, origin))
    # A browser sends the request only after a 2xx preflight.
    assert answer.status_code == 400
    assert answer.text == f"Disallowed CORS {refused}"
    if refused == "origin":
        # Another origin learns nothing of the policy: no CORS header at all, only Vary.
        assert not [name for name in answer.headers if name.startswith("access-control-")], answer.headers
        assert answer.headers["vary"] == "Origin"


async def test_a_traced_page_may_send_its_trace_context(closed: Settings) -> None:
    # OpenTelemetry's browser instrumentation adds traceparent (and tracestate) to the calls it traces.
    async with running_client(create_app(closed)) as client:
        answer = await client.options("/v1/orders", headers=preflight("GET", "authorization,traceparent,tracestate"))
    assert answer.status_code == 200, answer.text
    assert {"traceparent", "tracestate"} <= listed(answer, "access-control-allow-headers")


async def test_answers_and_errors_are_readable_by_the_allowed_origin_only(closed: Settings) -> None:
    async with running_client(create_app(closed)) as client:
        origin = {"Origin": SHOP}
        answers = {
            200: await client.get("/v1/orders", headers={**origin, **READ}),
            201: await client.post(
                "/v1/customers", json={"email": "cors@example.com", "name": "Cors"}, headers={**origin, **AUTH}
            ),
            401: await client.get("/v1/orders", headers=origin),
            404: await client.get("/v1/orders/42", headers={**origin, **READ}),
            405: await client.put("/v1/orders", headers=origin),
            422: await client.get("/v1/orders?limit=0", headers={**origin, **READ}),
        }
        foreign = await client.get("/v1/orders", headers={"Origin": "https://evil.example.com", **READ})
    for status, answer in answers.items():
        assert answer.status_code == status, answer.text
        assert answer.headers["access-control-allow-origin"] == SHOP, status
        assert {header.lower() for header in EXPOSED_HEADERS} <= listed(answer, "access-control-expose-headers")
        # A cache in between keeps one answer per origin.
        assert "origin" in listed(answer, "vary"), status
    assert answers[401].headers["content-type"] == "application/problem+json"
    # Still answered (CORS is the browser's to enforce), but no browser lets that page read it.
    assert foreign.status_code == 200
    assert not [name for name in foreign.headers if name.startswith("access-control-")], foreign.headers
    assert "origin" in listed(foreign, "vary")


async def test_a_503_and_a_500_are_readable_too(closed: Settings) -> None:
    app = create_app(
        msgspec.structs.replace(closed, read_pool_max_size=1, read_pool_min_size=1, read_pool_max_waiting=0)
    )

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    app.router.routes.append(Route("/broken", broken))
    async with running_client(app, raise_app_exceptions=False) as client:
        crashed = await client.get("/broken", headers={"Origin": SHOP})
        # The only read connection is taken and nobody may wait: the query is shed at once.
        async with app.state.resources.pools["reads"].gate.slot(1.0):
            shed = await client.get("/v1/orders", headers={"Origin": SHOP, **READ})
    assert (crashed.status_code, shed.status_code) == (500, 503)
    for answer in (crashed, shed):
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["access-control-allow-origin"] == SHOP
    assert "retry-after" in listed(shed, "access-control-expose-headers")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://shop.example.com", ("https://shop.example.com",)),
        (" http://127.0.0.1:5173 , https://admin.example.com ", ("http://127.0.0.1:5173", "https://admin.example.com")),
        ("http://[::1]:8080", ("http://[::1]:8080",)),
    ],
)
def test_allowed_origins_are_a_comma_separated_list(value: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"CORS_ALLOW_ORIGINS": value}).cors_allow_origins == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("*", "`*` is refused"),
        ("https://shop.example.com,*", "`*` is refused"),
        ("https://shop.example.com/", "write 'https://shop.example.com'"),
        ("https://Shop.Example.com", "write 'https://shop.example.com'"),
        ("https://shop.example.com:443", "write 'https://shop.example.com'"),
        ("https://shop.example.com/app", "write 'https://shop.example.com'"),
        ("shop.example.com", "is not an origin"),
        ("null", "is not an origin"),
        ("file:///index.html", "is not an origin"),
        ("https://bücher.example", "xn--"),
    ],
)
def test_anything_but_exact_origins_stops_start_up_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="CORS_ALLOW_ORIGINS") as refused:
        Settings.from_env({"CORS_ALLOW_ORIGINS": value})
    assert message in str(refused.value)

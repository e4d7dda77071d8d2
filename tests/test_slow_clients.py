"""Slow and oversized requests, over real sockets to the production uvicorn configuration: a stalled
head or body never holds a connection past its bound, nor does a client that stops taking its answer,
an oversized head or one the parser cannot read is refused with problem+json, and a client that leaves
mid-body is one log line."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
import pytest

from service.app import create_app
from service.cli import uvicorn_options
from shared.config import Settings
from tests.reads.test_export import insert_orders
from tests.support import WRITE_TOKEN, eventually, serving
from tests.test_events_live import clients_waiting

BOUND = 0.5  # HEADER_TIMEOUT, BODY_TIMEOUT and SEND_TIMEOUT here: small, so the file runs in seconds
SLACK = 2.0  # a busy two-core machine may be late by this much, and no more
MAX_HEADER_BYTES = 4096
MAX_HEADERS = 20
GENERATED_ID = re.compile(r"[0-9a-f]{16}")  # service.logs.request_id's fresh ids

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def bounded(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings,
        header_timeout=BOUND,
        body_timeout=BOUND,
        send_timeout=BOUND,
        max_header_bytes=MAX_HEADER_BYTES,
        max_headers=MAX_HEADERS,
    )


@pytest.fixture
async def address(bounded: Settings) -> AsyncIterator[tuple[str, int]]:
    async with serving(create_app(bounded), **uvicorn_options(bounded)) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


@contextlib.asynccontextmanager
async def connected(address: tuple[str, int]) -> AsyncIterator[Stream]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """All the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    try:
        async with asyncio.timeout(within):
            for _ in range(10_000):
                chunk = await reader.read(65_536)
                if not chunk:
                    return received
                received += chunk
    except ConnectionResetError:
        return received
    except TimeoutError:
        pytest.fail(f"the connection was still open after {within} s; received {received[:80]!r}")
    pytest.fail("the server kept sending")


async def one_response(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(SLACK):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return head + await reader.readexactly(length)


def request_head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: test", *headers, "", ""]).encode()


def status(response: bytes) -> int | None:
    return int(response.split(b" ")[1]) if response.startswith(b"HTTP/1.1 ") else None


def post_customer_head(content_length: int) -> bytes:
    return request_head(
        "POST",
        "/v1/customers",
        f"Authorization: Bearer {WRITE_TOKEN}",
        "Content-Type: application/json",
        f"Content-Length: {content_length}",
    )


CUSTOMER = b'{"email": "slow@example.com", "name": "Slow"}'


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /healthz HTTP/1.1\r\nHost: test\r\n"],
    ids=["nothing", "half a head"],
)
async def test_a_stalled_head_is_closed_within_the_header_timeout(address: tuple[str, int], sent: bytes) -> None:
    async with connected(address) as (reader, writer):
        started = time.monotonic()
        writer.write(sent)
        assert await until_closed(reader, BOUND + SLACK) == b""
        assert time.monotonic() - started >= BOUND * 0.9


async def test_a_head_trickled_a_byte_at_a_time_is_closed_within_the_header_timeout(
    address: tuple[str, int],
) -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            for byte in b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

    async with connected(address) as (reader, writer):
        trickling = asyncio.create_task(trickle(writer))
        started = time.monotonic()
        assert await until_closed(reader, BOUND + SLACK) == b""
        assert time.monotonic() - started < BOUND + SLACK
        trickling.cancel()


async def test_a_later_request_on_a_kept_alive_connection_gets_its_own_header_timeout(
    address: tuple[str, int],
) -> None:
    async with connected(address) as (reader, writer):
        for _ in range(2):
            writer.write(request_head("GET", "/healthz"))
            assert status(await one_response(reader)) == 200
            await asyncio.sleep(BOUND * 1.5)  # idle, within uvicorn's keep-alive timeout


async def test_a_stalled_body_gets_408_and_a_closed_connection_and_changes_nothing(
    address: tuple[str, int], db: asyncpg.Connection
) -> None:
    async with connected(address) as (reader, writer):
        writer.write(post_customer_head(len(CUSTOMER)) + CUSTOMER[:10])
        started = time.monotonic()
        response = await until_closed(reader, BOUND + SLACK)
    assert status(response) == 408, response
    assert b"BODY_TIMEOUT" in response
    assert time.monotonic() - started >= BOUND * 0.9
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_a_body_sent_with_its_head_in_one_write_is_not_taken_for_the_head(
    address: tuple[str, int], db: asyncpg.Connection
) -> None:
    padding = b" " * (MAX_HEADER_BYTES * 2)  # head and body together pass the head limit
    body = CUSTOMER[:-1] + padding + b"}"
    async with connected(address) as (reader, writer):
        writer.write(post_customer_head(len(body)) + body)
        assert status(await one_response(reader)) == 201
    assert await db.fetchval("SELECT count(*) FROM customers") == 1


def many_headers(count: int, size: int = 8) -> list[str]:
    return [f"X-Header-{i}: {'v' * size}" for i in range(count)]


@pytest.mark.parametrize(
    "headers",
    [
        many_headers(MAX_HEADERS + 1),
        [f"X-Big: {'a' * MAX_HEADER_BYTES}"],
        many_headers(5_000),
    ],
    ids=["one field too many", "one field past the size", "5000 fields"],
)
async def test_a_head_past_its_limits_gets_431(address: tuple[str, int], headers: list[str]) -> None:
    async with connected(address) as (reader, writer):
        writer.write(request_head("GET", "/healthz", *headers))
        response = await until_closed(reader, SLACK)
    assert status(response) == 431, response
    assert b"application/problem+json" in response
    assert GENERATED_ID.fullmatch(response_headers(response)["x-request-id"]), response


@pytest.mark.parametrize(("origin", "readable"), [("https://shop.example.com", True), ("https://evil.example", False)])
async def test_a_refused_head_of_an_allowed_origin_is_readable_by_its_page(
    bounded: Settings, origin: str, readable: bool
) -> None:
    # The protocol answers a 431 before any app runs, so the CORS middleware never saw it: a page
    # whose token pushed its head past the limit saw a bare network error, not the problem.
    with_cors = msgspec.structs.replace(bounded, cors_allow_origins=("https://shop.example.com",))
    async with serving(create_app(with_cors), **uvicorn_options(with_cors)) as url:
        host, port = url.removeprefix("http://").split(":")
        async with connected((host, int(port))) as (reader, writer):
            writer.write(request_head("GET", "/v1/orders", f"Origin: {origin}", *many_headers(MAX_HEADERS + 1)))
            response = await until_closed(reader, SLACK)
    headers = response_headers(response)
    assert status(response) == 431, response
    assert headers["vary"] == "Origin"
    if readable:
        assert headers["access-control-allow-origin"] == origin
        assert "X-Request-Id" in headers["access-control-expose-headers"]
    else:
        assert not [name for name in headers if name.startswith("access-control-")], headers


def response_headers(response: bytes) -> dict[str, str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    return {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])}


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad Header: y\r\n\r\n",  # a space in a field name
        b"GET /healthz HTTP/9.9\r\nHost: test\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["bad field name", "bad version", "no request line"],
)
async def test_a_head_the_parser_cannot_read_is_a_400_problem_with_a_request_id(
    address: tuple[str, int], head: bytes
) -> None:
    async with connected(address) as (reader, writer):
        writer.write(head)
        response = await until_closed(reader, SLACK)
    assert status(response) == 400, response
    found = response_headers(response)
    assert found["content-type"] == "application/problem+json"
    assert found["connection"] == "close"
    assert GENERATED_ID.fullmatch(found["x-request-id"]), found
    problem = msgspec.json.decode(response.split(b"\r\n\r\n", 1)[1])
    assert problem["type"] == "/problems/malformed-request"
    assert problem["status"] == 400


async def test_a_megabyte_of_headers_is_refused_before_it_is_all_read(address: tuple[str, int]) -> None:
    async def send(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(request_head("GET", "/healthz", *many_headers(1_000, size=1_000)))
            await writer.drain()

    async with connected(address) as (reader, writer):
        sending = asyncio.create_task(send(writer))
        response = await until_closed(reader, SLACK)
        await sending
    # The server may close while the client is still sending: a reset may then beat the 431.
    assert status(response) in (431, None), response


async def test_a_head_still_incomplete_past_the_size_limit_is_refused_at_once(address: tuple[str, int]) -> None:
    async with connected(address) as (reader, writer):
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEADER_BYTES)
        response = await until_closed(reader, SLACK)
    assert status(response) == 431, response
    assert time.monotonic() - started < BOUND, "refused by its size, not by the header timeout"


async def test_a_refused_head_runs_nothing_of_the_body_sent_with_it(
    address: tuple[str, int], db: asyncpg.Connection
) -> None:
    head = post_customer_head(len(CUSTOMER))
    over = head.replace(b"\r\n\r\n", "".join(f"\r\n{h}" for h in many_headers(MAX_HEADERS)).encode() + b"\r\n\r\n")
    async with connected(address) as (reader, writer):
        writer.write(over + CUSTOMER)
        response = await until_closed(reader, SLACK)
    assert status(response) == 431, response
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_a_head_within_its_limits_is_served(address: tuple[str, int]) -> None:
    async with connected(address) as (reader, writer):
        writer.write(request_head("GET", "/healthz", *many_headers(MAX_HEADERS - 1)))
        assert status(await one_response(reader)) == 200


async def test_heads_within_their_limits_are_served_though_they_arrive_together_past_them(
    address: tuple[str, int],
) -> None:
    """The size is the head's own, not that of the read it came in (which holds two heads here)."""
    head = request_head("GET", "/healthz", f"X-Big: {'a' * (MAX_HEADER_BYTES * 3 // 5)}")
    async with connected(address) as (reader, writer):
        writer.write(head + head)
        assert [status(await one_response(reader)) for _ in range(2)] == [200, 200]


async def test_no_answer_names_the_server_software(address: tuple[str, int]) -> None:
    """No ``Server`` field: it told every client what runs here and which advisories apply."""
    async with connected(address) as (reader, writer):
        writer.write(request_head("GET", "/healthz"))
        served = await one_response(reader)
    async with connected(address) as (reader, writer):
        writer.write(request_head("GET", "/healthz", *many_headers(MAX_HEADERS + 1)))
        refused = await until_closed(reader, SLACK)
    assert (status(served), status(refused)) == (200, 431)
    for response in (served, refused):
        assert "server" not in response_headers(response), response
        assert "date" in response_headers(response), response


async def test_a_client_leaving_mid_body_is_one_log_line_and_changes_nothing(
    address: tuple[str, int], db: asyncpg.Connection, server_log: pytest.LogCaptureFixture
) -> None:
    async with connected(address) as (_reader, writer):
        writer.write(post_customer_head(len(CUSTOMER)) + CUSTOMER[:10])
        await writer.drain()
    async with asyncio.timeout(SLACK):
        for _ in range(1_000):
            if any("mid-body" in r.getMessage() for r in server_log.records):
                break
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # anything else the request logs would come now
    lines = [r for r in server_log.records if r.name in ("orders_api.http", "uvicorn.error")]
    assert [r.getMessage() for r in lines] == ["client closed the connection mid-body: POST /v1/customers"]
    assert lines[0].exc_info is None
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


async def test_an_answer_its_client_stops_taking_is_cut_after_the_send_timeout(
    address: tuple[str, int], db: asyncpg.Connection, server_log: pytest.LogCaptureFixture
) -> None:
    """An export of megabytes to a client that reads none of it: once the socket's buffers are full,
    the answer waits SEND_TIMEOUT for the client, then the connection is cut (the body ends without
    its last chunk); uvicorn alone would wait for as long as the client likes."""
    await insert_orders(db, 50_000)  # about 9 MB of NDJSON: past what the sockets' buffers hold
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the client's side holds little
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(request_head("GET", "/v1/exports/orders"))
        await eventually(lambda: any("SEND_TIMEOUT" in r.getMessage() for r in server_log.records), within=30)
        received = await until_closed(reader, SLACK)
    finally:
        writer.close()
    assert status(received) == 200
    assert not received.endswith(b"0\r\n\r\n"), "the export was cut, not completed"


async def test_a_client_that_leaves_with_requests_pipelined_ends_the_one_running_too(
    address: tuple[str, int], server_log: pytest.LogCaptureFixture
) -> None:
    """Two long-polls pipelined on one connection, then the client goes: the one running stops
    waiting at once (uvicorn told only the queued one) and nothing is logged as a 500."""
    url = f"http://{address[0]}:{address[1]}"
    async with httpx.AsyncClient(base_url=url) as http:
        after = (await http.get("/v1/events")).json()["next_cursor"]
        poll = request_head("GET", f"/v1/events?after={after}&wait=20")
        async with connected(address) as (_, writer):
            writer.write(poll + poll)
            await writer.drain()
            await clients_waiting(http, "long-poll", 1)
        await clients_waiting(http, "long-poll", 0)
    assert not [r.getMessage() for r in server_log.records if r.levelname == "ERROR"]

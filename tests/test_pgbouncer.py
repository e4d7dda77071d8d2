"""The service behind a stock PgBouncer in transaction mode (PGBOUNCER=true): the sides connect as the
roles `orders-api roles` configures, every command and query works at the concurrency of two workers,
and the per-side settings (timeouts, read-only, TimeZone) still hold per transaction."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from starlette.applications import Starlette

from reads.balancing import Replicas
from service.app import create_app
from shared.config import Settings
from shared.consistency import HEADER
from shared.roles import READ_ROLE, WRITE_ROLE
from testkit.processes import free_port
from tests.processes import serve_env, serving_process, wait_ready
from tests.replica import Standby
from tests.support import AUTH, WRITE_TOKEN, running_client, serving
from tests.test_events_live import clients_waiting, event_stream, next_event

PGBOUNCER = shutil.which("pgbouncer") or next(
    (path for path in ("/usr/sbin/pgbouncer",) if os.access(path, os.X_OK)), None
)
# Short, so a timeout fires quickly; `orders-api roles` and the service read the same variables.
TIMEOUTS = {"READ_STATEMENT_TIMEOUT_MS": "300", "WRITE_STATEMENT_TIMEOUT_MS": "600"}
# What PgBouncer or the server says when the service gets pooling wrong.
POOLING_ERRORS = ("prepared statement", "unsupported startup parameter")


@dataclass(frozen=True)
class Bouncer:
    port: int
    database: str
    passwords: dict[str, str]
    log: Path

    def url(self, role: str) -> str:
        return f"postgresql://{role}:{self.passwords[role]}@127.0.0.1:{self.port}/{self.database}"

    def env(self, owner_url: str, **more: str) -> dict[str, str]:
        """`serve`'s environment: each side through PgBouncer as its role."""
        return serve_env(
            owner_url,
            PGBOUNCER="true",
            READ_DATABASE_URL=self.url(READ_ROLE),
            WRITE_DATABASE_URL=self.url(WRITE_ROLE),
            **{**TIMEOUTS, **more},
        )

    def settings(self) -> Settings:
        return Settings(
            read_database_url=self.url(READ_ROLE),
            write_database_url=self.url(WRITE_ROLE),
            pgbouncer=True,
            read_statement_timeout_ms=int(TIMEOUTS["READ_STATEMENT_TIMEOUT_MS"]),
            write_statement_timeout_ms=int(TIMEOUTS["WRITE_STATEMENT_TIMEOUT_MS"]),
            write_api_tokens=(WRITE_TOKEN,),
            read_api_open=True,
            read_pool_min_size=1,
        )


def _server_address(database_url: str) -> tuple[str, int, str]:
    """Host (a unix socket directory for the embedded server), port and database of ``database_url``."""
    parts = urlsplit(database_url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    return host, parts.port or 5432, parts.path.strip("/")


def _run_as(host: str) -> str | None:
    """PgBouncer refuses to run as root: as root, run it (``-u``) as the user owning the server's
    socket directory (the embedded server's system user), who can reach that socket."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    for _ in range(100):
        assert process.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"pgbouncer did not listen within 10 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def pgbouncer(database_url: str) -> Iterator[Bouncer]:
    """A stock PgBouncer (transaction pooling, md5 auth, nothing ignored) on 127.0.0.1 in front of
    the test database, whose roles `orders-api roles` has just configured as the owner."""
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed (.ci/run installs Debian's pgbouncer)")
    subprocess.run(
        [sys.executable, "-m", "service", "roles"], env=serve_env(database_url, **TIMEOUTS), check=True, timeout=60
    )
    host, server_port, database = _server_address(database_url)
    user = _run_as(host)
    directory = Path(tempfile.mkdtemp(prefix="orders-api-pgbouncer-"))
    passwords = {READ_ROLE: secrets.token_hex(8), WRITE_ROLE: secrets.token_hex(8)}
    (directory / "users.txt").write_text("".join(f'"{role}" "{password}"\n' for role, password in passwords.items()))
    port, log = free_port(), directory / "pgbouncer.log"
    (directory / "pgbouncer.ini").write_text(
        f"[databases]\n{database} = host={host} port={server_port} dbname={database}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = md5\nauth_file = {directory}/users.txt\npool_mode = transaction\nlogfile = {log}\n"
    )
    if user is not None:
        for path in (directory, *directory.iterdir()):
            shutil.chown(path, user)
    command = [PGBOUNCER, *(["-u", user] if user else []), str(directory / "pgbouncer.ini")]
    with (directory / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stderr, stderr=subprocess.STDOUT)
    try:
        _wait_listening(process, port, directory / "stderr.log")
        yield Bouncer(port, database, passwords, log)
    finally:
        process.terminate()  # by its pid
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def app(pgbouncer: Bouncer) -> AsyncIterator[Starlette]:
    """Both sides in this process, each through PgBouncer as its role, lifespan running."""
    served = create_app(pgbouncer.settings())
    async with running_client(served):
        yield served


async def _every_command_and_query(http: httpx.AsyncClient, n: int) -> list[httpx.Response]:
    """Each route once, with what it needs made first; ``n`` keeps emails and SKUs apart."""
    sent: list[httpx.Response] = []

    async def post(path: str, body: object, **headers: str) -> httpx.Response:
        sent.append(await http.post(path, json=body, headers={**AUTH, **headers}))
        return sent[-1]

    customer = (await post("/v1/customers", {"email": f"c{n}@example.com", "name": "C"})).json()
    await post("/v1/customers/upsert", {"customers": [{"email": f"u{n}@example.com", "name": "U"}]})
    product = (await post("/v1/products", {"sku": f"P-{n}", "name": "Mug", "price_cents": 500, "stock": 9})).json()
    await post(f"/v1/products/{product['id']}/restock", {"quantity": 5})
    await post(f"/v1/products/{product['id']}/reprice", {"price_cents": 600})
    order = {"customer_id": customer["id"], "items": [{"product_id": product["id"], "quantity": 1}]}
    placed = await post("/v1/orders", order, **{"Idempotency-Key": f"place-{n}"})
    paid = await post(f"/v1/orders/{placed.json()['id']}/pay", None, **{"If-Match": placed.headers["ETag"]})
    await post(f"/v1/orders/{placed.json()['id']}/ship", None, **{"If-Match": paid.headers["ETag"]})
    await post(f"/v1/orders/{(await post('/v1/orders', order)).json()['id']}/cancel", None)
    line = {"product_id": product["id"], "quantity": 1, "unit_price_cents": 500}
    imported = {"customer_id": customer["id"], "status": "paid", "created_at": "2024-01-02T03:04:05Z", "items": [line]}
    sent.append(
        await http.post(
            "/v1/orders/import",
            content=httpx.Response(200, json=imported).content + b"\n",
            headers={**AUTH, "Content-Type": "application/x-ndjson"},
        )
    )
    for path in (
        f"/v1/customers/{customer['id']}",
        f"/v1/products/{product['id']}",
        f"/v1/orders/{placed.json()['id']}",
        "/v1/products?q=Mug",
        f"/v1/orders?customer_id={customer['id']}",
        "/v1/stats/revenue/daily",
        "/v1/stats/products/top",
        "/v1/exports/orders",
        "/readyz",
    ):
        sent.append(await http.get(path))
    return sent


def test_every_command_and_query_works_through_pgbouncer_with_two_workers(
    pgbouncer: Bouncer, database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    with serving_process("--workers", "2", env=pgbouncer.env(database_url), log=log) as (process, url):
        wait_ready(url, process, log, within=60)

        async def clients() -> list[httpx.Response]:
            # Four runs at once over fresh connections: both workers, both pools, busy together.
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=url, timeout=15, limits=limits) as http:
                runs = await asyncio.gather(*(_every_command_and_query(http, n) for n in range(4)))
            return [response for run in runs for response in run]

        responses = asyncio.run(clients())
    failed = [(r.request.method, r.request.url.path, r.status_code, r.text) for r in responses if r.status_code >= 300]
    assert failed == [], log.read_text()
    assert len(responses) == 4 * 20
    logs = log.read_text() + pgbouncer.log.read_text()
    assert not [line for line in logs.splitlines() if any(error in line for error in POOLING_ERRORS)]


async def test_a_slow_statement_on_either_side_is_a_503_through_pgbouncer(
    app: Starlette, db: asyncpg.Connection
) -> None:
    # The test's own direct connection holds a lock both sides' statements wait on.
    async with running_client(app) as http, db.transaction():
        await db.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        read = await http.get("/v1/customers/1")
        write = await http.post("/v1/customers", json={"email": "slow@example.com", "name": "S"}, headers=AUTH)
        waited = time.monotonic() - started
    assert (read.status_code, write.status_code) == (503, 503), (read.text, write.text)
    assert "READ_STATEMENT_TIMEOUT_MS" in read.json()["detail"]
    assert "WRITE_STATEMENT_TIMEOUT_MS" in write.json()["detail"]
    # The roles' 300 + 600 ms fired, not the defaults (2 s + 5 s).
    assert waited < 3, waited


async def test_the_read_pool_refuses_writes_and_holds_the_read_settings_per_transaction(app: Starlette) -> None:
    reads = app.state.resources.pools["reads"]
    async with reads.connection() as connection:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await connection.execute("INSERT INTO customers (email, name) VALUES ('r@example.com', 'R')")
    async with reads.connection() as connection:
        # Least privilege too: even with read-only switched off, the read role may not insert.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(
                "BEGIN READ WRITE; INSERT INTO customers (email, name) VALUES ('r@example.com', 'R'); COMMIT"
            )
    async with reads.connection() as connection:
        seen = await connection.fetchrow(
            "SELECT current_setting('TimeZone') AS tz, current_setting('plan_cache_mode') AS plans,"
            " current_setting('statement_timeout') AS timeout, current_setting('application_name') AS app"
        )
    # plan_cache_mode is the server's own: `orders-api roles` resets what earlier releases set.
    assert dict(seen) == {"tz": "UTC", "plans": "auto", "timeout": "300ms", "app": "orders-api:read"}


async def test_the_write_role_cannot_change_the_schema(app: Starlette) -> None:
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):
        await app.state.resources.pools["writes"].run(lambda session: session.execute(text("CREATE TABLE x (id int)")))


def test_serve_refuses_to_start_when_the_roles_do_not_hold_its_settings(
    pgbouncer: Bouncer, database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    env = pgbouncer.env(database_url, READ_STATEMENT_TIMEOUT_MS="999")  # the roles were set up with 300
    with serving_process(env=env, log=log) as (process, _url):
        assert process.wait(timeout=60) != 0
    output = log.read_text()
    assert "statement_timeout is '300', expected '999'" in output, output
    assert "orders-api roles" in output


async def test_commands_and_the_event_feed_work_through_pgbouncer(pgbouncer: Bouncer) -> None:
    """A page, a long-poll woken by a command and a stream that receives one, over a real socket: the
    feed's queries and the head watch need nothing of a session across transactions."""
    served = create_app(msgspec.structs.replace(pgbouncer.settings(), events_stream_seconds=30))
    async with asyncio.timeout(60), serving(served) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        customer = await http.post("/v1/customers", json={"email": "feed@example.com", "name": "F"}, headers=AUTH)
        assert customer.status_code == 201, customer.text
        page = await http.get("/v1/events")
        assert page.status_code == 200, page.text
        assert [(e["type"], e["data"]) for e in page.json()["items"]] == [("customer.created", customer.json())]

        polling = asyncio.create_task(http.get("/v1/events", params={"after": page.json()["next_cursor"], "wait": 20}))
        await clients_waiting(http, "long-poll", 1)
        product = {"sku": "FEED-1", "name": "Mug", "price_cents": 500, "stock": 9}
        created = await http.post("/v1/products", json=product, headers=AUTH)
        woken = await polling
        assert [(e["type"], e["data"]) for e in woken.json()["items"]] == [("product.created", created.json())]

        async with event_stream(http, woken.json()["next_cursor"]) as lines:
            await clients_waiting(http, "stream", 1)
            body = {
                "customer_id": customer.json()["id"],
                "items": [{"product_id": created.json()["id"], "quantity": 1}],
            }
            placed = await http.post("/v1/orders", json=body, headers=AUTH)
            assert placed.status_code == 201, placed.text
            streamed = await next_event(lines)
    assert streamed is not None, "the stream ended without the order's event"
    assert (streamed["type"], streamed["data"]) == ("order.placed", placed.json())
    logs = pgbouncer.log.read_text()
    assert not [line for line in logs.splitlines() if any(error in line for error in POOLING_ERRORS)]


async def test_with_replicas_the_primarys_read_pool_goes_through_pgbouncer_as_the_read_role(
    pgbouncer: Bouncer, database_url: str, standby: Standby
) -> None:
    """`--role all` behind PgBouncer with a replica: the read side's own pool on the primary (for the
    queries no replica can answer) connects to the primary's address as the role READ_DATABASE_URL
    names, so PgBouncer's check of the read session holds; as the write role it refused to start."""
    await asyncio.to_thread(standby.wait_caught_up, database_url)  # the roles are there too
    replica = urlsplit(standby.url(pgbouncer.database))
    reader = f"{READ_ROLE}:{pgbouncer.passwords[READ_ROLE]}"
    as_reader = replica._replace(netloc=f"{reader}@{replica.hostname}:{replica.port}")
    settings = msgspec.structs.replace(pgbouncer.settings(), read_database_url=urlunsplit(as_reader))
    app = create_app(settings)
    async with running_client(app) as client:
        reads = app.state.resources.pools["reads"]
        assert isinstance(reads, Replicas)
        async with reads.primary.connection() as connection:
            assert await connection.fetchval("SELECT current_user") == READ_ROLE
        created = await client.post("/v1/customers", json={"email": "rp@example.com", "name": "R"}, headers=AUTH)
        assert created.status_code == 201, created.text
        # Its token sends the read to the primary if the replica has not replayed the command yet.
        read = await client.get(f"/v1/customers/{created.json()['id']}", headers={HEADER: created.headers[HEADER]})
        assert read.status_code == 200, read.text

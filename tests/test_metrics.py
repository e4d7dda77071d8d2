"""``GET /metrics``: the series docs/http.md names, for both pools, moving as the pools do, requests counted by
route template, and the same answer from every worker of ``serve --workers 2``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import httpx
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from service.app import create_app
from service.metrics import PUBLISH_PERIOD
from shared.config import Settings
from shared.metrics import REGISTRY
from tests.processes import serve_env, serving_process, wait_until
from tests.support import AUTH, eventually, running_client

SERIES = {
    "db_pool_size",
    "db_pool_in_use",
    "db_pool_max",
    "db_pool_waiting",
    "db_pool_acquire_seconds",
    "db_pool_timeouts",  # the family of db_pool_timeouts_total
    "http_requests",  # of http_requests_total
    "http_request_duration_seconds",
    # With replicas only (tests/reads/test_replicas.py); without, the families are there, with no samples.
    "db_replica_lag_seconds",
    "db_replica_healthy",
    "db_reads_routed",  # of db_reads_routed_total
    # The top products' answers, computed or reused (tests/reads/test_stats.py).
    "stats_answers",  # of stats_answers_total
    # The event feed (tests/test_events.py).
    "events_appended",  # of events_appended_total
    "events_position_rounds",  # of events_position_rounds_total
    "events_waiting",
    "events_oldest_age_seconds",
    # Each process's own, labelled by pid (service.metrics.ProcessesByPid).
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds",  # of process_cpu_seconds_total
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}
POOL_SAMPLES = ["db_pool_size", "db_pool_in_use", "db_pool_max", "db_pool_waiting", "db_pool_timeouts_total"]
ORDER = "/v1/orders/{id}"


class Scrape:
    """One answer of /metrics: its families, and each sample's value by name and labels."""

    def __init__(self, text: str) -> None:
        families = list(text_string_to_metric_families(text))
        self.families = {family.name for family in families}
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in families
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a series not yet exported (a counter no request has touched)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def routes(self) -> set[str]:
        return {
            value
            for (name, labels) in self.samples
            if name == "http_requests_total"
            for key, value in labels
            if key == "route"
        }


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return Scrape(response.text)


async def test_metrics_exports_exactly_the_series_of_the_contract_for_both_pools(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await client.get("/v1/orders/1")
    found = await scrape(client)
    assert found.families == SERIES
    for pool in ("write", "read"):
        for name in POOL_SAMPLES:
            assert (name, frozenset({("pool", pool)})) in found.samples, (name, pool)
        assert ("db_pool_acquire_seconds_count", frozenset({("pool", pool)})) in found.samples
    assert found("db_pool_max", pool="write") == settings.write_pool_size + settings.write_pool_max_overflow
    assert found("db_pool_max", pool="read") == settings.read_pool_max_size
    # The write pool opens its connections at start-up; the read pool at least its minimum.
    assert found("db_pool_size", pool="write") == settings.write_pool_size
    assert found("db_pool_size", pool="read") >= settings.read_pool_min_size


async def between_rounds(client: httpx.AsyncClient) -> Scrape:
    """A scrape taken while no write place is held: no command is then between its acquire and
    its end, so the counts agree."""
    for _ in range(100):
        found = await scrape(client)
        if found("db_pool_in_use", pool="write") == 0:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError("a write place stayed held for a second")


async def test_in_use_and_waiting_follow_the_pools_and_every_acquire_is_timed(
    app: Starlette, client: httpx.AsyncClient, settings: Settings
) -> None:
    pools = app.state.resources.pools
    before = await between_rounds(client)
    async with pools["reads"].connection():
        held = await scrape(client)
    assert held("db_pool_in_use", pool="read") == 1
    assert (
        held("db_pool_acquire_seconds_count", pool="read") == before("db_pool_acquire_seconds_count", pool="read") + 1
    )

    gate = pools["writes"].gate
    async with AsyncExitStack() as stack:
        for _ in range(gate.capacity):
            await stack.enter_async_context(gate.slot(1.0))
        command = asyncio.create_task(
            client.post("/v1/customers", json={"email": "ada@example.com", "name": "Ada"}, headers=AUTH)
        )
        await eventually(lambda: gate.waiting == 1)
        full = await scrape(client)
    created = await command
    after = await between_rounds(client)
    for _ in range(100):  # the command answered at its commit; its positioning round follows
        if after("events_position_rounds_total", result="ok") > before("events_position_rounds_total", result="ok"):
            break
        await asyncio.sleep(0.01)
        after = await between_rounds(client)

    assert full("db_pool_in_use", pool="write") == gate.capacity
    assert full("db_pool_waiting", pool="write") == 1
    assert created.status_code == 201, created.text
    assert after("db_pool_in_use", pool="write") == 0
    assert after("db_pool_waiting", pool="write") == 0
    acquired = after("db_pool_acquire_seconds_count", pool="write") - before(
        "db_pool_acquire_seconds_count", pool="write"
    )
    # The held places and the command's after its wait. The events' positioning rounds have their
    # own connection (writes.events.RoundConnection): they take no place, and wait for none.
    rounds = after("events_position_rounds_total", result="ok") - before("events_position_rounds_total", result="ok")
    assert rounds >= 1
    assert acquired == gate.capacity + 1
    assert after("db_pool_acquire_seconds_sum", pool="write") > before("db_pool_acquire_seconds_sum", pool="write")


async def test_each_process_publishes_its_pool_gauges_without_being_scraped(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    # With several workers a scrape refreshes only the worker that answers it; the others' gauges
    # must already be in the files. Read what this process published, without scraping.
    def published(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"pool": "read"})

    pool = app.state.resources.pools["reads"]
    assert published("db_pool_size") == pool.size()
    async with pool.connection(), pool.connection():  # min size 1: the second is opened now
        opened = pool.size()
        assert opened >= 2
        await eventually(
            lambda: (published("db_pool_size"), published("db_pool_in_use")) == (opened, 2),
            within=PUBLISH_PERIOD + 1.0,
        )
    await eventually(lambda: published("db_pool_in_use") == 0, within=PUBLISH_PERIOD + 1.0)


async def test_a_timeout_and_a_refusal_at_the_pool_each_count_once(settings: Settings) -> None:
    app = create_app(msgspec.structs.replace(settings, write_pool_timeout=0.3, write_pool_max_waiting=1))
    async with running_client(app) as client:
        gate = app.state.resources.pools["writes"].gate
        before = await scrape(client)
        async with AsyncExitStack() as stack:
            for _ in range(gate.capacity):
                await stack.enter_async_context(gate.slot(1.0))
            body = {"email": "ada@example.com", "name": "Ada"}
            waits = asyncio.create_task(client.post("/v1/customers", json=body, headers=AUTH))
            await eventually(lambda: gate.waiting == 1)
            refused = await client.post("/v1/customers", json=body, headers=AUTH)
            timed_out = await waits
        after = await scrape(client)

    assert (refused.status_code, timed_out.status_code) == (503, 503)
    assert after("db_pool_timeouts_total", pool="write") == before("db_pool_timeouts_total", pool="write") + 2
    assert after("db_pool_timeouts_total", pool="read") == before("db_pool_timeouts_total", pool="read")
    answered = {"method": "POST", "route": "/v1/customers", "status": "503"}
    assert after("http_requests_total", **answered) == before("http_requests_total", **answered) + 2


async def test_requests_are_counted_by_route_template_and_status_never_by_raw_path(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    assert (await client.get("/v1/orders/987654")).status_code == 404
    assert (await client.get("/no/such/path/424242")).status_code == 404
    assert (await client.request("BREW", "/healthz")).status_code == 405
    after = await scrape(client)

    def counted(name: str, **labels: str) -> float:
        return after(name, **labels) - before(name, **labels)

    assert counted("http_requests_total", method="GET", route=ORDER, status="404") == 1
    assert counted("http_request_duration_seconds_count", method="GET", route=ORDER) == 1
    assert counted("http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert counted("http_requests_total", method="other", route="/healthz", status="405") == 1
    assert counted("db_pool_acquire_seconds_count", pool="read") == 1  # the order lookup's one acquire
    assert not any("424242" in route or "987654" in route for route in after.routes())


async def test_metrics_is_documented_as_an_operation(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["paths"]["/metrics"]["get"]["tags"] == ["operations"]


# --- serve --workers 2: one answer for all workers, whichever answers the scrape -------------------

POOL_ENV = {"WRITE_POOL_SIZE": "2", "READ_POOL_MIN_SIZE": "1", "READ_POOL_MAX_SIZE": "3"}
REQUESTS = 20


def _serve_env(database_url: str, **extra: str) -> dict[str, str]:
    return serve_env(database_url, **POOL_ENV, **extra)


@contextmanager
def _serving_two_workers(env: dict[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``orders-api serve --workers 2`` in a child process, once both workers have opened their pools;
    stopped with SIGTERM (then SIGKILL) afterwards."""
    with serving_process("--workers", "2", env=env, log=log) as (process, url):
        # Each worker publishes its read pool's ceiling when it opens the pool: both have when they add up.
        wait_until(lambda: _scrape(url)("db_pool_max", pool="read") == 6, process, log)
        yield url, process


def _scrape(url: str) -> Scrape:
    # A new connection each time, so that each scrape may be answered by either worker.
    response = httpx.get(f"{url}/metrics", timeout=5.0, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def _workers(parent: int) -> set[int]:
    """The uvicorn workers of ``parent``: its children started by multiprocessing's spawn."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # exited while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


def _metrics_directory(worker: int) -> Path:
    for variable in (Path(f"/proc/{worker}/environ").read_bytes()).split(b"\0"):
        if variable.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(variable.split(b"=", 1)[1].decode())
    raise AssertionError(f"worker {worker} has no PROMETHEUS_MULTIPROC_DIR")


def _get_orders(url: str, count: int) -> None:
    for n in range(count):
        response = httpx.get(f"{url}/v1/orders/{900_000 + n}", timeout=5.0, headers={"Connection": "close"})
        assert response.status_code == 404


def test_two_workers_answer_every_scrape_with_the_sum_of_both(database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with _serving_two_workers(_serve_env(database_url), log) as (url, process):
        workers = _workers(process.pid)
        assert len(workers) == 2, workers
        directory = _metrics_directory(min(workers))
        assert directory.is_dir()
        _get_orders(url, REQUESTS)
        scrapes = [_scrape(url) for _ in range(6)]
    for found in scrapes:
        assert found("http_requests_total", method="GET", route=ORDER, status="404") == REQUESTS
        assert found("db_pool_max", pool="read") == 2 * 3
        assert found("db_pool_max", pool="write") == 2 * 2
        assert found("db_pool_size", pool="write") == 2 * 2  # each worker opens its write pool whole
        assert found("db_pool_in_use", pool="read") == 0
        assert found("db_pool_acquire_seconds_count", pool="read") >= REQUESTS
    assert process.returncode == 0, log.read_text()
    assert not directory.exists(), "serve removes the metrics directory it made"


def test_a_killed_workers_gauges_leave_the_sum_and_its_counts_stay(database_url: str, tmp_path: Path) -> None:
    directory, log = tmp_path / "metrics", tmp_path / "serve.log"
    directory.mkdir()
    env = _serve_env(database_url, PROMETHEUS_MULTIPROC_DIR=str(directory))
    # An earlier run's counts, left in the operator's directory: serve starts from zero.
    earlier = (
        "from shared.metrics import HTTP_REQUESTS; HTTP_REQUESTS.labels('GET', '/v1/orders/{id}', '404').inc(1000)"
    )
    subprocess.run([sys.executable, "-c", earlier], env=env, check=True, timeout=30)
    assert list(directory.glob("counter_*.db"))

    with _serving_two_workers(env, log) as (url, process):
        _get_orders(url, REQUESTS)
        workers = _workers(process.pid)
        killed = min(workers)
        os.kill(killed, signal.SIGKILL)
        # uvicorn's supervisor starts a replacement; wait until it has opened its read pool.
        wait_until(lambda: len(_workers(process.pid) - workers) == 1, process, log)
        (replacement,) = _workers(process.pid) - workers
        wait_until(lambda: _read_max_of(directory / f"gauge_livesum_{replacement}.db") == 3, process, log)
        scrapes = [_scrape(url) for _ in range(6)]
    for found in scrapes:
        assert found("db_pool_max", pool="read") == 2 * 3  # the survivor and the replacement, not the dead
        assert found("db_pool_size", pool="write") == 2 * 2
        assert found("http_requests_total", method="GET", route=ORDER, status="404") == REQUESTS
    assert not (directory / f"gauge_livesum_{killed}.db").exists()


def _read_max_of(file: Path) -> float | None:
    """The read pool's ceiling as one worker published it in its file, if it has yet."""
    if not file.exists():
        return None
    for metric in MultiProcessCollector.merge([str(file)], accumulate=False):  # type: ignore[no-untyped-call]
        for sample in metric.samples:
            if sample.name == "db_pool_max" and sample.labels.get("pool") == "read":
                return float(sample.value)
    return None

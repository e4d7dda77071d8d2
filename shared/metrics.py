"""Every Prometheus series the service exports (the contract: docs/http.md), the middleware that counts
requests, and ``GET /metrics``.

The pool series are fed at the pool seam: ``shared.pools.Gate`` publishes ``in_use``, ``waiting``
and ``max`` as they change and observes every acquire (``PoolSeries``); ``size`` (connections
open) changes inside the drivers, so each process publishes its pools' sizes every second while its
lifespan runs, and a scrape refreshes the scraping process's once more.

With ``serve --workers N`` each worker is a process with its own numbers, and a scrape reaches just
one of them. prometheus-client's multiprocess mode makes every scrape answer for all of them: each
worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums the files.
The library reads that variable from the environment itself, when it is first imported (its
contract, and the one exception to "only shared.config reads os.environ"); ``serve`` sets it to a
fresh directory before the workers start (``multiprocess_directory``).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.dbfailures import PoolNames
from shared.openapi import operation
from shared.routing import route_template

if TYPE_CHECKING:  # shared.sides imports shared.pools, which imports this module
    from shared.sides import Pool, Resources

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Read when prometheus-client is, so this agrees with the library on whether values live in files.
MULTIPROCESS_DIR = os.environ.get(MULTIPROCESS_DIR_VARIABLE)

# The contract (docs/http.md) names the series; the `_created` companions of counters and histograms are not among them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves these untyped
# Our series only: the default registry would add the process and GC collectors.
REGISTRY = CollectorRegistry()

# Across workers every pool gauge is summed over the live processes ("summed across workers",
# the contract): connections open, held and queued add up, and so do the ceilings, since each worker has
# its own pool. A worker that died leaves the sum (``_forget_dead_workers``).
POOL_SIZE = Gauge(
    "db_pool_size", "Connections the pool has open", ["pool"], registry=REGISTRY, multiprocess_mode="livesum"
)
POOL_IN_USE = Gauge(
    "db_pool_in_use", "Connections held by requests", ["pool"], registry=REGISTRY, multiprocess_mode="livesum"
)
POOL_MAX = Gauge(
    "db_pool_max", "The most connections the pool opens", ["pool"], registry=REGISTRY, multiprocess_mode="livesum"
)
POOL_WAITING = Gauge(
    "db_pool_waiting", "Requests queued for a connection", ["pool"], registry=REGISTRY, multiprocess_mode="livesum"
)
# From 1 ms (a pool with room answers in microseconds) to past the longest acquire timeout a pool
# would sensibly have.
POOL_ACQUIRE_SECONDS = Histogram(
    "db_pool_acquire_seconds",
    "How long a request waited for its place at the pool (acquires that got one)",
    ["pool"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
POOL_TIMEOUTS = Counter(
    "db_pool_timeouts",
    "Acquires that ended in a 503: waited past the pool's timeout, or refused at once with the queue full",
    ["pool"],
    registry=REGISTRY,
)
# With streaming replicas (reads.replicas), labelled replica="replica-1", "replica-2"... in READ_DATABASE_URL's
# order, never by host. Each worker watches the replicas itself: across workers the lag is the largest
# any worker sees, and a replica counts as healthy only while every worker finds it so.
REPLICA_LAG_SECONDS = Gauge(
    "db_replica_lag_seconds",
    "How old the newest data a replica lacks is (0: it has replayed the primary's last position)",
    ["replica"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
REPLICA_HEALTHY = Gauge(
    "db_replica_healthy",
    "1 while a replica serves queries: reachable, a standby, and within READ_REPLICA_MAX_LAG_MS",
    ["replica"],
    registry=REGISTRY,
    multiprocess_mode="livemin",
)
READS_ROUTED = Counter(
    "db_reads_routed",
    "Requests by the database that answered their queries: replica, waited (a replica, after waiting for it to"
    " replay past the request's Consistency-Token), or primary",
    ["route"],
    registry=REGISTRY,
)
STATS_ANSWERS = Counter(
    "stats_answers",
    "Top products answers: computed, or reused (the product sales unchanged since this process computed"
    " the same window and limit)",
    ["result"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter("http_requests", "HTTP requests answered", ["method", "route", "status"], registry=REGISTRY)
HTTP_REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "From the request's arrival to the last byte of its response",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# A path no route matched is one label, never the raw path, so a scanner cannot grow the series.
UNMATCHED = "unmatched"
# Any token is a valid HTTP method; the rest share one label for the same reason.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


@dataclass(frozen=True)
class PoolSeries:
    """One pool's series, labelled once: the gate's hot path never looks a label up."""

    size: Gauge
    in_use: Gauge
    max: Gauge
    waiting: Gauge
    acquire_seconds: Histogram
    timeouts: Counter


def pool_series(names: PoolNames) -> PoolSeries:
    """The series of the pool ``names``, made when a process opens that pool: a process with one
    role exports only its own pool's series."""
    label = names.label
    return PoolSeries(
        size=POOL_SIZE.labels(label),
        in_use=POOL_IN_USE.labels(label),
        max=POOL_MAX.labels(label),
        waiting=POOL_WAITING.labels(label),
        acquire_seconds=POOL_ACQUIRE_SECONDS.labels(label),
        # Made now, so the series reads 0 before the first timeout instead of being absent.
        timeouts=POOL_TIMEOUTS.labels(label),
    )


def _pools(scope: Scope) -> Iterable[Pool]:
    """The pools of this process, from the lifespan state (which the server also copies into
    every request's scope)."""
    resources: Resources | None = scope.get("state", {}).get("resources")
    return () if resources is None else resources.pools.values()


def publish_sizes(pools: Iterable[Pool]) -> None:
    for pool in pools:
        POOL_SIZE.labels(pool.names.label).set(pool.size())


# Connections open and close inside the drivers, which offer no hook here, and not only during
# requests (an idle connection expires), so each process publishes its pools' sizes this often.
SIZE_PERIOD = 1.0


class RequestMetrics:
    """Counts and times every HTTP request by method, route template and status (pure ASGI: no
    request object is built, and two cached children are all a request touches). While the app's
    lifespan runs it also publishes its pools' sizes every ``SIZE_PERIOD`` seconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (method, route path, status) -> its counter and timer. Bounded: the methods are a fixed
        # set, the paths those of the routes (or None), the statuses the service's own.
        self.children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Stays 500 when the app raises: a middleware outside this one answers the exception with a 500.
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            counter, timer = self._children(scope, status)
            counter.inc()
            timer.observe(time.perf_counter() - started)

    def _children(self, scope: Scope, status: int) -> tuple[Counter, Histogram]:
        method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
        route = route_template(scope) or UNMATCHED
        key = (method, route, status)
        found = self.children.get(key)
        if found is None:
            found = HTTP_REQUESTS.labels(method, route, str(status)), HTTP_REQUEST_SECONDS.labels(method, route)
            self.children[key] = found
        return found

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        publisher: asyncio.Task[None] | None = None

        async def send_and_start_publishing(message: Message) -> None:
            nonlocal publisher
            if message["type"] == "lifespan.startup.complete":
                # The pools are open and in the state: publish before the first request is served.
                publish_sizes(_pools(scope))
                publisher = asyncio.create_task(_publish_sizes_periodically(scope))
            await send(message)

        try:
            await self.app(scope, receive, send_and_start_publishing)
        finally:
            if publisher is not None:
                publisher.cancel()
                await asyncio.wait([publisher])


async def _publish_sizes_periodically(scope: Scope) -> None:
    while True:
        await asyncio.sleep(SIZE_PERIOD)
        publish_sizes(_pools(scope))


@operation(
    "Prometheus metrics: both pools and HTTP requests, summed across workers", tag="operations", responses={200: None}
)
async def metrics(request: Request) -> Response:
    publish_sizes(_pools(request.scope))
    # Reading every worker's files takes milliseconds (about 13 ms for 4 workers' files here): off
    # the event loop, so the requests this worker is serving meanwhile do not stall behind it.
    text = await run_in_threadpool(lambda: generate_latest(_registry()))
    return Response(text, media_type=CONTENT_TYPE_LATEST)


def _registry() -> CollectorRegistry:
    if MULTIPROCESS_DIR is None:
        return REGISTRY
    _forget_dead_workers(Path(MULTIPROCESS_DIR))
    # Built per scrape, as prometheus-client prescribes: the collector reads every worker's files.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]  # prometheus-client leaves these untyped
    return registry


def _forget_dead_workers(directory: Path) -> None:
    """Drop the gauges of workers that are gone from the sum (their counters and histograms stay:
    what they counted happened). uvicorn's supervisor restarts a worker that died or hung with no
    hook to tell us, and a worker killed with SIGKILL runs no exit code, so the scrape checks."""
    for file in directory.glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        # Two workers answering scrapes at once may both find the same dead one.
        if not _alive(pid):
            with suppress(FileNotFoundError):
                multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]  # prometheus-client leaves these untyped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, as another user's: not ours, but not for us to forget either
        return True
    return True


@contextmanager
def multiprocess_directory() -> Iterator[str]:
    """The directory the workers of one ``serve --workers N`` share their values through, set in
    the environment they inherit: ``PROMETHEUS_MULTIPROC_DIR`` when the operator set it (emptied of
    an earlier run's files, as prometheus-client requires), else a fresh one removed at exit."""
    given = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="orders-api-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR_VARIABLE] = directory
        try:
            yield directory
        finally:
            del os.environ[MULTIPROCESS_DIR_VARIABLE]

"""The shell's side of the metrics: what counts requests (for ``service.logs.RequestLog``), ``GET /metrics``, and the
directory ``serve --workers N`` shares values through.

With ``serve --workers N`` each worker is a process with its own numbers, and a scrape reaches just
one of them. prometheus-client's multiprocess mode makes every scrape answer for all of them: each
worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums the files.
``serve`` sets it to a fresh directory before the workers start (``multiprocess_directory``).

The process series (memory, CPU, open file descriptors) are read at the scrape, for every worker and
labelled by its pid (``ProcessesByPid``): they describe what a process is now, not what it counted,
so they have no place in the files.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from shared.metrics import (
    HTTP_REQUEST_SECONDS,
    HTTP_REQUESTS,
    MULTIPROCESS_DIR,
    MULTIPROCESS_DIR_VARIABLE,
    REGISTRY,
    publish_pools,
)
from shared.openapi import operation
from shared.paths import route_template
from shared.sides import Pool, resources_in

# A path no route matched is one label, never the raw path, so a scanner cannot grow the series.
UNMATCHED = "unmatched"
# Any token is a valid HTTP method; the rest share one label for the same reason.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def _pools(scope: Scope) -> Iterable[Pool]:
    """The pools of this process, from the lifespan state (which the server also copies into
    every request's scope)."""
    resources = resources_in(scope.get("state", {}))
    return () if resources is None else resources.pools.values()


# Connections open and close inside the drivers, which offer no hook here, and not only during
# requests (an idle connection expires); places at the gates are taken and given back on every
# query, too often to publish each time. So each process publishes its pools this often.
PUBLISH_PERIOD = 1.0


class RequestMetrics:
    """Counts and times every HTTP request by method, route template and status: two cached children
    are all a request touches. Not a middleware of its own: ``service.logs.RequestLog``, which wraps
    every request's ``send`` anyway, calls ``observe`` as the request ends. A layer of its own cost
    a small read 10 to 20 % of its rate (measured with compression's layer)."""

    def __init__(self) -> None:
        # (method, path of the route Starlette's router chose, status) -> its counter and timer.
        # Bounded: the methods are a fixed set, the paths those of the routes (or None), the statuses
        # the service's own.
        self.children: dict[tuple[str, str | None, int], tuple[Counter, Histogram]] = {}

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"]
        if method not in METHODS:
            method = OTHER_METHOD
        key = (method, getattr(scope.get("route"), "path", None), status)
        found = self.children.get(key)
        if found is None:
            route = route_template(scope) or UNMATCHED
            found = HTTP_REQUESTS.labels(method, route, str(status)), HTTP_REQUEST_SECONDS.labels(method, route)
            self.children[key] = found
        found[0].inc()
        found[1].observe(seconds)


@asynccontextmanager
async def publishing_pools(pools: Iterable[Pool]) -> AsyncIterator[None]:
    """The pools' gauges (``shared.metrics.publish_pools``), published now (before the first
    request is served) and every ``PUBLISH_PERIOD`` seconds while the block runs (the lifespan)."""
    pools = list(pools)
    publish_pools(pools)
    publisher = asyncio.create_task(_publish_periodically(pools))
    try:
        yield
    finally:
        publisher.cancel()
        await asyncio.wait([publisher])


async def _publish_periodically(pools: list[Pool]) -> None:
    while True:
        await asyncio.sleep(PUBLISH_PERIOD)
        publish_pools(pools)


@operation(
    "Prometheus metrics: both pools and HTTP requests, summed across workers", tag="operations", responses={200: None}
)
async def metrics(request: Request) -> Response:
    publish_pools(_pools(request.scope))
    # Reading every worker's files takes milliseconds (about 13 ms for 4 workers' files here): off
    # the event loop, so the requests this worker is serving meanwhile do not stall behind it.
    text = await run_in_threadpool(lambda: generate_latest(_registry()))
    return Response(text, media_type=CONTENT_TYPE_LATEST)


class ProcessesByPid:
    """prometheus-client's process series (``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
    ``process_open_fds``...) for each of ``pids``, labelled ``pid``. Its ``ProcessCollector`` reads
    them from /proc for one process, unlabelled, and its multiprocess mode leaves them out: a worker
    answering a scrape would report itself alone. So each scrape reads every worker's, through it."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self.pids = pids

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for pid in sorted(self.pids()):
            # Nothing for a process that exited meanwhile: ProcessCollector skips what it cannot read.
            for found in _process_series(pid):
                family = families.get(found.name)
                if family is None:
                    kind = CounterMetricFamily if found.type == "counter" else GaugeMetricFamily
                    family = families[found.name] = kind(found.name, found.documentation, labels=["pid"])
                for sample in found.samples:  # one each, unlabelled
                    family.add_metric([str(pid)], sample.value)
        yield from families.values()


def _process_series(pid: int) -> Iterable[Metric]:
    return ProcessCollector(pid=lambda: pid, registry=None).collect()


# One process: its own registry, and its own process series in it.
if MULTIPROCESS_DIR is None:
    REGISTRY.register(ProcessesByPid(lambda: (os.getpid(),)))


def _registry() -> CollectorRegistry:
    if MULTIPROCESS_DIR is None:
        return REGISTRY
    directory = Path(MULTIPROCESS_DIR)
    workers = _forget_dead_workers(directory)
    # Built per scrape, as prometheus-client prescribes: the collector reads every worker's files.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]  # prometheus-client leaves these untyped
    registry.register(ProcessesByPid(lambda: workers))
    return registry


def _forget_dead_workers(directory: Path) -> set[int]:
    """Drop the gauges of workers that are gone from the sum (their counters and histograms stay:
    what they counted happened), and return the live ones: every worker publishes its pools' gauges
    once they are open. uvicorn's supervisor restarts a worker that died or hung with no hook to
    tell us, and a worker killed with SIGKILL runs no exit code, so the scrape checks."""
    live = set()
    for file in directory.glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        if _alive(pid):
            live.add(pid)
            continue
        # Two workers answering scrapes at once may both find the same dead one.
        with suppress(FileNotFoundError):
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]  # prometheus-client leaves these untyped
    return live


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

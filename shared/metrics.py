"""Every Prometheus series the service exports (the contract: docs/http.md), in one registry.

The pool series are fed at the pool seam: ``shared.pools.Gate`` counts every acquire it times out
or refuses and observes every one it grants (``PoolSeries``). The gauges are published rather than
kept up to date: ``size`` (connections open) changes inside the drivers, and ``in_use`` and
``waiting`` change twice on every query, so each process publishes its pools every second while
its lifespan runs (``service.metrics``), and a scrape refreshes the scraping process's once more
(``publish_pools``). ``max`` is set once, when the pool opens.

With ``serve --workers N`` each worker is a process with its own numbers; prometheus-client's
multiprocess mode makes every scrape answer for all of them (``service.metrics``). The library reads
``PROMETHEUS_MULTIPROC_DIR`` from the environment itself, when it is first imported (its contract,
and the one exception to "only shared.config reads os.environ").
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from shared.dbfailures import PoolNames

if TYPE_CHECKING:  # shared.sides imports shared.pools, which imports this module
    from shared.sides import Pool

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Read when prometheus-client is, so this agrees with the library on whether values live in files.
MULTIPROCESS_DIR = os.environ.get(MULTIPROCESS_DIR_VARIABLE)

# The contract (docs/http.md) names the series; the `_created` companions of counters and histograms are not among them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves these untyped
# Our series only: the default registry would add the process and GC collectors.
REGISTRY = CollectorRegistry()

# Across workers every pool gauge is summed over the live processes ("summed across workers",
# the contract): connections open, held and queued add up, and so do the ceilings, since each worker has
# its own pool. A worker that died leaves the sum (``service.metrics``).
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
# The event feed (writes.events appends, reads.events serves).
EVENTS_APPENDED = Counter(
    "events_appended", "Events appended by committed commands, by type", ["type"], registry=REGISTRY
)
EVENTS_POSITION_ROUNDS = Counter(
    "events_position_rounds",
    "Rounds that positioned committed events (a writes process runs one after each command that"
    " appended, shared by the commands committing meanwhile, and one a second), by result (ok, failed)",
    ["result"],
    registry=REGISTRY,
)
EVENTS_WAITING = Gauge(
    "events_waiting",
    "Feed clients waiting for an event: mode=long-poll (GET with wait) or stream (Server-Sent Events)",
    ["mode"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
EVENTS_OLDEST_AGE_SECONDS = Gauge(
    "events_oldest_age_seconds",
    "Age of the oldest event the feed keeps (EVENTS_RETENTION bounds it, give or take a purge period)",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
HTTP_REQUESTS = Counter("http_requests", "HTTP requests answered", ["method", "route", "status"], registry=REGISTRY)
HTTP_REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "From the request's arrival to the last byte of its response",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


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


def publish_pools(pools: Iterable[Pool]) -> None:
    """Each pool's connections open and its gate's held and queued places, as they are now."""
    for pool in pools:
        POOL_SIZE.labels(pool.names.label).set(pool.size())
        pool.gate.publish()

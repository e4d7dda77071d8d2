"""What every scenario shares: the run's context and the measurements it reports."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# In the order they run: the reads and the stats first, on the seeded orders; the stats then grow the
# table to Sizes.more_orders, and the scenarios after them write into a table of that size. The
# events scenario comes last: the backlog it drains adds a million events to the feed.
SCENARIOS = ("query-layer", "http-reads", "stats", "writes", "write-floor", "isolation", "replicas", "bulk", "events")


@dataclass(frozen=True)
class Sizes:
    """How much data and how long to load each contender."""

    customers: int
    products: int
    orders: int
    more_orders: int  # the stats scenario's second size
    seconds: float  # one load run of one contender
    rounds: int  # contenders alternate this many times; their samples are pooled
    calls: int  # in-process calls of one query-layer contender per round
    bulk_orders: int


FULL = Sizes(
    customers=10_000,
    products=1_000,
    orders=100_000,
    more_orders=1_000_000,
    seconds=5.0,
    rounds=2,
    calls=2_000,
    bulk_orders=50_000,
)
SMOKE = Sizes(
    customers=200, products=50, orders=2_000, more_orders=4_000, seconds=1.0, rounds=1, calls=50, bulk_orders=200
)


@dataclass(frozen=True)
class Context:
    """One benchmark run: the seeded database and where results go."""

    database_url: str  # postgresql://... of the seeded database
    sizes: Sizes
    out: Path  # bench/results/ or a smoke's scratch directory
    workers: int  # "as many workers as cores"
    write_token: str
    scratch: Path = Path(tempfile.gettempdir())  # server logs and profiles that are not part of the report


@dataclass(frozen=True)
class Measurement:
    """One contender under one case: throughput and latency, as measured by the load generator."""

    scenario: str  # e.g. "http-reads"
    case: str  # e.g. "GET /v1/orders/{id} · 1 worker"
    contender: str  # e.g. "service", "twin", "floor", "ceiling"
    rate: float  # requests (or calls) per second
    p50_ms: float
    p99_ms: float
    count: int  # requests or calls measured
    errors: int = 0  # transport errors and unexpected statuses
    extra: dict[str, float] = field(default_factory=dict)

    def produced_numbers(self) -> bool:
        return self.count > 0 and self.rate > 0 and self.p50_ms > 0 and self.p99_ms >= self.p50_ms


def quantile_ms(sorted_seconds: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of sorted latencies in seconds, in milliseconds; 0 for none."""
    if not sorted_seconds:
        return 0.0
    rank = max(math.ceil(q * len(sorted_seconds)) - 1, 0)
    return sorted_seconds[rank] * 1000

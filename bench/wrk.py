"""Load from wrk (the Debian package), closed loop: reads of random ids, and the commands that the
write floor is measured by (place order, pay)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.core import Measurement

SCRIPT = Path(__file__).with_name("wrk.lua")
COMMANDS_SCRIPT = Path(__file__).with_name("wrk_commands.lua")
SUMMARY_SCRIPT = Path(__file__).with_name("wrk_summary.lua")
THREADS = 2
CONNECTIONS = 64


@dataclass(frozen=True)
class WrkResult:
    requests: int  # answered with a status below 400
    seconds: float
    p50_ms: float  # over every answer, refusals included
    p99_ms: float
    errors: int  # socket errors, timeouts and answers >= 400 (a 503 refusal among them)


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    return found


def wrk(url: str, path: str, max_id: int, seconds: float, connections: int = CONNECTIONS, token: str = "") -> WrkResult:
    """``connections`` clients GET ``url + path`` (``{id}`` → random 1..max_id) for ``seconds``."""
    env = {"BENCH_PATH": path, "BENCH_MAX_ID": str(max_id), "BENCH_TOKEN": token}
    return run_wrk(SCRIPT, url, seconds, connections, env)


@dataclass(frozen=True)
class CommandLoad:
    """What ``wrk_commands.lua`` sends: orders to place, or the orders listed in a file to pay."""

    command: str  # "place" or "pay"
    token: str
    keyed: bool  # a new Idempotency-Key with every request
    customers: int = 1  # place: random customers 1..customers and products 1..products
    products: int = 1
    ids: Path | None = None  # pay: the file of order ids, one a line, each paid once
    prefix: str = ""  # before both paths: the write floor serves its outbox variant under /outbox

    def environment(self, threads: int) -> dict[str, str]:
        return {
            "BENCH_COMMAND": self.command,
            "BENCH_TOKEN": self.token,
            "BENCH_KEYED": "1" if self.keyed else "0",
            # Every run its own keys and its own draw of customers and products.
            "BENCH_RUN": uuid.uuid4().hex,
            "BENCH_SEED": str(random.randrange(2**31)),
            "BENCH_CUSTOMERS": str(self.customers),
            "BENCH_PRODUCTS": str(self.products),
            "BENCH_IDS": str(self.ids or ""),
            "BENCH_THREADS": str(threads),
            "BENCH_PREFIX": self.prefix,
        }


def wrk_commands(url: str, load: CommandLoad, seconds: float, connections: int) -> WrkResult:
    """``connections`` clients send ``load``'s command for ``seconds``; answers >= 400 are errors."""
    return run_wrk(COMMANDS_SCRIPT, url, seconds, connections, load.environment(min(THREADS, connections)))


def run_wrk(script: Path, url: str, seconds: float, connections: int, settings: dict[str, str]) -> WrkResult:
    command = [require_wrk(), "-t", str(min(THREADS, connections)), "-c", str(connections),
               "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script), url]  # fmt: skip
    env = {**os.environ, "BENCH_SUMMARY": str(SUMMARY_SCRIPT), **settings}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 30, check=True)
    line = next((line for line in finished.stdout.splitlines() if line.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{finished.stdout}\n{finished.stderr}")
    summary = json.loads(line.removeprefix("BENCH "))
    errors = sum(summary[kind] for kind in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=summary["requests"] - summary["status"],
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        errors=errors,
    )


def pooled(scenario: str, case: str, contender: str, results: list[WrkResult]) -> Measurement:
    """Rounds pooled: requests over seconds, the median round's p50 and the worst round's p99."""
    requests, seconds = sum(r.requests for r in results), sum(r.seconds for r in results)
    p50s = sorted(r.p50_ms for r in results)
    return Measurement(
        scenario=scenario,
        case=case,
        contender=contender,
        rate=requests / seconds if seconds else 0.0,
        p50_ms=p50s[len(p50s) // 2],
        p99_ms=max(r.p99_ms for r in results),
        count=requests,
        errors=sum(r.errors for r in results),
    )

"""Where a server's CPU goes, from py-spy: a sampling profile of a running process, summed by the
package a sample is in (its innermost frame) and by function, for the report to quote."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PROJECT = f"{Path(__file__).resolve().parents[1]}/"

# Innermost-frame file paths → the package the report names; the first match wins.
SAMPLES_PER_SECOND = 100  # py-spy's default rate

PACKAGES = (
    ("sqlalchemy", "sqlalchemy"),
    ("asyncpg", "asyncpg"),
    ("starlette", "starlette"),
    ("uvicorn", "uvicorn"),
    ("httptools", "uvicorn"),
    ("msgspec", "msgspec"),
    ("prometheus_client", "prometheus-client"),
    ("asyncio/runners.py", "event loop in C (uvloop, httptools)"),
    ("asyncio", "asyncio"),
    ("/writes/", "orders-api writes"),
    ("/reads/", "orders-api reads"),
    ("/shared/", "orders-api shared"),
)


@dataclass(frozen=True)
class Profile:
    samples: int
    packages: list[tuple[str, float]]  # (package, share of busy samples spent in it), largest first
    inclusive: list[tuple[str, float]]  # (package, share of busy samples with it anywhere on the stack)
    functions: list[tuple[str, float]]  # innermost functions, largest first
    busy: float  # samples over what a fully busy process would give (py-spy samples 100 times a second)
    error: str = ""  # why there is no profile (py-spy needs ptrace, which a container may deny)


def require_py_spy() -> str:
    found = shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
    return found


def record(pid: int, seconds: float, out: Path) -> Profile:
    """Sample ``pid`` (and its children: uvicorn's workers) for ``seconds``; keep the raw stacks in ``out``."""
    command = [require_py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
               "--format", "raw", "--output", str(out),
               "--subprocesses", "--nonblocking", "--full-filenames"]  # fmt: skip
    sampled = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if sampled.returncode != 0 or not out.exists():
        return Profile(0, [], [], [], 0.0, error=f"py-spy failed: {(sampled.stderr or sampled.stdout).strip()[-300:]}")
    return summarize(out.read_text(), seconds)


def summarize(collapsed: str, seconds: float, top: int = 12) -> Profile:
    """Without ``--idle`` py-spy leaves out samples of a thread asleep (the loop in epoll_wait), so
    every sample is CPU work; an innermost ``Runner.run`` is uvloop's C code (parsing, socket I/O)."""
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frame = stack.split(";")[-1]
        total += count
        packages[package_of(frame)] += count
        for name in {package_of(outer) for outer in stack.split(";")}:
            inclusive[name] += count
        functions[frame] += count
    busy = max(1, total)
    return Profile(
        samples=total,
        packages=[(name, count / busy) for name, count in packages.most_common()],
        inclusive=[(name, count / busy) for name, count in inclusive.most_common()],
        functions=[(short(name), count / busy) for name, count in functions.most_common(top)],
        busy=total / (seconds * SAMPLES_PER_SECOND),
    )


def package_of(frame: str) -> str:
    for needle, name in PACKAGES:
        if needle in frame:
            return name
    return "other (Python, C extensions)"


def short(frame: str) -> str:
    """``name (/long/path/site-packages/pkg/mod.py:12)`` → ``name (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    for marker in ("site-packages/", PROJECT, "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where}"

"""The processes a scenario measures: the service (``orders-api serve``) and the contenders
(uvicorn factories in ``bench.contenders``), each on 127.0.0.1 and a free port, stopped by pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.core import Context
from testkit.processes import free_port, stop

# What the service runs with in every scenario, besides its defaults; the report prints the
# whole effective configuration. The access log is off for every contender alike, and the queries
# open as the contenders' are (so the numbers compare the same work, without a token check).
SERVICE_SETTINGS = {"ACCESS_LOG": "off", "READ_API_OPEN": "true"}
READY_WITHIN = 60.0


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path  # its stdout and stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User and system CPU the process has used so far: with one worker, the server's whole
        work, its threads included."""
        return process_cpu_seconds(self.pid)


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU process ``pid`` has used so far (``/proc/<pid>/stat``)."""
    # The fields after the command's closing parenthesis start at the third, the state; utime and
    # stime are the 14th and 15th.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_command(port: int, workers: int, role: str = "all", module: str = "service") -> list[str]:
    serve = ["-m", module, "serve", "--role", role]
    return [sys.executable, *serve, *where(port, workers)]


def contender_command(factory: str, port: int, workers: int) -> list[str]:
    uvicorn = ["-m", "uvicorn", "--factory", factory, "--no-access-log", "--log-level", "warning"]
    return [sys.executable, *uvicorn, *where(port, workers)]


def where(port: int, workers: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


def environment(ctx: Context, **settings: str) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(("WRITE_", "READ_"))}
    return {
        **inherited,
        "DATABASE_URL": ctx.database_url,
        "WRITE_API_TOKENS": ctx.write_token,
        **SERVICE_SETTINGS,
        **settings,
    }


@contextmanager
def running(name: str, command: Sequence[str], env: dict[str, str], log: Path, ready_path: str) -> Iterator[Server]:
    """``command`` as a child in its own process group; yields once ``ready_path`` answers below 500."""
    log.parent.mkdir(parents=True, exist_ok=True)
    port = int(command[command.index("--port") + 1])
    with log.open("ab") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(server, ready_path, log)
        yield server
    finally:
        stop(process)


def wait_ready(server: Server, path: str, log: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited while starting:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not answer {path} within {READY_WITHIN} s:\n{log.read_text()[-3000:]}")


@contextmanager
def serve_service(
    ctx: Context, workers: int, role: str = "all", *, module: str = "service", name: str | None = None, **settings: str
) -> Iterator[Server]:
    """The service as an operator runs it, with ``SERVICE_SETTINGS`` and ``settings`` over its defaults.
    ``module`` is what ``python -m`` runs: the service, or a contender that changes one thing in it."""
    name = name or ("service" if role == "all" else f"service ({role})")
    ready = "/readyz"
    command = service_command(free_port(), workers, role, module)
    with running(name, command, environment(ctx, **settings), ctx.scratch / f"{name}.log", ready) as server:
        yield server


@contextmanager
def serve_contender(ctx: Context, name: str, factory: str, workers: int) -> Iterator[Server]:
    """A contender from ``bench.contenders`` under uvicorn, with the same workers as the service."""
    command = contender_command(factory, free_port(), workers)
    with running(name, command, environment(ctx), ctx.scratch / f"{name}.log", "/v1/products/1") as server:
        yield server

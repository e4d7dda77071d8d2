"""`orders-api serve` in child processes, as an operator runs it: on 127.0.0.1, a free port, the
test database, stopped with SIGTERM (then SIGKILL to its process group if it hangs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from testkit.processes import free_port, stop
from tests.support import WRITE_TOKEN

# The service's own variables: a child gets only those a test gives it.
OWN_VARIABLES = ("DATABASE_URL", "WRITE_", "READ_", "ORDERS_API_", "SHUTDOWN_", "PROMETHEUS_", "ACCESS_LOG", "SLOW_")


def own_env(**settings: str) -> dict[str, str]:
    """This environment without the service's own variables, then ``settings``."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(OWN_VARIABLES)}
    return {**inherited, **settings}


def serve_env(database_url: str, **settings: str) -> dict[str, str]:
    """``own_env`` with the test database and the tests' write token; queries open unless
    ``settings`` give READ_API_TOKENS."""
    opened = {} if "READ_API_TOKENS" in settings else {"READ_API_OPEN": "true"}
    return own_env(DATABASE_URL=database_url, WRITE_API_TOKENS=WRITE_TOKEN, **opened, **settings)


@contextmanager
def serving_process(*args: str, env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``orders-api serve *args`` in a child process on 127.0.0.1; yields it and its base URL."""
    with serving_command([sys.executable, "-m", "service", "serve", *args], env=env, log=log) as served:
        yield served


@contextmanager
def serving_command(
    command: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``command --host 127.0.0.1 --port <a free port>`` in a child process run from ``cwd``, where
    ``command`` serves the way something else spells it (the image's CMD, say); yields it and its base URL."""
    port = free_port()
    with log.open("ab") as output:
        # Its own process group, so a hung supervisor can be killed together with its workers.
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def wait_until(
    condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, within: float = 30.0
) -> None:
    """Poll ``condition`` (a refused connection counts as not yet) while ``process`` lives."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"not so within {within} s:\n{log.read_text()}")


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, within: float = 30.0) -> None:
    wait_until(lambda: httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200, process, log, within)

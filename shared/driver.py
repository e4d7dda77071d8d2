"""What every connection to PostgreSQL does when the database stops answering.

A database that refuses (stopped, restarting, out of connection slots) is a 503 at once, and one
that runs a statement too long is stopped by its own ``statement_timeout``. A database that stops
answering altogether (a paused VM, a stalled disk, a network black hole: the TCP connection stays
open, nothing comes back) would otherwise be waited on for as long as it is silent: every request
in flight, the readiness probe, and the pools' close at shutdown.

So each connection bounds every wait on the database (asyncpg's ``command_timeout``) at the
statement timeout and ``ANSWER_MARGIN`` more, a bound the server's own timeout beats whenever the
server still answers. And a connection gives up on a statement it stops waiting for (that bound,
or its caller cancelled: a readiness probe's bound, a shutdown) by closing itself (``Connection``),
so nothing else waits on it either; its close waits for the server ``HANG_UP_WITHIN`` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

# Seconds a connection waits for the database past the statement timeout: the server's own
# cancellation, when it still answers, arrives well within it.
ANSWER_MARGIN = 1.0
# Seconds a closing connection waits for the server to hang up (at once, when it answers at all).
HANG_UP_WITHIN = 0.25


def answer_within(statement_timeout_ms: int) -> float | None:
    """How long a connection waits for any answer of the database; None (no bound) when statements
    have no timeout either (a statement timeout of 0)."""
    return None if statement_timeout_ms == 0 else statement_timeout_ms / 1000 + ANSWER_MARGIN


class Connection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg's connection, closed when it gives up on a statement.

    asyncpg gives up on a statement by sending a CancelRequest on a connection of its own and then
    waits for the server to acknowledge it before this connection may be used, released, rolled back
    or closed. A server that has stopped answering never does: the pool's release, SQLAlchemy's
    rollback and the pool's close all waited on it. Closing the connection instead ends every wait
    at once; the pool opens another for the next request (asyncpg's cancel opens one too). On a
    server that does answer, the statement given up then runs on until PostgreSQL notices its
    client gone or its ``statement_timeout`` ends it, where a CancelRequest would have stopped it at
    once: bounded, and only for statements given up (past the bound, or cancelled by a readiness
    probe's bound or a shutdown)."""

    def _cancel_current_command(self, waiter: asyncio.Future[None], cancel_waiter: Any = None) -> None:
        # The protocol still writes to its transport after this returns: cut on the loop's next turn.
        # Closing completes both waiters (the connection is lost, so there is nothing to cancel).
        self._loop.call_soon(self.terminate)

    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 - asyncpg's signature
        """Close gracefully, waiting ``HANG_UP_WITHIN`` seconds at most for the server to end the
        session (asyncpg's default is the command timeout: a pool closing its connections one by one
        at shutdown waited that long for each). Past it asyncpg cuts the connection: closed either way."""
        with contextlib.suppress(TimeoutError):
            await super().close(timeout=HANG_UP_WITHIN if timeout is None else timeout)


def bounded(statement_timeout_ms: int) -> dict[str, Any]:
    """``asyncpg.connect``'s (and ``create_pool``'s) arguments for a connection whose statements run
    under ``statement_timeout_ms``: every wait on the database bounded, and given up by closing."""
    return {"connection_class": Connection, "command_timeout": answer_within(statement_timeout_ms)}

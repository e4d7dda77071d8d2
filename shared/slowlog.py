"""The per-pool slow-statement log: the pools (and the event positioner) feed it from their drivers'
own timing hooks."""

from __future__ import annotations

import logging
from typing import Any

slow = logging.getLogger("orders_api.database.slow")

LONGEST_STATEMENT = 1000  # characters of a slow statement's text kept in its line


class SlowStatements:
    """Logs a pool's statements that ran longer than ``SLOW_STATEMENT_MS``: the pool, the time and the
    statement's text, never its parameters (they may hold personal data). Each pool feeds it from its
    driver's own timing hook (``writes.db``, ``reads.db``)."""

    def __init__(self, pool: str, threshold_ms: int) -> None:
        self.pool = pool
        self.threshold_ms = threshold_ms
        self.threshold = threshold_ms / 1000

    def observe_query(self, query: Any) -> None:
        """An asyncpg query logger (``Connection.add_query_logger``): asyncpg times each query on the
        connection (``LoggedQuery.elapsed``, failures included) and calls this soon after it ends."""
        self.observe(query.query, query.elapsed)

    def observe(self, statement: str, elapsed: float) -> None:
        if elapsed > self.threshold:
            slow.warning(
                "%s: statement took %.0f ms (SLOW_STATEMENT_MS=%d): %s",
                self.pool,
                elapsed * 1000,
                self.threshold_ms,
                _one_line(statement),
            )


def _one_line(statement: str) -> str:
    # The queries are laid out over many lines in the source; a log line is one line.
    text = " ".join(statement.split())
    return text if len(text) <= LONGEST_STATEMENT else text[:LONGEST_STATEMENT] + "..."

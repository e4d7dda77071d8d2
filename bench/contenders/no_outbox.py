"""The service with its outbox taken out: ``orders-api serve`` with ``writes.events.append`` doing
nothing, so no command appends an event. Only the events scenario runs it, beside the service as
shipped, taking turns, to measure what appending costs a command where it is paid: in the service.

    python -m bench.contenders.no_outbox serve --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

import writes.events
from service.cli import main
from writes.events import NewEvent


async def append_nothing(session: AsyncSession, events: Sequence[NewEvent]) -> None:
    """``writes.events.append``'s signature, and nothing done."""


if __name__ == "__main__":
    # Every caller looks append up on the module when it calls (``events.append(...)``).
    writes.events.append = append_nothing
    main()

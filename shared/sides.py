"""The two sides as the composition root sees them, and the resources a request reaches.

Each side (``writes``, ``reads``) exports one ``Side``: its routes and how to open its pool. The app
serves the sides it is given; the lifespan opens their pools into one typed ``Resources``, which a
request reaches through ``resources(request)``: no untyped ``request.state`` lookups.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from starlette.requests import Request
from starlette.routing import BaseRoute

from shared.config import Settings
from shared.dbfailures import PoolNames

if TYPE_CHECKING:
    from shared.pools import Gate

SideName = Literal["writes", "reads"]

# The migration revision a database is at, as both pools read it for readiness (and the read side
# for its replicas): one round trip, plain SQL, so neither side needs Alembic to ask.
CURRENT_REVISION_SQL = "SELECT version_num FROM alembic_version"


class Pool(Protocol):
    """The shape both pools share: opened from settings (``Side.open_pool``), closed, probed,
    counted. Their bounded acquire is ``shared.pools.Gate``, which also counts how many
    connections are held and awaited; ``size`` is the number only the driver knows."""

    names: PoolNames  # how messages name the pool and its settings
    timeout: float  # the longest a request waits for a connection
    gate: Gate  # its bounded acquire, which counts the places held and awaited

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """One round trip on one of the pool's connections, waiting its turn (never shed)."""

    async def schema_revision(self) -> str | None:
        """The migration revision, read through this pool (None when never migrated)."""

    def size(self) -> int:
        """Connections open now."""


@runtime_checkable
class Degradable(Protocol):
    """A pool that can serve at reduced capacity while it answers (the read side with replicas)."""

    def degraded(self) -> list[str]:
        """What serves less than it could, in words for /readyz: empty when nothing."""


@dataclass(frozen=True)
class Side:
    """``open_pool(settings, schema_head)``: ``schema_head`` is the migration revision this process
    expects, which the read side holds its replicas to; the write side has no use for it."""

    name: SideName
    routes: Sequence[BaseRoute]
    open_pool: Callable[[Settings, str], Awaitable[Pool]]


@dataclass(frozen=True)
class Resources:
    """What the lifespan opened, for the requests of this process. ``draining`` is set once the
    server has begun a graceful shutdown (``service.server``): what would wait for more, a long-poll
    or an event stream, answers what it has at once instead of holding the exit up."""

    settings: Settings
    pools: Mapping[SideName, Pool]
    schema_head: str
    draining: asyncio.Event = field(default_factory=asyncio.Event)


STATE_KEY = "resources"  # where the lifespan's state (scope["state"], request.state) holds them


def resources_in(state: Mapping[str, object]) -> Resources | None:
    """The ``Resources`` in a lifespan state (a scope's, or the server's ``app_state``), if any:
    for what runs outside a request's endpoint (a middleware, the HTTP protocol)."""
    found = state.get(STATE_KEY)
    return found if isinstance(found, Resources) else None


def resources(request: Request) -> Resources:
    # Read from the scope's state, not through ``request.state``: that builds a ``State`` wrapper
    # for each request and looks the key up through its ``__getattr__``, on every query twice.
    found = request.scope.get("state", {}).get(STATE_KEY)  # resources_in, inline: every query asks twice
    assert isinstance(found, Resources), "the app's lifespan is not running"
    return found

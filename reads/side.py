"""The query side as the shell plugs it in: its routes, and its pool (one ``ReadPool``, or the
primary's with its replicas, ``reads.balancing``), which keeps the answer cache."""

from __future__ import annotations

from reads import events, routes
from reads.balancing import open_read_side
from shared.sides import Side

SIDE = Side(name="reads", routes=[*routes.ROUTES, *events.ROUTES], open_pool=open_read_side)

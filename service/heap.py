"""The serving process's start-up heap, set aside from the garbage collector.

CPython's cyclic collector scans every object of the generations it collects. A serving process
has about 90 000 of them once it has imported its modules and built its app (SQLAlchemy,
Starlette, msgspec's types, the routes, the OpenAPI document), and none of them ever becomes
garbage. Yet a full collection runs (at every tenth collection of the middle generation) once the
objects promoted to the oldest generation since the last one pass a quarter of it, and commands
promote many: what a command holds across its awaits outlives the young collections meanwhile.
Under write load a full collection ran about every 1.2 s, and each stopped the event loop for
about 50 ms (25 ms on an idle machine) and collected nothing. Every request then in flight waited:
on one worker under 200 writers, a read's p99 was those 50 ms (the README's issue 20, round 9).

``gc.freeze()`` moves what exists now to a generation no collection scans; the collector still
finds cycles among the objects made after it. What is frozen lives as long as the process, with
one exception that costs little: an object built at start-up and dropped later (a pooled
connection closed and replaced) is never collected if it is part of a cycle. That is a few
kilobytes, once: only what existed at start-up is frozen, not what replaces it. Every request's
objects are made later and collected as before.
"""

from __future__ import annotations

import gc

from sqlalchemy.orm import configure_mappers


def freeze_startup_heap() -> None:
    """Collect what start-up left as garbage, then freeze the rest: call once, when the pools are
    open and before the first request."""
    # SQLAlchemy configures its mappers at the first command otherwise, after the freeze.
    configure_mappers()
    gc.collect()
    gc.freeze()

"""Query-string parameters as Structs: the bounds live in the types, so decoding is validating.

Every violation (an unknown or repeated parameter, a value of the wrong type or out of bounds) is a
422 naming the parameter, like a command body's schema violation. Only an unreadable ``cursor``
is a 400 (see ``reads.cursor``). Unknown parameters are refused rather than ignored so that a typo
such as ``?stauts=paid`` is an error instead of a silently unfiltered list.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, TypeVar

import msgspec
import msgspec.inspect
from msgspec import Meta
from starlette.requests import Request

from shared.dto import Id, Instant, OrderStatus, require_storable
from shared.errors import InvalidInput

P = TypeVar("P", bound=msgspec.Struct)

Limit = Annotated[int, Meta(ge=1, le=100)]
Days = Annotated[int, Meta(ge=1, le=366)]
# PostgreSQL text cannot hold NUL, so it is refused here rather than failing in the driver.
SearchText = Annotated[str, Meta(max_length=200, pattern=r"^[^\x00]*$")]


class Params(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every query-string Struct."""


class ProductSearch(Params):
    q: SearchText | None = None
    limit: Limit = 20
    cursor: str | None = None


class OrderFilters(Params):
    """``created_after`` is inclusive and ``created_before`` exclusive, so ranges tile without overlap."""

    customer_id: Id | None = None
    status: OrderStatus | None = None
    created_after: Instant | None = None
    created_before: Instant | None = None

    def __post_init__(self) -> None:
        require_storable(self.created_after, "created_after")
        require_storable(self.created_before, "created_before")

    def values(self) -> tuple[object, ...]:
        """The filters as the queries' $1..$4; a list cursor is sealed to them as well (the limit
        may change from page to page, the filters may not)."""
        return (self.customer_id, self.status, self.created_after, self.created_before)


class OrderListing(OrderFilters):
    limit: Limit = 20
    cursor: str | None = None


class RevenueWindow(Params):
    days: Days = 30


class TopProductsWindow(Params):
    days: Days = 30
    limit: Limit = 10


# An integer is written the one way JSON writes it: digits, an optional minus, no leading zero, and
# no more digits than an int8 holds. "1e2", "0010", "+5" or "5.0" stay text, and so are a 422.
CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]{0,18})")


def query_params(request: Request, params: type[P]) -> P:
    """Decode the query string into ``params``; 422 naming the parameter on any violation.

    Strict: only the integer fields take a (canonical) number, and timestamps must be RFC 3339
    strings, never a number of seconds."""
    raw: dict[str, object] = {}
    numeric = integer_fields(params)
    for name, value in request.query_params.multi_items():
        if name in raw:
            raise InvalidInput(f"query parameter `{name}` is given more than once")
        if name in numeric:
            if not CANONICAL_INT.fullmatch(value):
                # msgspec would say "Expected `int`, got `str`" of "1.5" as of "abc".
                raise InvalidInput(
                    f"query parameter `{name}` must be an integer (digits, an optional `-`, no leading zero,"
                    f" at most 19 digits), got {value!r} - at `$.{name}`"
                )
            raw[name] = int(value)
        else:
            raw[name] = value
    try:
        return msgspec.convert(raw, params, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidInput(str(exc)) from None


@functools.cache
def integer_fields(params: type[msgspec.Struct]) -> frozenset[str]:
    """The names of the fields of ``params`` that hold an integer (optional or not)."""
    info = msgspec.inspect.type_info(params)
    assert isinstance(info, msgspec.inspect.StructType)

    def holds_int(kind: msgspec.inspect.Type) -> bool:
        if isinstance(kind, msgspec.inspect.UnionType):
            return any(holds_int(member) for member in kind.types)
        return isinstance(kind, msgspec.inspect.IntType)

    return frozenset(f.encode_name for f in info.fields if holds_int(f.type))


EventLimit = Annotated[int, Meta(ge=1, le=1000)]
EventWait = Annotated[int, Meta(ge=0, le=30)]
# Comma-separated event types, each checked against EventType (reads.events).
EventTypes = Annotated[str, Meta(min_length=1, max_length=1000, pattern=r"^[a-z._,]+$")]


class EventQuery(Params):
    """``after`` is an event's id (or a page's ``next_cursor``); absent, the feed starts at the
    oldest event kept. ``wait`` seconds a page with nothing new waits for an event."""

    after: str | None = None
    limit: EventLimit = 100
    types: EventTypes | None = None
    wait: EventWait = 0

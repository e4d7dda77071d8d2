"""Query-string parameters as Structs: the bounds live in the types, so decoding is validating.

Every violation (an unknown or repeated parameter, a value of the wrong type or out of bounds) is a
422 naming the parameter, like a command body's schema violation. Only an unreadable ``cursor``
is a 400 (see ``reads.cursor``). Unknown parameters are refused rather than ignored so that a typo
such as ``?stauts=paid`` is an error instead of a silently unfiltered list.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta
from starlette.requests import Request

from shared.dto import Id, Instant, OrderStatus, require_utc_representable
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
        require_utc_representable(self.created_after, "created_after")
        require_utc_representable(self.created_before, "created_before")

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


def query_params(request: Request, params: type[P]) -> P:
    """Decode the query string into ``params``; 422 naming the parameter on any violation."""
    raw: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in raw:
            raise InvalidInput(f"query parameter `{name}` is given more than once")
        raw[name] = value
    try:
        return msgspec.convert(raw, params, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidInput(str(exc)) from None

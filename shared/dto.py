"""The msgspec Structs that cross the wire: command bodies, and the views both sides return.

Constraints live in the types, so decoding a body is validating it. Command bodies forbid unknown
fields: a client that tries to set ``id``, ``status`` or ``version`` gets a 422, not a silent drop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

# Bounds keep every value inside PostgreSQL's bigint, even summed over 100 lines of 1 000 units,
# so the database never sees an overflow a client could trigger.
Id = Annotated[int, Meta(ge=1, le=2**63 - 1)]
Cents = Annotated[int, Meta(ge=0, le=100_000_000_000)]
StockLevel = Annotated[int, Meta(ge=0, le=1_000_000_000)]
RestockQuantity = Annotated[int, Meta(ge=1, le=1_000_000_000)]
# The most a restock brings a product's stock to (a 409 past it): restocks of valid sizes add up
# without end, and a bigint would overflow. Cancels return what orders took, which may lift stock
# above it by what is out in orders: bigint's 9.2 * 10**18 stays 9 000 times as far.
MAX_STOCK = 10**15
LineQuantity = Annotated[int, Meta(ge=1, le=1000)]
# PostgreSQL text cannot hold NUL (\x00), so no string that reaches it may contain one. The lengths
# are checked before the patterns, which bounds the patterns' work.
# (?!\n) before $: Python's $ also matches before a final newline, which neither field may end in.
# Emails are ASCII (RFC 5321; an internationalized domain is written in its xn-- form): printable,
# no space, one @. Their case is then ASCII's alone, so lower-casing is one well-defined rule that
# Python and PostgreSQL (the email = lower(email) check) agree on, and no Unicode look-alike (the
# Kelvin sign K, a dotted I) can fold into another address or slip past uniqueness.
Email = Annotated[str, Meta(min_length=3, max_length=254, pattern=r"^[!-?A-~]+@[!-?A-~]+\.[!-?A-~]+(?!\n)$")]
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^\s*[^\s\x00][^\x00]*$")]
Sku = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*(?!\n)$")]
OrderStatus = Literal["pending", "paid", "shipped", "cancelled"]
# RFC 3339 requires an offset; a timestamp without one names no instant, so it is refused.
Instant = Annotated[datetime, Meta(tz=True)]


# The instants the service accepts, imported or filtered: years 1..9999 in UTC less a day at each
# end. asyncpg sends the first and last microsecond of that range as -infinity and infinity, which
# would never read back as what was sent; the day of margin also keeps every accepted instant
# writable at any UTC offset (RFC 3339 allows up to +-23:59).
EARLIEST_INSTANT = datetime(1, 1, 2, tzinfo=UTC)
LATEST_INSTANT = datetime(9999, 12, 30, 23, 59, 59, 999_999, tzinfo=UTC)


def require_storable(value: datetime | None, field: str) -> None:
    """Refuse an instant outside [EARLIEST_INSTANT, LATEST_INSTANT]. Call from ``__post_init__``."""
    if value is None:
        return
    try:
        in_range = EARLIEST_INSTANT <= value.astimezone(UTC) <= LATEST_INSTANT
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        in_range = False
    if not in_range:
        raise ValueError(f"`{field}` must be an instant from 0001-01-02T00:00:00Z to 9999-12-30T23:59:59.999999Z")


def require_utc_representable(value: datetime, field: str) -> None:
    """Refuse an instant whose UTC time falls outside years 1..9999: the driver sends timestamps in
    UTC and could not encode it. (The wider range a list cursor may carry: see ``reads.queries``.)"""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"`{field}` must fall within the years 1 to 9999 in UTC") from None


T = TypeVar("T")


class Command(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every command body: unknown fields are a 422."""


# --- commands ---------------------------------------------------------------------------------


class CreateCustomer(Command):
    email: Email
    name: Name


class UpsertCustomers(Command):
    customers: Annotated[list[CreateCustomer], Meta(min_length=1, max_length=10_000)]


class CreateProduct(Command):
    sku: Sku
    name: Name
    price_cents: Cents
    stock: StockLevel


class Restock(Command):
    quantity: RestockQuantity


class Reprice(Command):
    price_cents: Cents


class OrderLine(Command):
    product_id: Id
    quantity: LineQuantity


class PlaceOrder(Command):
    customer_id: Id
    # JSON Schema cannot say "unique by product_id"; the description says it, and the handler refuses it.
    items: Annotated[
        list[OrderLine],
        Meta(min_length=1, max_length=100, description="A product on one line only: a repeated product_id is a 422."),
    ]


class ImportedLine(Command):
    product_id: Id
    quantity: LineQuantity
    unit_price_cents: Cents


class ImportedOrder(Command):
    """One NDJSON line of ``POST /v1/orders/import``."""

    customer_id: Id
    status: OrderStatus
    created_at: Instant
    items: Annotated[list[ImportedLine], Meta(min_length=1, max_length=100)]

    def __post_init__(self) -> None:
        require_storable(self.created_at, "created_at")


# --- views ------------------------------------------------------------------------------------


class CustomerView(msgspec.Struct, frozen=True):
    id: int
    email: str
    name: str
    created_at: datetime


class CustomerDetail(CustomerView, frozen=True):
    """``CustomerView`` and two aggregates over the customer's orders."""

    order_count: int
    lifetime_value_cents: int


class ProductView(msgspec.Struct, frozen=True):
    id: int
    sku: str
    name: str
    price_cents: int
    stock: int
    version: int
    created_at: datetime
    updated_at: datetime


class OrderCustomer(msgspec.Struct, frozen=True):
    id: int
    email: str
    name: str


class OrderItemView(msgspec.Struct, frozen=True):
    product_id: int
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int


class OrderView(msgspec.Struct, frozen=True):
    id: int
    customer: OrderCustomer
    status: OrderStatus
    items: list[OrderItemView]
    item_count: int
    total_cents: int
    version: int
    created_at: datetime
    updated_at: datetime


class OrderSummary(msgspec.Struct, frozen=True):
    id: int
    customer_id: int
    status: OrderStatus
    item_count: int
    total_cents: int
    created_at: datetime


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next_cursor: str | None


# The feed's events (``GET /v1/events``): one per resource a command changed.
EventType = Literal[
    "customer.created",
    "customer.updated",
    "product.created",
    "product.restocked",
    "product.repriced",
    "order.placed",
    "order.paid",
    "order.shipped",
    "order.cancelled",
    "order.imported",
]
SubjectType = Literal["customer", "product", "order"]


class EventSubject(msgspec.Struct, frozen=True):
    type: SubjectType
    id: int


# The subject's view after the change, as the query side returns it, kept as the command's answer
# was encoded (so it is passed on as it is, never decoded). The OpenAPI document names the views.
EventData = Annotated[
    msgspec.Raw,
    Meta(
        extra_json_schema={
            "anyOf": [{"$ref": f"#/components/schemas/{view}"} for view in ("CustomerView", "ProductView", "OrderView")]
        }
    ),
]


class Event(msgspec.Struct, frozen=True):
    id: str  # opaque: the cursor to resume after this event
    type: EventType
    occurred_at: datetime
    subject: EventSubject
    data: EventData


class EventPage(msgspec.Struct, frozen=True):
    items: list[Event]
    next_cursor: str  # always set: where to resume, past every event this page saw


class UpsertResult(msgspec.Struct, frozen=True):
    inserted: int
    updated: int


class ImportResult(msgspec.Struct, frozen=True):
    imported: int


class DailyRevenue(msgspec.Struct, frozen=True):
    day: str
    orders: int
    revenue_cents: int


class RevenueReport(msgspec.Struct, frozen=True):
    days: list[DailyRevenue]


class TopProduct(msgspec.Struct, frozen=True):
    product_id: int
    sku: str
    name: str
    units: int
    revenue_cents: int


class TopProductsReport(msgspec.Struct, frozen=True):
    products: list[TopProduct]


class Problem(msgspec.Struct, frozen=True):
    """RFC 9457 problem details, the body of every error."""

    type: str
    title: str
    status: int
    detail: str

"""SQLAlchemy 2 declarative models: the write side's unit of work and Alembic's target metadata.

Every relationship is ``lazy="raise"``: an attribute the handler did not eager-load is an error at
once, not a hidden query (which under asyncio would fail anyway, later and less clearly).

Every relationship but ``Order.items`` is also ``viewonly``: the flush never persists through it.
Every row names its parent by id, set before the flush, so such a relationship would add nothing to
a flush but its cost: a dependency processor, which reads the history of every object flushed of
its mapper and joins the flush's sort of what to insert first (three of them were 8 % of a place's
Python calls). ``Order.items`` stays the one the flush follows: it is what has an order inserted
before its items (their foreign key is checked at once), and what saves the items of an
``Order(items=[...])``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from uuid import UUID

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    Uuid,
    func,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names make migrations reviewable and downgrades exact.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ORDER_STATUSES = ("pending", "paid", "shipped", "cancelled")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Timestamp(TypeDecorator[datetime]):
    """``timestamptz`` read as an aware datetime, always. asyncpg reads ``infinity`` and
    ``-infinity`` as naive ``datetime.max`` and ``datetime.min``; no command stores them, but a
    row written by hand may hold them, and a view must still say ``...Z`` like the read side does."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else aware(value)


def aware(value: datetime) -> datetime:
    """A ``timestamptz`` asyncpg read, as ``Timestamp`` reads it: ``infinity`` and ``-infinity`` come
    back naive (``datetime.max``, ``datetime.min``), and are UTC like every other."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _now() -> Mapped[datetime]:
    return mapped_column(Timestamp, nullable=False, server_default=func.now())


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (
        # Stored lower-cased, so a plain unique constraint is case-insensitive uniqueness.
        CheckConstraint("email = lower(email)", name="email_lower"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    email: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now()


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("price_cents >= 0", name="price_cents_nonnegative"),
        CheckConstraint("stock >= 0", name="stock_nonnegative"),
        # Product search is a substring match (ILIKE '%q%'), which no btree serves; trigram GIN
        # indexes find the few rows holding a rare q instead of scanning every product.
        Index("ix_products_name_trgm", "name", postgresql_using="gin", postgresql_ops={"name": "gin_trgm_ops"}),
        Index("ix_products_sku_trgm", "sku", postgresql_using="gin", postgresql_ops={"sku": "gin_trgm_ops"}),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    sku: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    price_cents: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stock: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Every order that takes or returns its stock bumps it: int4 would run out (``0005``).
    version: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="1")
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint(f"status IN {ORDER_STATUSES!r}", name="status_known"),
        CheckConstraint("total_cents >= 0", name="total_cents_nonnegative"),
        CheckConstraint("item_count >= 1", name="item_count_positive"),
        # Newest-first lists scan these backwards: ORDER BY created_at DESC, id DESC.
        Index(None, "created_at", "id"),
        Index(None, "customer_id", "created_at", "id"),
        Index(None, "status", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("customers.id"), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    # Items never change after placement, so the totals are stored once instead of summed per read.
    item_count: Mapped[int] = mapped_column(Integer, nullable=False)
    total_cents: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Placed orders take their quantities from stock, imported ones do not: a cancel returns only
    # what the order took.
    took_stock: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true())
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    customer: Mapped[Customer] = relationship(lazy="raise", viewonly=True)
    # The one relationship a flush persists through: it orders an order's INSERT before its items'.
    items: Mapped[list[OrderItem]] = relationship(
        lazy="raise", order_by="OrderItem.line_no", cascade="all, delete-orphan"
    )


class OrderItem(Base):
    __tablename__ = "order_items"
    __table_args__ = (
        CheckConstraint("quantity >= 1", name="quantity_positive"),
        CheckConstraint("unit_price_cents >= 0", name="unit_price_cents_nonnegative"),
        Index(None, "product_id"),
    )

    order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True)
    # The line's position in the order as placed: items are shown in insertion order.
    line_no: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    product_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("products.id"), nullable=False)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False)
    unit_price_cents: Mapped[int] = mapped_column(BigInteger, nullable=False)

    order: Mapped[Order] = relationship(lazy="raise", viewonly=True)
    product: Mapped[Product] = relationship(lazy="raise", viewonly=True)


class IdempotencyKey(Base):
    """A command's first successful response, stored in the command's own transaction."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index(None, "expires_at"),)

    # sha256 of the bearer token: keys are scoped to the caller without storing the secret.
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    # sha256 over method, path and body: the same key with another request is a 422.
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    status_code: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    headers: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    body: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


# --- read models ------------------------------------------------------------------------------------
# Aggregates the query side reads instead of scanning orders, kept in step by the commands in their
# own transactions (``writes.readmodels``). Each holds sums only: every change is an atomic
# increment, so none has a CHECK that a partial sum stays non-negative (a stripe may go below zero
# when an order is paid on one connection and cancelled on another; the day's sum cannot).
# Money and units are numeric: valid orders added up without end pass any fixed width, and then
# every command adding to the row would fail, whoever sent it (``0005``). Order counts are bigint:
# a count never exceeds the number of orders, whose ids are bigint.


class SalesDaily(Base):
    """Paid and shipped orders and their revenue per UTC day of ``created_at``, in a few stripes
    per day: every paying command of a day adds to that day, and one row would serialize them."""

    __tablename__ = "sales_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    stripe: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    orders: Mapped[int] = mapped_column(BigInteger, nullable=False)
    revenue_cents: Mapped[Decimal] = mapped_column(Numeric, nullable=False)


class ProductSales(Base):
    """Units and revenue (at the captured prices) of paid and shipped orders per product per block
    of days: aligned runs of 1, 2, 4, ... 256 UTC days (``shared.salesblocks``), so a window is read
    from a few blocks, not every day of it. The key leads with the block, and the sums ride in the
    key's index (INCLUDE): the top products' read is an index-only scan of each block."""

    __tablename__ = "product_sales"
    __table_args__ = (
        PrimaryKeyConstraint("days", "first_day", "product_id", postgresql_include=["units", "revenue_cents"]),
    )

    days: Mapped[int] = mapped_column(SmallInteger)
    first_day: Mapped[date] = mapped_column(Date)
    product_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("products.id"))
    units: Mapped[Decimal] = mapped_column(Numeric, nullable=False)
    revenue_cents: Mapped[Decimal] = mapped_column(Numeric, nullable=False)


class ProductSalesVersion(Base):
    """Which commands ``product_sales`` holds, in a few stripes: each command that changes it
    replaces its stripe's token with a new random one, in the same transaction. Two snapshots that
    read the same tokens hold the same product sales (each stripe's tokens form a chain: a command
    waits for the stripe's last writer to commit), so an answer computed from them is still exact
    while they stay (``reads.queries.stats``)."""

    __tablename__ = "product_sales_versions"

    stripe: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    token: Mapped[UUID] = mapped_column(Uuid, nullable=False)


class CustomerTotals(Base):
    """A customer's orders of any status, and the lifetime value of the paid and shipped ones."""

    __tablename__ = "customer_totals"

    customer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("customers.id"), primary_key=True)
    order_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    lifetime_value_cents: Mapped[Decimal] = mapped_column(Numeric, nullable=False)


POSITIONED = text("position IS NOT NULL")  # the position indexes' predicate (migration 0009)


class Event(Base):
    """One event of the feed (``writes.events``): a command's change to one resource, with the
    resource's view after it. ``position`` is NULL until a positioning round gives it, after the
    command's commit (migration 0008's ``events_position``). The position indexes hold positioned
    events only (migration 0009): an insert writes no entry for its NULL position into them."""

    __tablename__ = "events"
    __table_args__ = (
        Index("uq_events_position", "position", unique=True, postgresql_where=POSITIONED),
        Index("ix_events_type_position", "type", "position", postgresql_where=POSITIONED),
        Index("ix_events_unpositioned", "id", postgresql_where=text("position IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    position: Mapped[int | None] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(Text, nullable=False)
    subject_type: Mapped[str] = mapped_column(Text, nullable=False)
    subject_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    occurred_at: Mapped[datetime] = _now()
    data: Mapped[object] = mapped_column(JSON, nullable=False)


class EventsHead(Base):
    """The last position given to an event (one row): its lock lets one positioning round run at a time."""

    __tablename__ = "events_head"
    __table_args__ = (CheckConstraint("one", name="one_row"),)

    one: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=true())
    last: Mapped[int] = mapped_column(BigInteger, nullable=False)


class EventsHorizon(Base):
    """The last position purged (one row): a cursor before it is a 410."""

    __tablename__ = "events_horizon"
    __table_args__ = (CheckConstraint("one", name="one_row"),)

    one: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=true())
    purged_through: Mapped[int] = mapped_column(BigInteger, nullable=False)

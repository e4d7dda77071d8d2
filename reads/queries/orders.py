"""Order by id, the newest-first order list, and the export's batches."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable

from reads.cursor import decode_cursor, page_of
from reads.db import Reader
from reads.params import OrderFilters, OrderListing
from reads.queries import instant
from shared.dto import Id, Instant, OrderSummary, OrderView, Page, require_utc_representable
from shared.errors import BadCursor

# Items come from the order_items primary key (order_id, line_no), in the order they were placed.
ORDER_BY_ID = f"""
    SELECT to_json(v)::text
    FROM (
        SELECT o.id,
               json_build_object('id', c.id, 'email', c.email, 'name', c.name) AS customer,
               o.status,
               (SELECT coalesce(json_agg(json_build_object(
                           'product_id', i.product_id, 'sku', p.sku, 'name', p.name,
                           'quantity', i.quantity, 'unit_price_cents', i.unit_price_cents,
                           'line_total_cents', i.quantity::bigint * i.unit_price_cents
                       ) ORDER BY i.line_no), '[]')
                FROM order_items i JOIN products p ON p.id = i.product_id
                WHERE i.order_id = o.id) AS items,
               o.item_count, o.total_cents, o.version,
               {instant("o.created_at")} AS created_at, {instant("o.updated_at")} AS updated_at
        FROM orders o JOIN customers c ON c.id = o.customer_id
        WHERE o.id = $1
    ) v
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


def order_by_id(reader: Reader, order_id: int) -> Awaitable[OrderView | None]:
    # The statement's coroutine itself, not one awaiting it: a frame less in every read's chain.
    return reader.find(ORDER_BY_ID, OrderView, order_id)


# Qualified where an output column shares the name: ORDER BY orders.created_at is the column (and
# its index), while a bare created_at would be the output expression.
SUMMARY_COLUMNS = f"id, customer_id, status, item_count, total_cents, {instant('orders.created_at')} AS created_at"

# PostgreSQL may switch a prepared statement to a generic plan after five executions, and a generic
# plan cannot fold "$1 IS NULL OR customer_id = $1" away: it would walk all orders newest-first
# whatever the filters. So each combination of filters present has its own text, composed of these
# constants only (every value stays a bound parameter): a present filter is its condition, an absent
# one a condition on its parameter alone, a one-time filter that leaves the choice of index alone.
# Every variant names every $n, so the arguments are the same whichever text runs.
ORDER_FILTERS = (
    ("customer_id = $1::bigint", "$1::bigint IS NULL"),
    ("status = $2::text", "$2::text IS NULL"),
    ("created_at >= $3::timestamptz", "$3::timestamptz IS NULL"),
    ("created_at < $4::timestamptz", "$4::timestamptz IS NULL"),
)


def present(values: tuple[object, ...]) -> tuple[bool, ...]:
    """Which of a statement's optional parameters are given: the key of its variant."""
    return tuple(value is not None for value in values)


def order_filters(filters: tuple[bool, ...]) -> str:
    """The filters ($1..$4) of both the list and the export, written once so that the same parameters
    always select the same orders; ``filters`` says which are given."""
    return "\n          AND ".join(
        (condition if given else absent) for (condition, absent), given in zip(ORDER_FILTERS, filters, strict=True)
    )


# $5/$6 are the last row of the previous page: a row comparison keeps pages stable as new orders arrive.
AFTER_ROW = "(created_at, id) < ($5::timestamptz, $6::bigint)"
NO_AFTER_ROW = "$5::timestamptz IS NULL AND $6::bigint IS NULL"


# The walk runs backwards down (customer_id | status, created_at, id) or (created_at, id).
@functools.cache
def order_page_sql(filters: tuple[bool, ...], after: bool) -> str:
    return f"""
    SELECT coalesce(json_agg(page ORDER BY page.created_at DESC, page.id DESC), '[]')::text
    FROM (
        SELECT {SUMMARY_COLUMNS}
        FROM orders
        WHERE {order_filters(filters)}
          AND {AFTER_ROW if after else NO_AFTER_ROW}
        ORDER BY orders.created_at DESC, orders.id DESC
        LIMIT $7
    ) page
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


async def order_page(reader: Reader, params: OrderListing) -> Page[OrderSummary]:
    bound_to = ("orders", *params.values())
    after_at, after_id = (None, None) if params.cursor is None else after_row(params.cursor, bound_to)
    sql = order_page_sql(present(params.values()), params.cursor is not None)
    rows = await reader.value(sql, list[OrderSummary], *params.values(), after_at, after_id, params.limit + 1)
    return page_of(rows, params.limit, lambda order: (order.created_at, order.id), bound_to=bound_to)


def after_row(cursor: str, bound_to: tuple[object, ...]) -> tuple[Instant, int]:
    """The (created_at, id) a list cursor carries; one forged past what the driver can send is a 400."""
    after_at, after_id = decode_cursor(cursor, tuple[Instant, Id], bound_to=bound_to)
    try:
        require_utc_representable(after_at, "cursor")
    except ValueError:
        raise BadCursor("cursor does not fit this query") from None
    return after_at, after_id


EXPORT_BATCH_SIZE = 1000


# Walks the primary key; $5 is the last id of the previous batch.
@functools.cache
def export_batch_sql(filters: tuple[bool, ...]) -> str:
    return f"""
    SELECT coalesce(json_agg(batch ORDER BY batch.id), '[]')::text
    FROM (
        SELECT {SUMMARY_COLUMNS}
        FROM orders
        WHERE {order_filters(filters)}
          AND id > $5
        ORDER BY id
        LIMIT $6
    ) batch
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


async def order_batches(
    reader: Reader, filters: OrderFilters, *, later_wait: float, batch_size: int = EXPORT_BATCH_SIZE
) -> AsyncIterator[list[OrderSummary]]:
    """The filtered orders by id, in batches; a connection is held for one batch's query only.

    The ``yield`` sits outside the pool's connection: while a slow client drains a batch, its
    connection is back in the pool, and memory holds one batch however many orders match. The
    first batch waits for a connection as any query does; the later ones up to ``later_wait``
    (``READ_EXPORT_WAIT``), and are never turned away by a full queue, because by then the
    response has begun. ``reader`` answers every batch from one database (``reads.balancing``).
    """
    sql, after, wait = export_batch_sql(present(filters.values())), 0, None
    while True:
        # Replanned: how many orders a filter matches decides between walking the primary key and
        # sorting the filter's matches, which a generic plan cannot know (one more round trip a batch).
        batch = await reader.value(
            sql, list[OrderSummary], *filters.values(), after, batch_size, wait=wait, shed=wait is None, replan=True
        )
        if not batch:
            return
        yield batch
        if len(batch) < batch_size:
            return
        after, wait = batch[-1].id, later_wait

"""The read models, kept in step by the commands: one statement, in the command's own transaction.

``sales_daily``, ``product_sales`` and ``customer_totals`` (``writes.models``) hold what the
stats and the customer detail used to sum from orders on every read. A command that changes what
they count calls ``record`` with the order it changed (placing one calls ``record_placed``, an
import ``record_imported``), after its own statements and as its last one, so a query right after
the command sees its effect, and a command that fails changes nothing.

Every change is an increment (``INSERT ... ON CONFLICT DO UPDATE SET x = x + EXCLUDED.x``): no value
is read and written back, so concurrent commands add up instead of overwriting each other. The
increments are summed in SQL, a pay's from the order's rows and an import's from the records it
copied in, by one statement (``_recording``) whatever the count: an import of 100 000 orders is one
set-based statement, as a pay is for its one order. Money and units are summed
and kept in ``numeric`` (migration ``0005``): valid orders add up past bigint, and no command may
fail because of what other clients sold.

Lock order: the read-model rows are the last rows a command locks, table by table in one order and
by key within each table, so two commands never wait on each other's read-model rows in a cycle.
Today's sales row would be locked by every paying command until it commits; each connection adds
to its own stripe (``pg_backend_pid() % READ_MODEL_STRIPES``) of the day instead. A product's
blocks are not striped: every order of that product already queues on the product's stock row
when placed. A sale goes into the 9 blocks of days holding its day (``shared.salesblocks``).

A command that changes ``product_sales`` also replaces its stripe's token in
``product_sales_versions`` with a new random one: the version the top products' answers are kept
by (``reads.queries.stats``). It is striped the same way, by connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import BigInteger, DateTime, Integer, Text, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from shared.dto import ImportedOrder
from shared.salesblocks import rolled_up
from writes.db import SETTINGS
from writes.ondriver import OnDriver


class Change(NamedTuple):
    """What a command did to the one order it names."""

    placed: int  # added to the order's customer's order count
    sold: int  # +1 adds the order's sales (units, revenue, lifetime value), -1 takes them back


PAID = Change(placed=0, sold=1)
REFUNDED = Change(placed=0, sold=-1)  # a paid order cancelled

# Statuses and days are the stats' own: paid and shipped orders, by the UTC day of created_at.
SOLD = "status IN ('paid', 'shipped')"
DAY = "(created_at AT TIME ZONE 'UTC')::date"

# The product sales are summed per day and product first, then rolled up to each longer block from
# the length below (``shared.salesblocks.rolled_up``): for an import of 50 000 orders over 90 days
# that sums about 150 000 rows in all, where expanding each item into its 9 blocks sorted 840 000.
_LONGER_BLOCKS, _ALL_BLOCKS = rolled_up("day_sales")


def _recording(changed: str, day_sales: str) -> str:
    """The statement that adds a change to every read model, from two queries: ``changed``, the
    changed orders' ``(customer_id, total_cents, day, sold)``, and ``day_sales``, their sold items'
    one-day sums ``(first_day, product_id, units, revenue_cents)``. ``:sold`` (+1 or -1) is the
    sales' sign and ``:placed`` what each order adds to its customer's count. Three inserts are
    unreferenced data-modifying CTEs and the fourth is the main statement: one round trip."""
    return f"""
    WITH changed AS ({changed}),
    sales AS (
        INSERT INTO sales_daily AS t (day, stripe, orders, revenue_cents)
        SELECT day, pg_backend_pid() % :stripes, :sold * count(*), :sold * sum(total_cents)
          FROM changed
         WHERE sold
         GROUP BY day
         ORDER BY day
        ON CONFLICT (day, stripe) DO UPDATE
           SET orders = t.orders + EXCLUDED.orders, revenue_cents = t.revenue_cents + EXCLUDED.revenue_cents
    ),
    day_sales AS ({day_sales}),
    {_LONGER_BLOCKS},
    product_sales AS (
        INSERT INTO product_sales AS t (days, first_day, product_id, units, revenue_cents)
        SELECT days, first_day, product_id, :sold * units, :sold * revenue_cents
          FROM ({_ALL_BLOCKS}) AS b (days, first_day, product_id, units, revenue_cents)
         ORDER BY days, first_day, product_id
        ON CONFLICT (days, first_day, product_id) DO UPDATE
           SET units = t.units + EXCLUDED.units, revenue_cents = t.revenue_cents + EXCLUDED.revenue_cents
    ),
    product_sales_version AS (
        INSERT INTO product_sales_versions AS t (stripe, token)
        SELECT pg_backend_pid() % :stripes, gen_random_uuid()
         WHERE EXISTS (SELECT FROM day_sales)
        ON CONFLICT (stripe) DO UPDATE SET token = EXCLUDED.token
    )
    INSERT INTO customer_totals AS t (customer_id, order_count, lifetime_value_cents)
    SELECT customer_id, :placed * count(*), :sold * coalesce(sum(total_cents) FILTER (WHERE sold), 0)
      FROM changed
     GROUP BY customer_id
     ORDER BY customer_id
    ON CONFLICT (customer_id) DO UPDATE
       SET order_count = t.order_count + EXCLUDED.order_count,
           lifetime_value_cents = t.lifetime_value_cents + EXCLUDED.lifetime_value_cents
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


# A paid order, or a paid one cancelled: summed from its rows, which the command wrote or locked.
RECORD = OnDriver(
    text(
        _recording(
            changed=f"""
        SELECT customer_id, total_cents, {DAY} AS day, true AS sold FROM orders WHERE id = :order_id
    """,  # noqa: S608 - constants only
            day_sales="""
        SELECT c.day AS first_day, i.product_id,
               sum(i.quantity) AS units, sum(i.quantity::bigint * i.unit_price_cents) AS revenue_cents
          FROM changed c, order_items i
         WHERE i.order_id = :order_id
         GROUP BY c.day, i.product_id
    """,
        )
    ).bindparams(
        bindparam("order_id", type_=BigInteger),
        bindparam("placed", type_=Integer),
        bindparam("sold", type_=Integer),
        bindparam("stripes", type_=Integer),
    )
)

# An import, summed from the records it copied in, as arrays: an order's for each order and an
# item's, with its order's status and instant, for each item. Not from the rows: the planner knows
# nothing of rows loaded in the same transaction (their statistics are another table's, or none),
# and with a join to them picked, on a guess of a handful of rows, a nested loop over 100 000
# orders that ran for minutes (a CI run of 2026-12-04). Over arrays there is nothing to join: no
# plan of this statement depends on how many orders there are, so one generic plan serves an import
# of one order or of 100 000 (``writes.handlers.imports``).
RECORD_IMPORTED = OnDriver(
    text(
        _recording(
            changed=f"""
        SELECT customer_id, total_cents, {DAY} AS day, {SOLD} AS sold
          FROM unnest(:customer_ids, :statuses, :totals, :created_ats)
               AS o (customer_id, status, total_cents, created_at)
    """,  # noqa: S608 - constants only
            day_sales=f"""
        SELECT {DAY} AS first_day, product_id,
               sum(quantity) AS units, sum(quantity::bigint * unit_price_cents) AS revenue_cents
          FROM unnest(:item_statuses, :item_created_ats, :product_ids, :quantities, :unit_prices)
               AS i (status, created_at, product_id, quantity, unit_price_cents)
         WHERE {SOLD}
         GROUP BY 1, product_id
    """,  # noqa: S608 - constants only
        )
    ).bindparams(
        bindparam("customer_ids", type_=ARRAY(BigInteger)),
        bindparam("statuses", type_=ARRAY(Text)),
        bindparam("totals", type_=ARRAY(BigInteger)),
        bindparam("created_ats", type_=ARRAY(DateTime(timezone=True))),
        bindparam("item_statuses", type_=ARRAY(Text)),
        bindparam("item_created_ats", type_=ARRAY(DateTime(timezone=True))),
        bindparam("product_ids", type_=ARRAY(BigInteger)),
        bindparam("quantities", type_=ARRAY(Integer)),
        bindparam("unit_prices", type_=ARRAY(BigInteger)),
        bindparam("placed", type_=Integer),
        bindparam("sold", type_=Integer),
        bindparam("stripes", type_=Integer),
    )
)


# A placed order is pending: it only counts for its customer. This is the whole of what placing adds,
# one round trip of a single-row upsert (RECORD would do the same, planning three more inserts).
COUNT_PLACED = OnDriver(
    text("""
    INSERT INTO customer_totals AS t (customer_id, order_count, lifetime_value_cents)
    VALUES (:customer_id, 1, 0)
    ON CONFLICT (customer_id) DO UPDATE SET order_count = t.order_count + 1
""").bindparams(bindparam("customer_id", type_=BigInteger))
)


async def record_placed(session: AsyncSession, customer_id: int) -> None:
    """Count an order just placed for ``customer_id``."""
    await COUNT_PLACED.defer(session, {"customer_id": customer_id})


async def record(session: AsyncSession, change: Change, order_id: int) -> None:
    """Add what ``change`` did to the order ``order_id`` (a row this transaction wrote) to the read models."""
    await RECORD.defer(
        session,
        {
            "order_id": order_id,
            "placed": change.placed,
            "sold": change.sold,
            "stripes": session.info[SETTINGS].read_model_stripes,
        },
    )


async def record_imported(session: AsyncSession, orders: Sequence[ImportedOrder], totals: Sequence[int]) -> None:
    """Add imported ``orders`` (``totals``: each one's total, as copied in), placed (each counts for
    its customer) and, the paid and shipped ones, sold. Each array is built in one pass: per order,
    and per item with its order's status and instant."""
    item_orders = [order for order in orders for _ in order.items]
    items = [item for order in orders for item in order.items]
    await RECORD_IMPORTED.defer(
        session,
        {
            "customer_ids": [order.customer_id for order in orders],
            "statuses": [order.status for order in orders],
            "totals": list(totals),
            "created_ats": [order.created_at for order in orders],
            "item_statuses": [order.status for order in item_orders],
            "item_created_ats": [order.created_at for order in item_orders],
            "product_ids": [item.product_id for item in items],
            "quantities": [item.quantity for item in items],
            "unit_prices": [item.unit_price_cents for item in items],
            "placed": 1,
            "sold": 1,
            "stripes": session.info[SETTINGS].read_model_stripes,
        },
    )

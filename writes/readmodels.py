"""The read models, kept in step by the commands: one statement, in the command's own transaction.

``sales_daily``, ``product_sales`` and ``customer_totals`` (``writes.models``) hold what the
stats and the customer detail used to sum from orders on every read. A command that changes what
they count calls ``record`` with the orders it changed (placing one calls ``record_placed``), after
its own statements and as its last one, so a query right after the command sees its effect, and a
command that fails changes nothing.

Every change is an increment (``INSERT ... ON CONFLICT DO UPDATE SET x = x + EXCLUDED.x``): no value
is read and written back, so concurrent commands add up instead of overwriting each other. The
increments are summed in SQL from the rows the command wrote, so an import of 100 000 orders is
one set-based statement and a pay is the same statement for one order. Money and units are summed
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

from collections.abc import Collection
from typing import NamedTuple

from sqlalchemy import BigInteger, Boolean, Integer, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from shared.salesblocks import rolled_up
from writes.db import SETTINGS
from writes.ondriver import OnDriver


class Change(NamedTuple):
    """What a command did to the orders it names."""

    placed: int  # added to each order's customer's order count
    sold: int  # +1 adds the orders' sales (units, revenue, lifetime value), -1 takes them back
    sold_only_if_paid: bool  # only the orders now paid or shipped count as sold (an import's mix)


PAID = Change(placed=0, sold=1, sold_only_if_paid=False)
REFUNDED = Change(placed=0, sold=-1, sold_only_if_paid=False)  # a paid order cancelled
IMPORTED = Change(placed=1, sold=1, sold_only_if_paid=True)

# Statuses and days are the stats' own: paid and shipped orders, by the UTC day of created_at.
# The product sales are summed per day and product first, then rolled up to each longer block from
# the length below (``shared.salesblocks.rolled_up``): for an import of 50 000 orders over 90 days
# that sums about 150 000 rows in all, where expanding each item into its 9 blocks sorted 840 000.
_LONGER_BLOCKS, _ALL_BLOCKS = rolled_up("day_sales")

# Three inserts are unreferenced data-modifying CTEs and the fourth is the main statement: one round trip.
RECORD = OnDriver(
    text(f"""
    WITH changed AS (
        SELECT id, customer_id, total_cents, (created_at AT TIME ZONE 'UTC')::date AS day,
               :sold <> 0 AND (NOT :sold_only_if_paid OR status IN ('paid', 'shipped')) AS sold
          FROM orders
         WHERE id BETWEEN :first AND :last AND id = ANY(:ids)
    ),
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
    day_sales AS (
        SELECT c.day AS first_day, i.product_id,
               sum(i.quantity) AS units, sum(i.quantity::bigint * i.unit_price_cents) AS revenue_cents
          FROM changed c
          -- The range walks the new items' slice of the key: an import's ids are drawn together,
          -- and without it the planner hashes every item of every order to find them.
          JOIN order_items i ON i.order_id = c.id AND i.order_id BETWEEN :first AND :last
         WHERE c.sold
         GROUP BY c.day, i.product_id
    ),
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
""").bindparams(  # noqa: S608 - composed of constants only; every value is a bound parameter
        bindparam("ids", type_=ARRAY(BigInteger)),
        bindparam("first", type_=BigInteger),
        bindparam("last", type_=BigInteger),
        bindparam("placed", type_=Integer),
        bindparam("sold", type_=Integer),
        bindparam("sold_only_if_paid", type_=Boolean),
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


async def record(session: AsyncSession, change: Change, order_ids: Collection[int]) -> None:
    """Add what ``change`` did to ``order_ids`` (rows this transaction already wrote) to the read models."""
    await RECORD.defer(
        session,
        {
            "ids": list(order_ids),
            "first": min(order_ids),
            "last": max(order_ids),
            "placed": change.placed,
            "sold": change.sold,
            "sold_only_if_paid": change.sold_only_if_paid,
            "stripes": session.info[SETTINGS].read_model_stripes,
        },
    )

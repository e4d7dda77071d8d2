"""What the read models replaced, kept as the oracle they must agree with.

- ``DAILY_REVENUE``, ``TOP_PRODUCTS`` and ``CUSTOMER_DETAIL`` are the stats and customer-detail
  queries as they were before the read models: sums over orders on every read. The tests compare
  the service's answers with theirs, and the benchmark's stats scenario times them as "before".
- ``disagreements`` recomputes every read model from orders and compares it with the tables, day
  by day, product by product and customer by customer.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from reads.queries import instant

DAILY_REVENUE = """
    WITH window_days AS (
        SELECT (now() AT TIME ZONE 'UTC')::date - n AS day, n
        FROM generate_series(0, $1::int - 1) AS n
    ),
    totals AS (
        SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS orders, sum(total_cents) AS revenue_cents
        FROM orders
        WHERE status IN ('paid', 'shipped')
          AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                            - make_interval(days => $1::int - 1)
          AND created_at < date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day'
        GROUP BY 1
    )
    SELECT json_build_object('days', json_agg(json_build_object(
               'day', to_char(d.day, 'YYYY-MM-DD'),
               'orders', coalesce(t.orders, 0),
               'revenue_cents', coalesce(t.revenue_cents, 0)
           ) ORDER BY d.n))::text
    FROM window_days d LEFT JOIN totals t ON t.day = d.day
"""

TOP_PRODUCTS = """
    SELECT json_build_object(
               'products', coalesce(json_agg(top ORDER BY top.revenue_cents DESC, top.product_id), '[]')
           )::text
    FROM (
        SELECT p.id AS product_id, p.sku, p.name,
               sum(i.quantity::numeric) AS units,
               sum(i.quantity::numeric * i.unit_price_cents) AS revenue_cents
        FROM orders o
        JOIN order_items i ON i.order_id = o.id
        JOIN products p ON p.id = i.product_id
        WHERE o.status IN ('paid', 'shipped')
          AND o.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                              - make_interval(days => $1::int - 1)
          AND o.created_at < date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day'
        GROUP BY p.id
        ORDER BY revenue_cents DESC, p.id
        LIMIT $2
    ) top
"""

CUSTOMER_DETAIL = f"""
    SELECT to_json(detail)::text
    FROM (
        SELECT c.id, c.email, c.name, {instant("c.created_at")} AS created_at,
               totals.order_count, totals.lifetime_value_cents
        FROM customers c
        CROSS JOIN LATERAL (
            SELECT count(*) AS order_count,
                   coalesce(sum(o.total_cents) FILTER (WHERE o.status IN ('paid', 'shipped')), 0)
                       AS lifetime_value_cents
            FROM orders o
            WHERE o.customer_id = c.id
        ) totals
        WHERE c.id = $1
    ) detail
"""  # noqa: S608 - composed of constants only; every value is a bound parameter

# Each read model as (recomputed from orders, summed from its table), both keyed and sorted alike.
# A key whose sums are all zero (every sale taken back) is no row in the recomputation.
READ_MODELS = {
    "sales_daily": (
        """SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS orders, sum(total_cents) AS revenue_cents
             FROM orders WHERE status IN ('paid', 'shipped') GROUP BY 1 ORDER BY 1""",
        """SELECT day, sum(orders) AS orders, sum(revenue_cents) AS revenue_cents
             FROM sales_daily GROUP BY day HAVING sum(orders) <> 0 OR sum(revenue_cents) <> 0 ORDER BY day""",
    ),
    # Every block of 2**k days (k = 0..8) by integer division of the day number, where the service
    # aligns by remainder (shared.salesblocks): the same blocks, reached another way. A day that
    # is not finite (a row written by hand) is in its one-day block only.
    "product_sales": (
        """SELECT (1 << k)::smallint AS days,
                  CASE WHEN k = 0 THEN d.day
                       ELSE date '0001-01-01' + (d.day - date '0001-01-01') / (1 << k) * (1 << k) END AS first_day,
                  i.product_id, sum(i.quantity::numeric) AS units,
                  sum(i.quantity::numeric * i.unit_price_cents) AS revenue_cents
             FROM orders o JOIN order_items i ON i.order_id = o.id, generate_series(0, 8) AS k,
                  LATERAL (SELECT (o.created_at AT TIME ZONE 'UTC')::date AS day) d
            WHERE o.status IN ('paid', 'shipped') AND (k = 0 OR isfinite(d.day))
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
        """SELECT days, first_day, product_id, units, revenue_cents
             FROM product_sales WHERE units <> 0 OR revenue_cents <> 0 ORDER BY 1, 2, 3""",
    ),
    "customer_totals": (
        """SELECT customer_id, count(*) AS order_count,
                  coalesce(sum(total_cents) FILTER (WHERE status IN ('paid', 'shipped')), 0) AS lifetime_value_cents
             FROM orders GROUP BY 1 ORDER BY 1""",
        """SELECT customer_id, order_count, lifetime_value_cents
             FROM customer_totals WHERE order_count <> 0 OR lifetime_value_cents <> 0 ORDER BY 1""",
    ),
}


async def disagreements(connection: asyncpg.Connection) -> dict[str, tuple[list[Any], list[Any]]]:
    """Each read model whose table differs from its recomputation: (recomputed, table) rows."""
    found = {}
    for name, (recomputed_sql, table_sql) in READ_MODELS.items():
        recomputed = [tuple(row) for row in await connection.fetch(recomputed_sql)]
        table = [tuple(row) for row in await connection.fetch(table_sql)]
        if recomputed != table:
            found[name] = (recomputed, table)
    return found

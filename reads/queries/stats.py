"""Daily revenue and top products over a window of whole UTC days ending today."""

from __future__ import annotations

from reads.db import Reader
from reads.params import RevenueWindow, TopProductsWindow
from shared.dto import RevenueReport, TopProductsReport

# generate_series supplies every day, so a day without orders is a zero row, not a gap. The window
# is [start of the first UTC day, start of tomorrow): a range on ix_orders_status_created_at_id.
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


async def daily_revenue(reader: Reader, window: RevenueWindow) -> RevenueReport:
    return await reader.fetch(DAILY_REVENUE, RevenueReport, window.days)


# The same window as DAILY_REVENUE; line revenue is what the customer paid (the captured price).
TOP_PRODUCTS = """
    SELECT json_build_object(
               'products', coalesce(json_agg(top ORDER BY top.revenue_cents DESC, top.product_id), '[]')
           )::text
    FROM (
        SELECT p.id AS product_id, p.sku, p.name,
               sum(i.quantity)::bigint AS units,
               sum(i.quantity::bigint * i.unit_price_cents)::bigint AS revenue_cents
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


async def top_products(reader: Reader, window: TopProductsWindow) -> TopProductsReport:
    return await reader.fetch(TOP_PRODUCTS, TopProductsReport, window.days, window.limit)

"""Daily revenue and top products over a window of whole UTC days ending today.

Both read only the read models (``sales_daily``, ``product_sales``), which the commands keep in
step (``writes.readmodels``): their cost follows the window's days (or blocks of days) and the
products sold in them, not the number of orders. Their answers equal the on-the-fly sums over
orders they replaced, which the tests keep as the oracle (``testkit/oracle.py``).

The top products' answer is kept by the process with the version of the product sales it was
computed from, and reused while the version stays: ranking a window's few thousand block rows is
most of a request's time, and a dashboard asks the same question again and again between sales.
"""

from __future__ import annotations

import msgspec

from reads.answers import Answer
from reads.db import Reader
from reads.params import RevenueWindow, TopProductsWindow
from shared.dto import RevenueReport, TopProductsReport
from shared.metrics import STATS_ANSWERS
from shared.salesblocks import TODAY, window_blocks

STATS_ANSWERS_REUSED = STATS_ANSWERS.labels("reused")
STATS_ANSWERS_COMPUTED = STATS_ANSWERS.labels("computed")

# generate_series supplies every day, so a day without sales is a zero row, not a gap. A day's
# stripes are summed; a day whose sales were all taken back (cancelled) sums to zero.
DAILY_REVENUE = f"""
    WITH window_days AS (
        SELECT {TODAY} - n AS day, n
        FROM generate_series(0, $1::int - 1) AS n
    ),
    totals AS (
        SELECT day, sum(orders) AS orders, sum(revenue_cents) AS revenue_cents
        FROM sales_daily
        WHERE day > {TODAY} - $1::int
          AND day <= {TODAY}
        GROUP BY day
    )
    SELECT json_build_object('days', json_agg(json_build_object(
               'day', to_char(d.day, 'YYYY-MM-DD'),
               'orders', coalesce(t.orders, 0),
               'revenue_cents', coalesce(t.revenue_cents, 0)
           ) ORDER BY d.n))::text
    FROM window_days d LEFT JOIN totals t ON t.day = d.day
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


async def daily_revenue(reader: Reader, window: RevenueWindow) -> RevenueReport:
    return await reader.value(DAILY_REVENUE, RevenueReport, window.days)


# The same window as DAILY_REVENUE, read from its few blocks (``shared.salesblocks``): each block is
# one index-only range of the key, product by product. OFFSET 0 keeps each block its own scan: the
# planner cannot count the blocks, and joined whole it would walk the entire index. Revenue is what
# customers paid (the captured prices). A product whose every sale in the window was taken back has
# units 0 there, and is not a top product.
RANKING = f"""
    SELECT json_build_object(
               'products', coalesce(json_agg(top ORDER BY top.revenue_cents DESC, top.product_id), '[]')
           )::text
    FROM (
        SELECT p.id AS product_id, p.sku, p.name, sold.units, sold.revenue_cents
        FROM (
            SELECT s.product_id, sum(s.units) AS units, sum(s.revenue_cents) AS revenue_cents
            FROM ({window_blocks("$1::int")}) b
            CROSS JOIN LATERAL (
                SELECT product_id, units, revenue_cents
                FROM product_sales
                WHERE days = b.days AND first_day = b.first_day
                OFFSET 0
            ) s
            GROUP BY s.product_id
            HAVING sum(s.units) > 0
            ORDER BY revenue_cents DESC, s.product_id
            LIMIT $2
        ) sold
        JOIN products p ON p.id = sold.product_id
    ) top
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


# The version of the product sales as this statement's snapshot sees them: today (the window ends
# today) and every stripe's token (``writes.models.ProductSalesVersion``). The ranking is an
# uncorrelated subquery, an InitPlan, which PostgreSQL runs only when the CASE reaches it: when $3,
# the version of the answer the process keeps, is not this one. Otherwise the statement reads the
# few token rows and answers that nothing changed.
TOP_PRODUCTS = f"""
    WITH version AS (
        SELECT {TODAY}::text || coalesce(string_agg(' ' || token::text, '' ORDER BY stripe), '') AS tag
          FROM product_sales_versions
    )
    SELECT json_build_object(
               'version', tag,
               'report', CASE WHEN tag IS DISTINCT FROM $3::text THEN ({RANKING})::json END
           )::text
      FROM version
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


class VersionedReport(msgspec.Struct, frozen=True):
    version: str
    report: TopProductsReport | None  # None: the product sales are at the version the query was given


async def top_products(reader: Reader, window: TopProductsWindow) -> TopProductsReport:
    """The ranking, computed when the product sales changed since this process last computed it
    for the same window and limit (or today is another day), else the answer it kept
    (``reads.answers``): exact either way, in one round trip."""
    question = ("top products", window.days, window.limit)
    kept = reader.answers.get(question, TopProductsReport)
    found = await reader.value(
        TOP_PRODUCTS, VersionedReport, window.days, window.limit, None if kept is None else kept.version
    )
    if found.report is not None:
        STATS_ANSWERS_COMPUTED.inc()
        reader.answers.keep(question, Answer(found.version, found.report))
        return found.report
    if kept is None:  # the statement ranks whenever no version is given: never reached
        raise LookupError(f"the top products were unchanged from a version never given: {found.version}")
    STATS_ANSWERS_REUSED.inc()
    return kept.value

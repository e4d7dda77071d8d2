"""The blocks of days the product sales read model sums over: the one definition both sides use.

``product_sales`` holds each product's units and revenue per block: an aligned run of ``2**k``
UTC days, k = 0..8 (a day, 2 days, 4, ... 256), starting on a day number (days since 0001-01-01)
divisible by its length. A sale is added to the 9 blocks holding its day. A window of days is
answered from its canonical decomposition, the largest blocks that fit inside it: at most two per
length, so 30 days are 4 to 8 blocks instead of 30 days, and 366 are 6 to 14 (by where the window
ends against the blocks; the tests check every alignment). That keeps the top
products' read at a few thousand rows whatever the window, where summing days read up to 366 rows
per product.

Both functions return SQL text composed of constants and the given names or column or parameter
expressions only: no value is ever spliced in.
"""

from __future__ import annotations

EPOCH = "date '0001-01-01'"
LONGEST = 8  # the longest block is 2**8 = 256 days


def rolled_up(day_sums: str) -> tuple[str, str]:
    """The sums of every block, rolled up a length at a time from ``day_sums``: the name of a CTE of
    one-day sums, ``(first_day, product_id, units, revenue_cents)``, one row per day and product.

    Returns the CTE definitions of the longer blocks' sums (to follow ``day_sums`` in a WITH list),
    each length summed from the length below it, so each step sums fewer rows than the last, and a
    query of all 9 lengths' rows, ``(days, first_day, product_id, units, revenue_cents)``. A day that
    is not finite (a row written by hand as +-infinity) has no day number to align: it stays in its
    one-day block only."""
    names = [day_sums] + [f"{day_sums}_by_{1 << k}" for k in range(1, LONGEST + 1)]
    ctes = ",\n    ".join(
        f"""{names[k]} AS (
        SELECT first_day - (first_day - {EPOCH}) % {1 << k} AS first_day, product_id,
               sum(units) AS units, sum(revenue_cents) AS revenue_cents
          FROM {names[k - 1]}{" WHERE isfinite(first_day)" if k == 1 else ""}
         GROUP BY 1, product_id
    )"""  # noqa: S608 - constants and the caller's name; no value
        for k in range(1, LONGEST + 1)
    )
    levels = "\n         UNION ALL ".join(
        f"SELECT {1 << k}::smallint, first_day, product_id, units, revenue_cents FROM {names[k]}"  # noqa: S608
        for k in range(LONGEST + 1)
    )
    return ctes, levels


# The stats' today, one definition for every stats query: the database's clock, as a UTC date.
TODAY = "(now() AT TIME ZONE 'UTC')::date"


def window_blocks(days: str, last_day: str = TODAY) -> str:
    """A query of ``(days, first_day)``: the canonical decomposition of the ``days`` (a SQL integer
    expression) UTC days ending on ``last_day`` (a SQL date expression; today by default): every
    aligned block inside the window whose parent (the block twice as long holding it) is not, and
    the longest blocks inside it. These are disjoint and together are exactly the window.

    Below the longest length only two blocks of a length can qualify: the first aligned one to
    start inside the window, whose parent can stick out on the left, and the last one to end inside
    it, whose parent can stick out on the right. So each length proposes just those two, and the
    query makes about 20 rows whatever the window, not one per aligned start."""
    return f"""
        SELECT size::smallint AS days, {EPOCH} + start AS first_day
          FROM (SELECT {last_day} - {EPOCH} AS last) window_end,
               LATERAL (SELECT window_end.last - {days} + 1 AS first) window_start,
               generate_series(0, {LONGEST}) AS k,
               LATERAL (SELECT 1 << k AS size) block,
               -- the first aligned start inside the window, and the start of the last block to end in it
               LATERAL (SELECT first + (size - first % size) % size AS leftmost,
                               last + 1 - (last + 1) % size - size AS rightmost) candidate,
               LATERAL (
                   SELECT start FROM generate_series(leftmost, last - size + 1, size) AS start WHERE k = {LONGEST}
                   UNION ALL SELECT leftmost WHERE k < {LONGEST} AND leftmost + size - 1 <= last
                   UNION ALL SELECT rightmost WHERE k < {LONGEST} AND rightmost > leftmost
               ) inside (start)
         WHERE k = {LONGEST}
            OR start - start % (2 * size) < first
            OR start - start % (2 * size) + 2 * size - 1 > last
    """  # noqa: S608 - constants and the caller's expressions; no value

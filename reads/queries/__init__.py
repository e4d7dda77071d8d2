"""Hand-written SQL on the read pool: each statement sits right above the one function that runs it.

Every statement returns its whole view as one JSON value, built in SQL (``json_agg`` for nested
items and pages), so a request is one round trip and the rows map straight into the shared view.
"""


def instant(column: str) -> str:
    """``column`` as an instant a view can carry. No command stores ``infinity`` or ``-infinity``,
    but the column can hold them (a row written by hand, an older release), and JSON has no such
    timestamp. They read as the last and first microsecond of years 1..9999: what asyncpg itself
    maps them to, so the write side's view of the same row says the same, and what a list cursor
    carries back (asyncpg sends those two values as ±infinity again, so the keyset walk is exact).
    """
    return (
        f"least(greatest({column}, '0001-01-01 00:00:00+00'::timestamptz),"
        f" '9999-12-31 23:59:59.999999+00'::timestamptz)"
    )

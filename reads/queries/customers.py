"""Customer detail."""

from __future__ import annotations

from collections.abc import Awaitable

from reads.db import Reader
from reads.queries import instant
from shared.dto import CustomerDetail

# The aggregates come from the customer's row in the read model (``customer_totals``); a customer
# who never ordered has none.
CUSTOMER_DETAIL = f"""
    SELECT to_json(detail)::text
    FROM (
        SELECT c.id, c.email, c.name, {instant("c.created_at")} AS created_at,
               coalesce(t.order_count, 0) AS order_count,
               coalesce(t.lifetime_value_cents, 0) AS lifetime_value_cents
        FROM customers c
        LEFT JOIN customer_totals t ON t.customer_id = c.id
        WHERE c.id = $1
    ) detail
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


def customer_detail(reader: Reader, customer_id: int) -> Awaitable[CustomerDetail | None]:
    # The statement's coroutine itself, not one awaiting it: a frame less in every read's chain.
    return reader.find(CUSTOMER_DETAIL, CustomerDetail, customer_id)

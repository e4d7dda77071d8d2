"""Customer detail."""

from __future__ import annotations

from reads.db import Reader
from reads.queries import instant
from shared.dto import CustomerDetail

# One lateral aggregate over the customer's slice of ix_orders_customer_id_created_at_id.
CUSTOMER_DETAIL = f"""
    SELECT to_json(detail)::text
    FROM (
        SELECT c.id, c.email, c.name, {instant("c.created_at")} AS created_at,
               totals.order_count, totals.lifetime_value_cents
        FROM customers c
        CROSS JOIN LATERAL (
            SELECT count(*) AS order_count,
                   coalesce(sum(o.total_cents) FILTER (WHERE o.status IN ('paid', 'shipped')), 0)::bigint
                       AS lifetime_value_cents
            FROM orders o
            WHERE o.customer_id = c.id
        ) totals
        WHERE c.id = $1
    ) detail
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


async def customer_detail(reader: Reader, customer_id: int) -> CustomerDetail | None:
    return await reader.find(CUSTOMER_DETAIL, CustomerDetail, customer_id)

"""read models: sales_daily, product_sales, customer_totals, backfilled from orders

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every backfilled day goes into stripe 0; later commands add to the stripe of their connection.
# Statuses and days are the stats queries' own: paid and shipped orders, by created_at's UTC day.
BACKFILL = (
    """
    INSERT INTO sales_daily (day, stripe, orders, revenue_cents)
    SELECT (created_at AT TIME ZONE 'UTC')::date, 0, count(*), sum(total_cents)
      FROM orders
     WHERE status IN ('paid', 'shipped')
     GROUP BY 1
    """,
    # Each sale in the 9 aligned blocks of 2**k days (k = 0..8) that hold its day (shared.salesblocks,
    # as of this revision); a day that is not finite in its one-day block only.
    """
    INSERT INTO product_sales (days, first_day, product_id, units, revenue_cents)
    SELECT b.days, b.first_day, i.product_id, sum(i.quantity), sum(i.quantity::bigint * i.unit_price_cents)
      FROM orders o
      JOIN order_items i ON i.order_id = o.id
      CROSS JOIN LATERAL (SELECT (o.created_at AT TIME ZONE 'UTC')::date AS day) d
      CROSS JOIN LATERAL (
          SELECT (1 << k)::smallint AS days,
                 CASE WHEN k = 0 THEN d.day ELSE d.day - (d.day - date '0001-01-01') % (1 << k) END AS first_day
            FROM generate_series(0, CASE WHEN isfinite(d.day) THEN 8 ELSE 0 END) AS k
      ) b
     WHERE o.status IN ('paid', 'shipped')
     GROUP BY 1, 2, 3
    """,
    """
    INSERT INTO customer_totals (customer_id, order_count, lifetime_value_cents)
    SELECT customer_id, count(*), coalesce(sum(total_cents) FILTER (WHERE status IN ('paid', 'shipped')), 0)
      FROM orders
     GROUP BY 1
    """,
)


def upgrade() -> None:
    op.create_table(
        "sales_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("stripe", sa.SmallInteger(), nullable=False),
        sa.Column("orders", sa.BigInteger(), nullable=False),
        sa.Column("revenue_cents", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "stripe", name=op.f("pk_sales_daily")),
    )
    op.create_table(
        "product_sales",
        sa.Column("days", sa.SmallInteger(), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("product_id", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("revenue_cents", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name=op.f("fk_product_sales_product_id_products")),
        sa.PrimaryKeyConstraint(
            "days",
            "first_day",
            "product_id",
            name=op.f("pk_product_sales"),
            postgresql_include=["units", "revenue_cents"],
        ),
    )
    op.create_table(
        "customer_totals",
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("order_count", sa.BigInteger(), nullable=False),
        sa.Column("lifetime_value_cents", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_customer_totals_customer_id_customers")
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_totals")),
    )
    # Orders stay still while they are summed: a command still running the previous version would
    # otherwise change one after the sums were taken (that version does not keep the read models,
    # so stop its writers before migrating; docs/operating.md).
    op.execute("LOCK TABLE orders, order_items IN SHARE MODE")
    for statement in BACKFILL:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("customer_totals")
    op.drop_table("product_sales")
    op.drop_table("sales_daily")

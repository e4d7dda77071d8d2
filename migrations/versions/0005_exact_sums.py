"""exact sums: the read models' money and units in numeric, a product's version in bigint

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:00:00

The read models add up valid orders without end: 923 paid orders at the largest total a command
accepts (100 lines of 1 000 units at 100 000 000 000 cents) pass bigint's 9.2 * 10**18, and then
every command adding to that row failed, whoever sent it. ``numeric`` has no such end (131 072
digits), so the sums stay exact and no command depends on what other clients sold. The order
counts stay bigint: a count is at most the number of orders, whose ids are bigint themselves.

A product's version is bumped by every order that takes or returns its stock, so a popular product
would pass int4's 2 147 483 647 in its lifetime (248 days at 100 orders a second) and refuse every
order of it from then on; bigint lasts 292 years at a billion bumps a second.

Each ALTER rewrites its table under an ACCESS EXCLUSIVE lock: commands and queries on these tables
wait for it (0.3 s for the read models of the 100 000 demo orders here, 175 000 block rows; it grows
with those rows; docs/operating.md).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUMS = {
    "sales_daily": ("revenue_cents",),
    "product_sales": ("units", "revenue_cents"),
    "customer_totals": ("lifetime_value_cents",),
}


def _retype(table: str, columns: Sequence[str], to: str) -> None:
    # One ALTER TABLE per table, so each table is rewritten once, however many of its columns change.
    op.execute(f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {c} TYPE {to} USING {c}::{to}" for c in columns))


def upgrade() -> None:
    for table, columns in SUMS.items():
        _retype(table, columns, "numeric")
    _retype("products", ("version",), "bigint")


def downgrade() -> None:
    # Fails, changing nothing, once a sum has grown past bigint: such a database cannot go back.
    _retype("products", ("version",), "integer")
    for table, columns in SUMS.items():
        _retype(table, columns, "bigint")

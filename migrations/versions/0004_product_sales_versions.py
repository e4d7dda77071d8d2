"""product sales versions: a token per stripe, replaced by every command that changes product_sales

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "product_sales_versions",
        sa.Column("stripe", sa.SmallInteger(), nullable=False),
        sa.Column("token", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("stripe", name=op.f("pk_product_sales_versions")),
    )
    # A first token of its own: product_sales as backfilled (0003) has a version no other database has.
    op.execute("INSERT INTO product_sales_versions (stripe, token) VALUES (0, gen_random_uuid())")


def downgrade() -> None:
    op.drop_table("product_sales_versions")

"""product search: pg_trgm GIN indexes on products.name and products.sku

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 03:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_index(
        "ix_products_name_trgm", "products", ["name"], postgresql_using="gin", postgresql_ops={"name": "gin_trgm_ops"}
    )
    op.create_index(
        "ix_products_sku_trgm", "products", ["sku"], postgresql_using="gin", postgresql_ops={"sku": "gin_trgm_ops"}
    )


def downgrade() -> None:
    op.drop_index("ix_products_sku_trgm", table_name="products")
    op.drop_index("ix_products_name_trgm", table_name="products")
    op.execute("DROP EXTENSION IF EXISTS pg_trgm")

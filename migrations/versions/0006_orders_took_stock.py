"""orders.took_stock: whether an order took its quantities from stock, so a cancel returns only that

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:05:00

A placed order takes its quantities from stock; an imported one does not (the contract: an import
leaves stock untouched). Cancelling an imported order returned quantities it never took, minting
stock. Orders written before this revision are marked as having taken it: which of them were
imported is not recorded anywhere, and that is what cancelling them did until now.

Adding a column with a constant default is a change to the catalog only: no table rewrite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("took_stock", sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    op.drop_column("orders", "took_stock")

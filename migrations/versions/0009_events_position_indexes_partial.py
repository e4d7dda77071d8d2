"""events: the position indexes hold positioned events only

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 00:40:00

Since 0008 a command inserts its events without a position, and a round gives them one after the
commit. The unique index on ``position`` and the index on ``(type, position)`` were whole-table
indexes, so every insert also wrote an entry for its NULL position into both, which the positioning
round's update then superseded (the update is not HOT: it changes an indexed column), leaving two
dead entries an event for vacuum to clear. No reader asks for a NULL position: the feed reads
``position > $1`` and finds the unpositioned by ``ix_events_unpositioned``. Both become partial,
``WHERE position IS NOT NULL``, and an event's insert writes two index entries instead of four.

Both are built again: writes to ``events`` (every command's append) wait for it, seconds for a
million events (docs/operating.md, "Events").
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSITIONED = "position IS NOT NULL"


def upgrade() -> None:
    op.drop_constraint("uq_events_position", "events", type_="unique")
    op.drop_index("ix_events_type_position", table_name="events")
    op.create_index("uq_events_position", "events", ["position"], unique=True, postgresql_where=POSITIONED)
    op.create_index("ix_events_type_position", "events", ["type", "position"], postgresql_where=POSITIONED)


def downgrade() -> None:
    op.drop_index("ix_events_type_position", table_name="events")
    op.drop_index("uq_events_position", table_name="events")
    op.create_index("ix_events_type_position", "events", ["type", "position"])
    op.create_unique_constraint("uq_events_position", "events", ["position"])

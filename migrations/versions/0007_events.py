"""events: the feed of every committed change, positioned in commit order at commit

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:50:00

Each command appends its events to ``events`` in its own transaction (``writes.events``). A row is
inserted without a position; at commit a deferred constraint trigger gives the transaction's events
the next positions from ``events_head``, whose one row it locks until the commit is done. So
positions follow commit order exactly, and a transaction that took position n is visible before any
other can take n + 1: a reader of ``WHERE position > last`` can never skip an event whose
transaction committed late, which is what a position drawn at insert (a sequence, an identity)
allows. The price is that the commits of event-writing transactions pass that row one at a time,
for as long as a commit takes (docs/operating.md, "Events").

``events_horizon`` holds the last position purged: a cursor before it is a 410.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The first call at a transaction's commit positions all of its events (in insertion order) in one
# statement; the calls for its other rows find the transaction-local flag set and return. Only this
# transaction's events lack a position: every committed event has one.
ASSIGN_POSITIONS = """
CREATE FUNCTION events_assign_positions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('orders_api.events_positioned', true) IS DISTINCT FROM 'on' THEN
        WITH pending AS MATERIALIZED (
            SELECT id, row_number() OVER (ORDER BY id) AS n FROM events WHERE position IS NULL
        ),
        head AS (
            UPDATE events_head SET last = last + (SELECT count(*) FROM pending) RETURNING last
        )
        UPDATE events AS e
           SET position = head.last - (SELECT count(*) FROM pending) + pending.n
          FROM pending, head
         WHERE e.id = pending.id;
        PERFORM set_config('orders_api.events_positioned', 'on', true);
    END IF;
    RETURN NULL;
END
$$
"""
CREATE_TRIGGER = """
    CREATE CONSTRAINT TRIGGER events_position AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION events_assign_positions()
"""


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("subject_type", sa.Text(), nullable=False),
        sa.Column("subject_id", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("position", name=op.f("uq_events_position")),
    )
    op.create_index(op.f("ix_events_type_position"), "events", ["type", "position"])
    op.create_index("ix_events_unpositioned", "events", ["id"], postgresql_where=sa.text("position IS NULL"))
    op.create_table(
        "events_head",
        sa.Column("one", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("one", name=op.f("pk_events_head")),
        sa.CheckConstraint("one", name=op.f("ck_events_head_one_row")),
    )
    op.create_table(
        "events_horizon",
        sa.Column("one", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("purged_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("one", name=op.f("pk_events_horizon")),
        sa.CheckConstraint("one", name=op.f("ck_events_horizon_one_row")),
    )
    op.execute("INSERT INTO events_head (last) VALUES (0)")
    op.execute("INSERT INTO events_horizon (purged_through) VALUES (0)")
    op.execute(ASSIGN_POSITIONS)
    op.execute(CREATE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER events_position ON events")
    op.execute("DROP FUNCTION events_assign_positions()")
    op.drop_table("events_horizon")
    op.drop_table("events_head")
    op.drop_table("events")

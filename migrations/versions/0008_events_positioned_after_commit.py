"""events: positions given after commit, a batch at a time, instead of inside each command's commit

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:50:00

0007 gave a transaction's events their positions inside its commit, holding ``events_head``'s row
until the commit was flushed: the commits of every event-writing command passed that row one at a
time, a WAL flush each, and PostgreSQL's group commit could not merge them (the outbox cost place
order 27 %, and the hand-written floor 35 %).

Now a command only inserts its events (``position`` NULL), and ``events_position(batch)`` positions
committed ones afterwards: it locks ``events_head``, then gives the next positions to the
unpositioned events it can see, oldest row first. One positioner runs at a time (the row lock), and
each sees everything the one before it committed, so positions still come in one gap-free order,
and ``WHERE position > last`` still skips nothing: an event becomes readable only when it is given a
position, and nothing is ever given a lower one later. The commands' commits are free again; a
round positions the events of every command that committed before it began, in one transaction.

Events of one subject keep their commit order: a command changes its subject (a row lock) before it
appends, so the event of the command that committed first was inserted first (the lower row id),
and was visible to any round that sees the later one.

``writes.events.Positioner`` runs the rounds: after each command that appended, and once a second
for events whose process stopped between its commit and its round.
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each statement of a (volatile) function takes its own snapshot under READ COMMITTED: the one after
# the lock sees every position the previous holder committed. Nothing to position, nothing is
# locked or written (a round after every command is then one index probe).
POSITION = """
CREATE FUNCTION events_position(batch integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    base bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM events WHERE position IS NULL) THEN
        RETURN 0;
    END IF;
    PERFORM FROM events_head FOR UPDATE;
    SELECT array_agg(id ORDER BY id) INTO ids
      FROM (SELECT id FROM events WHERE position IS NULL ORDER BY id LIMIT batch) AS oldest;
    IF ids IS NULL THEN
        RETURN 0;  -- another round positioned them between the check and the lock
    END IF;
    UPDATE events_head SET last = last + cardinality(ids) RETURNING last - cardinality(ids) INTO base;
    UPDATE events AS e SET position = base + waiting.n
      FROM unnest(ids) WITH ORDINALITY AS waiting (id, n)
     WHERE e.id = waiting.id;
    RETURN cardinality(ids);
END
$$
"""


def upgrade() -> None:
    # Dropping the trigger waits for the transactions that inserted events under it: they commit
    # positioned, and every later event waits for a round.
    op.execute("DROP TRIGGER events_position ON events")
    op.execute("DROP FUNCTION events_assign_positions()")
    op.execute(POSITION)


def downgrade() -> None:
    # Everything committed is positioned first: 0007's trigger would leave it for the next commit.
    op.execute("DO $$ BEGIN WHILE events_position(10000) > 0 LOOP END LOOP; END $$")
    op.execute("DROP FUNCTION events_position(integer)")
    events_0007 = importlib.import_module("migrations.versions.0007_events")
    op.execute(events_0007.ASSIGN_POSITIONS)
    op.execute(events_0007.CREATE_TRIGGER)

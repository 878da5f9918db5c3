"""Attention influence without the sink: node_analyses.sink_share, old influence cleared.

Influence is now computed over positions 1 .. n-2 only (position 0, the usual attention
sink, and the query's own position have no value, stored as NaN), and the sink's share is
kept next to it. Influence cached under the old definition (every position, heads ranked
with the sink column) means something else, so it is cleared: it is a recomputable cache,
not an event, and the planner recomputes it when the influence view asks. The downgrade
clears it too, since the old code does not know the NaN positions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("node_analyses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sink_share", sa.Float(), nullable=True))
    op.execute("UPDATE node_analyses SET influence = NULL WHERE influence IS NOT NULL")


def downgrade() -> None:
    op.execute("UPDATE node_analyses SET influence = NULL WHERE influence IS NOT NULL")
    with op.batch_alter_table("node_analyses", schema=None) as batch_op:
        batch_op.drop_column("sink_share")

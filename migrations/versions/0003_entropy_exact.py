"""node_outputs.entropy_exact: whether an entropy is exact or a server's top-k lower bound.

A server backend sees only the top-k log-probabilities, so the entropy it stores is a lower
bound; the column says so, the screen shows it as "≥ H" and exports as
"entropy_exact": false. Every row cached before this revision came from a local model over
the full vocabulary: exact (the server default).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("node_outputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("entropy_exact", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    # Inexact rows would read as exact to the old code: drop them (a recomputable cache).
    op.execute("DELETE FROM node_outputs WHERE entropy_exact = 0")
    with op.batch_alter_table("node_outputs", schema=None) as batch_op:
        batch_op.drop_column("entropy_exact")

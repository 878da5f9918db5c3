"""constraints: the regex constraint in force on a branch (r / R), a projection.

One row per branch that has one: its name and pattern as recorded by `constraint.set`, and
the depth it was switched on at. Databases before this revision have no constraint events,
so the new table starts empty (a `db rebuild` fills it from the events like the others).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "constraints",
        sa.Column("branch_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("pattern", sa.Text(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["branch_id"], ["branches.id"], name=op.f("fk_constraints_branch_id_branches")),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], name=op.f("fk_constraints_session_id_sessions")),
        sa.PrimaryKeyConstraint("branch_id", name=op.f("pk_constraints")),
    )
    with op.batch_alter_table("constraints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_constraints_session_id"), ["session_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("constraints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_constraints_session_id"))
    op.drop_table("constraints")

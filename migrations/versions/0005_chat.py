"""chat: a session's chat format, a root's messages, and which tokens are special.

- `sessions.chat`: JSON, the chat format of a chat session (its template's hash, the
  end-of-turn and turn-opening token ids); NULL for a plain-text session.
- `branches.messages`: JSON, the messages a chat root was rendered from (a copy of a branch
  keeps them); NULL for a plain-text root.
- `token_bytes.special`: the token is a special or control token (drawn as what it is, never
  as the same characters typed). Rows cached before this revision read as not special until
  the model next runs and marks them.

Databases before this revision have no chat events, so the projections' new columns start
NULL (a `db rebuild` fills them from the events like the rest).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chat", sa.Text(), nullable=True))
    with op.batch_alter_table("branches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("messages", sa.Text(), nullable=True))
    with op.batch_alter_table("token_bytes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("special", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("token_bytes", schema=None) as batch_op:
        batch_op.drop_column("special")
    with op.batch_alter_table("branches", schema=None) as batch_op:
        batch_op.drop_column("messages")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("chat")

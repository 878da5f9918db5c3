"""SQLAlchemy 2.0 ORM schema of the tokentree database.

Three kinds of tables:

* ``events``: the append-only log (the source of truth). SQLite triggers reject UPDATE and
  DELETE on it.
* projections, written only by :mod:`tokentree.store.projector` and rebuilt from the events
  by ``db rebuild``: ``sessions``, ``nodes``, ``session_nodes``, ``branches``, ``focus``,
  ``constraints`` and ``projector_checkpoint``.
* caches, NOT projections (a rebuild keeps them): ``models``, ``node_outputs``,
  ``node_analyses``, ``token_bytes``. They are keyed by prefix key (and model), never by node
  id, so they stay valid whatever ids a rebuild would assign.

Every change here needs a new Alembic revision in ``migrations/versions`` (the migrations
test compares the migrated database with this metadata).
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --------------------------------------------------------------------------- event log


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("session_id", "version"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)  # global order
    session_id: Mapped[int] = mapped_column(Integer, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)  # 1, 2, ... per session
    type: Mapped[str] = mapped_column(String(40), nullable=False)  # stable name, e.g. "token.appended"
    payload: Mapped[str] = mapped_column(Text, nullable=False)  # JSON object with "v"
    created_at: Mapped[str] = mapped_column(String(32), nullable=False)  # UTC ISO 8601


# The same statements are in the initial migration; create_all() (used by nothing in the app,
# but handy in a REPL) gets them from these listeners.
EVENTS_TRIGGERS = (
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END",
)
for _sql in EVENTS_TRIGGERS:
    event.listen(EventRow.__table__, "after_create", DDL(_sql))


# --------------------------------------------------------------------------- projections


class SessionRow(Base):
    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[str] = mapped_column(String(32), nullable=False)
    last_used_at: Mapped[str] = mapped_column(String(32), nullable=False)
    last_seq: Mapped[int] = mapped_column(Integer, nullable=False)  # seq of its latest event
    model_name: Mapped[str] = mapped_column(Text, nullable=False)
    fingerprint: Mapped[str] = mapped_column(Text, nullable=False)
    vocab_key: Mapped[str] = mapped_column(String(64), nullable=False)
    prompt_sources: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list of str
    chat: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON chat format; NULL: plain text


class NodeRow(Base):
    """One row per token prefix, shared by every branch and session (content-addressed)."""

    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("parent_id", "token_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"), nullable=True)
    token_id: Mapped[int] = mapped_column(Integer, nullable=False)
    depth: Mapped[int] = mapped_column(Integer, nullable=False)  # root = 1
    prefix_key: Mapped[bytes] = mapped_column(LargeBinary(16), nullable=False, unique=True)


class SessionNodeRow(Base):
    """Which nodes a session has explored (monotonic: undo does not un-explore)."""

    __tablename__ = "session_nodes"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), primary_key=True)


class BranchRow(Base):
    """A branch; removed branches stay as rows (removed = true, position NULL) so that an
    undo can bring them back with the same id and ids are never reused."""

    __tablename__ = "branches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)  # display order, 0-based
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), nullable=False)
    root_node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), nullable=False)
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    messages: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON, a chat root's messages
    removed: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())


class FocusRow(Base):
    __tablename__ = "focus"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    branch_id: Mapped[int] = mapped_column(ForeignKey("branches.id"), nullable=False)


class ConstraintRow(Base):
    """The regex constraint in force on a branch (r / R): its name and pattern as recorded,
    and the depth it was switched on at: it covers the tokens after that depth. No row: none.
    A removed branch keeps its row (an undo brings the branch back with it)."""

    __tablename__ = "constraints"

    branch_id: Mapped[int] = mapped_column(ForeignKey("branches.id"), primary_key=True, autoincrement=False)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    pattern: Mapped[str] = mapped_column(Text, nullable=False)
    depth: Mapped[int] = mapped_column(Integer, nullable=False)


class CheckpointRow(Base):
    """Single row (id = 1): the seq of the last event applied to the projections."""

    __tablename__ = "projector_checkpoint"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(Integer, nullable=False)


# Wiped by rebuild, in an order that keeps foreign keys satisfied.
PROJECTION_TABLES = ("constraints", "focus", "branches", "session_nodes", "sessions", "nodes", "projector_checkpoint")


# --------------------------------------------------------------------------- caches (kept by rebuild)


class ModelRow(Base):
    """Model fingerprints, so that cache rows carry a small integer instead of the string."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text, nullable=False, unique=True)


class NodeOutputRow(Base):
    """The model's output at one prefix: top-K ids (packed little-endian uint32) and their
    probabilities (packed little-endian float32); never the full vocabulary."""

    __tablename__ = "node_outputs"
    __table_args__ = (UniqueConstraint("prefix_key", "model_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix_key: Mapped[bytes] = mapped_column(LargeBinary(16), nullable=False)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False)
    token_prob: Mapped[float | None] = mapped_column(Float, nullable=True)
    token_rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    entropy: Mapped[float] = mapped_column(Float, nullable=False)
    norm_entropy: Mapped[float] = mapped_column(Float, nullable=False)
    # False: `entropy` is a lower bound from a server's top-k log-probs, not the exact value.
    entropy_exact: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true())
    top_ids: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    top_probs: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class NodeAnalysisRow(Base):
    """Optional, view-driven values (attention influence, logit lens) for one prefix."""

    __tablename__ = "node_analyses"
    __table_args__ = (UniqueConstraint("prefix_key", "model_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix_key: Mapped[bytes] = mapped_column(LargeBinary(16), nullable=False)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False)
    influence: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # float32s, NaN = None
    sink_share: Mapped[float | None] = mapped_column(Float, nullable=True)  # stored with `influence`
    lens_ids: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # uint32s
    lens_layers: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lens_probs: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # float32s, [layer][cand]


class TokenBytesRow(Base):
    """Raw bytes of each token of a vocabulary (special tokens: their name in UTF-8)."""

    __tablename__ = "token_bytes"

    vocab_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    piece: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    special: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())  # control token


# Core tables for the hand-built statements of the store and the projector.
events_t = EventRow.__table__
sessions_t = SessionRow.__table__
nodes_t = NodeRow.__table__
session_nodes_t = SessionNodeRow.__table__
branches_t = BranchRow.__table__
focus_t = FocusRow.__table__
constraints_t = ConstraintRow.__table__
checkpoint_t = CheckpointRow.__table__
outputs_t = NodeOutputRow.__table__

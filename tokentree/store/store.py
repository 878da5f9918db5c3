"""The Store facade: opening the database, transactions, and one-call forms of the commands
(:mod:`.commands`) and reads (:mod:`.reads`).

Every command runs in ONE ``BEGIN IMMEDIATE`` transaction that validates the command against
the projections, appends exactly one event (``record_samples``: its whole group of events)
and lets the projector update the projections.
Reads run in a deferred ``BEGIN`` (a consistent WAL snapshot). SQLite failures become
:class:`StoreError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from tokentree.errors import StoreError
from tokentree.outputs import Analysis, NodeOutput

from . import cache, migrate
from .commands import Commands, check_branch_name, check_group, check_samples, check_token_id
from .engine import enable_wal, make_engine
from .events import Event
from .files import check_file, create_file, db_errors
from .reads import Reader
from .types import Branch, Constraint, Node, RootPrompt, SessionInfo, SessionSummary


class Store:
    """The tokentree database. Open with :meth:`Store.open`; safe to share between threads
    (each call checks a pooled connection out for its own transaction)."""

    def __init__(self, path: Path, engine: Engine, write_engine: Engine) -> None:
        self.path = path
        self.engine = engine  # reads: deferred BEGIN
        self.write_engine = write_engine  # same pool, BEGIN IMMEDIATE
        # Command transactions begun through this Store (events: branches and nodes may have
        # changed). A reader that holds them in memory reads again when this moves.
        self.commands_begun = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | Path, *, timeout: float = 5.0) -> Store:
        """Open (creating if needed) and migrate to head. StoreError, with the file left as
        it was, for: not a database, truncated, a newer schema, locked, read-only."""
        path = Path(path).expanduser().absolute()
        if check_file(path):
            try:
                create_file(path)
            except OSError as exc:
                raise StoreError(f"cannot create database {path}: {exc.strerror or exc}") from None
        engine, wengine = make_engine(path, timeout=timeout)
        store = cls(path, engine, wengine)
        try:
            with db_errors(path):
                with engine.connect() as conn:
                    migrate.check_database(conn, f"database {path}")
                    conn.rollback()
                enable_wal(engine)
                with wengine.begin() as conn:
                    if migrate.needs_upgrade(conn):
                        migrate.upgrade(conn)
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def write_transaction(self, *, commit: bool = True) -> Iterator[Connection]:
        """One BEGIN IMMEDIATE transaction, committed on success; with commit=False always
        rolled back (a dry run, e.g. `db check` replaying the events into the live tables)."""
        if commit:
            with db_errors(self.path), self.write_engine.begin() as conn:
                yield conn
            return
        with db_errors(self.path), self.write_engine.connect() as conn:
            trans = conn.begin()
            try:
                yield conn
            finally:
                trans.rollback()

    @contextmanager
    def read_transaction(self) -> Iterator[Connection]:
        """One deferred BEGIN transaction (a consistent WAL snapshot)."""
        with db_errors(self.path), self.engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def reading(self) -> Iterator[Reader]:
        """Many reads in ONE deferred transaction (one consistent WAL snapshot):
        ``with store.reading() as r: r.branches(sid); r.children([...])``. The Reader is
        valid only inside the block; a write made meanwhile (by anyone) is not seen by it."""
        with self.read_transaction() as conn:
            yield Reader(conn, self.path)

    @contextmanager
    def writing(self) -> Iterator[Commands]:
        """Commands in ONE BEGIN IMMEDIATE transaction, committed when the block ends."""
        self.commands_begun += 1
        with self.write_transaction() as conn:
            yield Commands(conn, self.path)

    # ------------------------------------------------------------------ commands

    def append_event(self, session_id: int, type_: str, payload: dict[str, Any], *, expected_version: int) -> Event:
        """Low level: append one event at version `expected_version + 1` and project it.
        ConcurrencyError when that version exists already (another writer got there first).
        The commands below are the normal way in; this exists for tools and tests."""
        with self.writing() as cmd:
            return cmd.append_event(session_id, type_, payload, expected_version)

    def start_session(
        self,
        *,
        model_name: str,
        fingerprint: str,
        vocab_key: str,
        prompt_sources: Sequence[str],
        roots: Sequence[RootPrompt] = (),
    ) -> int:
        """A new session and, in the same transaction, one branch per root prompt: a crash
        can never leave a session without its branches."""
        with self.writing() as cmd:
            sid = cmd.start_session(
                model_name=model_name, fingerprint=fingerprint, vocab_key=vocab_key, prompt_sources=prompt_sources
            )
            for root in roots:
                cmd.create_branch(sid, root.tokens, source=root.source, name=root.name)
            return sid

    def create_branch(
        self,
        session_id: int,
        root_tokens: Sequence[int],
        *,
        source: str | None = None,
        name: str | None = None,
        expected_version: int | None = None,
        group: int | None = None,
    ) -> int:
        check_group(group)
        with self.writing() as cmd:
            return cmd.create_branch(
                session_id, root_tokens, source=source, name=name, expected_version=expected_version, group=group
            )

    def append_token(
        self,
        session_id: int,
        branch_id: int,
        token_id: int,
        *,
        expected_version: int | None = None,
        group: int | None = None,
    ) -> int:
        token_id = check_token_id(token_id)  # before taking the write lock
        check_group(group)
        with self.writing() as cmd:
            return cmd.append_token(session_id, branch_id, token_id, expected_version=expected_version, group=group)

    def append_tokens(
        self,
        session_id: int,
        branch_id: int,
        token_ids: Sequence[int],
        *,
        expected_version: int | None = None,
        group: int | None = None,
    ) -> tuple[int, int]:
        """Several appends in ONE transaction (a chat turn's template tokens): one
        token.appended each, all in `group`. Returns (the new node, session version after)."""
        ids = [check_token_id(t) for t in token_ids]
        if not ids:
            raise StoreError("append_tokens needs at least one token")
        check_group(group)
        with self.writing() as cmd:
            node = None
            for k, token in enumerate(ids):
                node = cmd.append_token(session_id, branch_id, token, group=group,
                                        expected_version=expected_version if k == 0 else None)
            return node, cmd.read.version(session_id)

    def pop_token(
        self, session_id: int, branch_id: int, *, expected_version: int | None = None, group: int | None = None
    ) -> int:
        check_group(group)
        with self.writing() as cmd:
            return cmd.pop_token(session_id, branch_id, expected_version=expected_version, group=group)

    def move_branch(
        self,
        session_id: int,
        branch_id: int,
        node_id: int,
        *,
        expected_version: int | None = None,
        group: int | None = None,
    ) -> None:
        check_group(group)
        with self.writing() as cmd:
            cmd.move_branch(session_id, branch_id, node_id, expected_version=expected_version, group=group)

    def duplicate_branch(
        self, session_id: int, branch_id: int, *, expected_version: int | None = None, group: int | None = None
    ) -> int:
        check_group(group)
        with self.writing() as cmd:
            return cmd.duplicate_branch(session_id, branch_id, expected_version=expected_version, group=group)

    def remove_branch(self, session_id: int, branch_id: int, *, expected_version: int | None = None) -> None:
        with self.writing() as cmd:
            cmd.remove_branch(session_id, branch_id, expected_version=expected_version)

    def focus_branch(
        self, session_id: int, branch_id: int, *, expected_version: int | None = None, group: int | None = None
    ) -> None:
        check_group(group)
        with self.writing() as cmd:
            cmd.focus_branch(session_id, branch_id, expected_version=expected_version, group=group)

    def rename_branch(self, session_id: int, branch_id: int, name: str, *, expected_version: int | None = None) -> None:
        """StoreError (one line) for a name that is empty after strip, longer than 40
        characters or holds control characters, and for the branch's current name."""
        name = check_branch_name(name)  # before taking the write lock
        with self.writing() as cmd:
            cmd.rename_branch(session_id, branch_id, name, expected_version=expected_version)

    def record_samples(
        self,
        session_id: int,
        branch_id: int,
        *,
        settings: Mapping[str, Any],
        seed: int,
        continuations: Sequence[Sequence[int]],
        names: Sequence[str],
        steps: int,
        expected_version: int | None = None,
    ) -> tuple[list[int], int]:
        """Samples as new branches, all in ONE transaction and ONE undo group (see
        :meth:`Commands.record_samples`). Returns (new branch ids, session version after)."""
        settings, seed, conts, names, steps = check_samples(settings, seed, continuations, names, steps)
        with self.writing() as cmd:
            return cmd.record_samples(
                session_id,
                branch_id,
                settings=settings,
                seed=seed,
                continuations=conts,
                names=names,
                steps=steps,
                expected_version=expected_version,
            )

    def reset_branch(self, session_id: int, branch_id: int, *, expected_version: int | None = None) -> None:
        with self.writing() as cmd:
            cmd.reset_branch(session_id, branch_id, expected_version=expected_version)

    def record_prompt_saved(
        self, session_id: int, branch_id: int, path: str, *, expected_version: int | None = None
    ) -> None:
        with self.writing() as cmd:
            cmd.record_prompt_saved(session_id, branch_id, path, expected_version=expected_version)

    def set_constraint(
        self, session_id: int, branch_id: int, name: str, pattern: str, *, depth: int | None = None,
        expected_version: int | None = None, group: int | None = None,
    ) -> None:
        """The regex constraint `name` on for the branch from `depth` (default: its current
        node); see :meth:`Commands.set_constraint`."""
        check_group(group)
        with self.writing() as cmd:
            cmd.set_constraint(session_id, branch_id, name, pattern, depth=depth,
                               expected_version=expected_version, group=group)

    def clear_constraint(
        self, session_id: int, branch_id: int, *, expected_version: int | None = None, group: int | None = None
    ) -> None:
        check_group(group)
        with self.writing() as cmd:
            cmd.clear_constraint(session_id, branch_id, expected_version=expected_version, group=group)

    def undo(self, session_id: int, *, expected_version: int | None = None) -> str | None:
        with self.writing() as cmd:
            return cmd.undo(session_id, expected_version=expected_version)

    # ------------------------------------------------------------------ reads (see Reader)

    def version(self, session_id: int) -> int:
        with self.reading() as r:
            return r.version(session_id)

    def events(self, session_id: int) -> list[Event]:
        with self.reading() as r:
            return r.events(session_id)

    def session(self, session_id: int) -> SessionInfo:
        with self.reading() as r:
            return r.session(session_id)

    def latest_session_id(self) -> int | None:
        with self.reading() as r:
            return r.latest_session_id()

    def list_sessions(self) -> list[SessionSummary]:
        with self.reading() as r:
            return r.list_sessions()

    def can_undo(self, session_id: int) -> bool:
        with self.reading() as r:
            return r.can_undo(session_id)

    def branches(self, session_id: int) -> list[Branch]:
        with self.reading() as r:
            return r.branches(session_id)

    def constraints(self, session_id: int) -> dict[int, Constraint]:
        """branch id -> its regex constraint, for the live branches that have one."""
        with self.reading() as r:
            return r.constraints(session_id)

    def node(self, node_id: int) -> Node:
        with self.reading() as r:
            return r.node(node_id)

    def path_nodes(self, node_id: int) -> list[Node]:
        with self.reading() as r:
            return r.path_nodes(node_id)

    def children(self, node_id: int) -> list[Node]:
        with self.reading() as r:
            return r.children([node_id])[int(node_id)]

    def session_nodes(self, session_id: int) -> list[Node]:
        with self.reading() as r:
            return r.session_nodes(session_id)

    def subtree_sizes(self, node_ids: Iterable[int]) -> dict[int, int]:
        with self.reading() as r:
            return r.subtree_sizes(node_ids)

    def get_outputs(self, prefix_keys: Sequence[bytes], fingerprint: str) -> dict[bytes, NodeOutput]:
        with self.reading() as r:
            return r.get_outputs(prefix_keys, fingerprint)

    def node_scores(self, session_id: int, fingerprint: str) -> dict[int, tuple[float | None, int | None, float, float]]:
        with self.reading() as r:
            return r.node_scores(session_id, fingerprint)

    def get_analysis(self, prefix_key: bytes, fingerprint: str) -> Analysis | None:
        with self.reading() as r:
            return r.get_analysis(prefix_key, fingerprint)

    def token_bytes(self, vocab_key: str, ids: Iterable[int]) -> dict[int, bytes]:
        with self.reading() as r:
            return r.token_bytes(vocab_key, ids)

    # ------------------------------------------------------------------ model-output cache (writes)

    def put_outputs(self, items: Sequence[tuple[bytes, NodeOutput]], fingerprint: str, *,
                    vocab_key: str | None = None, pieces: Mapping[int, bytes] | None = None) -> None:
        """Store many nodes' outputs (e.g. a whole prefill) in ONE transaction, with the
        token bytes (`pieces`, of `vocab_key`) they show."""
        items = list(items)
        if not items and not pieces:
            return
        with self.write_transaction() as conn:
            if items:
                cache.put_outputs(conn, items, fingerprint)
            if pieces:
                cache.put_token_bytes(conn, vocab_key, pieces, ())

    def put_analysis(self, prefix_key: bytes, fingerprint: str, analysis: Analysis) -> None:
        with self.write_transaction() as conn:
            cache.put_analysis(conn, prefix_key, fingerprint, analysis)

    def put_token_bytes(self, vocab_key: str, pieces: Mapping[int, bytes], special: Iterable[int] = ()) -> None:
        if not pieces:
            return
        with self.write_transaction() as conn:
            cache.put_token_bytes(conn, vocab_key, pieces, special)

    def special_ids(self, vocab_key: str) -> frozenset[int]:
        with self.reading() as r:
            return r.special_ids(vocab_key)

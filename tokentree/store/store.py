"""The Store facade: sessions, commands (one event each), reads and the model-output cache.

Every command runs in ONE ``BEGIN IMMEDIATE`` transaction that validates the command against
the projections, appends exactly one event and lets the projector update the projections.
Reads run in a deferred ``BEGIN`` (a consistent WAL snapshot). SQLite failures become
:class:`StoreError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, text
from sqlalchemy import exc as sa_exc

from tokentree.errors import ConcurrencyError, SessionNotFound, StoreError
from tokentree.outputs import Analysis, NodeOutput

from . import cache, migrate, projector
from . import events as ev
from .engine import enable_wal, make_engine
from .events import Event, dump_payload, utc_now
from .schema import B, E, F, N, O, S, SN
from .types import Branch, Node, RootPrompt, SessionInfo, SessionSummary


SQLITE_MAGIC = b"SQLite format 3\x00"

# Hot statements, built once.
_SEL_VERSION = select(func.max(E.c.version)).where(E.c.session_id == bindparam("sid"))
_INS_EVENT = insert(E)
_SEL_SESSION = select(S).where(S.c.id == bindparam("sid"))
_SEL_BRANCH = select(B).where(B.c.id == bindparam("bid"))
_SEL_BRANCH_NODE = select(B.c.node_id).where(B.c.id == bindparam("bid"))
_SEL_FOCUS = select(F.c.branch_id).where(F.c.session_id == bindparam("sid"))
_SEL_PARENT = select(N.c.parent_id).where(N.c.id == bindparam("nid"))
_SEL_NODE = select(N).where(N.c.id == bindparam("nid"))
_SEL_LIVE_BRANCHES = select(B).where(B.c.session_id == bindparam("sid"), B.c.removed.is_(False)).order_by(B.c.position)


def _one_line(text_: str) -> str:
    return " ".join(str(text_).split())


def _describe_db_error(exc: BaseException, path: Path) -> str:
    orig = getattr(exc, "orig", None) or exc
    msg = _one_line(str(orig))
    low = msg.lower()
    if "locked" in low or "busy" in low:
        return f"database {path} is locked by another process; close it there or try again"
    if "readonly" in low or "read-only" in low:
        return f"database {path} is read-only"
    if "disk is full" in low or "disk full" in low:
        return f"cannot write to {path}: the disk is full"
    if "not a database" in low or "malformed" in low:
        return f"{path} is damaged or not a tokentree database ({msg})"
    if "unable to open" in low:
        return f"cannot open database {path} ({msg})"
    return f"database error on {path}: {msg}"


def _check_file(path: Path) -> bool:
    """Refuse, without touching it, a file we must not open. Returns True when the file
    does not exist yet (or is empty)."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a database file")
    directory = path.parent
    if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write in {directory} (the database needs its -wal and -shm files there)")
    if not path.exists():
        return True
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path} is not a regular file")
    if not (st.st_mode & stat.S_IWUSR) or not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"database {path} is read-only (tokentree needs to write to it)")
    if st.st_size == 0:
        return True
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        if len(header) < 100 and SQLITE_MAGIC.startswith(header[:16]):
            raise StoreError(f"database {path} is truncated")
        raise StoreError(f"{path} is not a tokentree database (not an SQLite file)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise StoreError(f"database {path} is damaged (bad page size)")
    change_counter = header[24:28]
    page_count = int.from_bytes(header[28:32], "big")
    valid_for = header[92:96]
    wal = path.with_name(path.name + "-wal")
    wal_has_frames = wal.exists() and wal.stat().st_size > 32
    # With a non-empty WAL the main file may legitimately lag (an interrupted checkpoint);
    # SQLite recovers from the WAL, so only judge the size when there is none.
    if not wal_has_frames:
        if st.st_size % page_size:
            raise StoreError(f"database {path} is truncated")
        if page_count and valid_for == change_counter and st.st_size < page_count * page_size:
            raise StoreError(f"database {path} is truncated")
    return False


def _create_file(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _node(row) -> Node:
    return Node(
        id=row.id, parent_id=row.parent_id, token_id=row.token_id, depth=row.depth, prefix_key=bytes(row.prefix_key)
    )


def _session_info(row) -> SessionInfo:
    return SessionInfo(
        id=row.id,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        model_name=row.model_name,
        fingerprint=row.fingerprint,
        vocab_key=row.vocab_key,
        prompt_sources=tuple(json.loads(row.prompt_sources)),
    )


class Store:
    """The tokentree database. Open with :meth:`Store.open`; safe to share between threads
    (each call checks a pooled connection out for its own transaction)."""

    def __init__(self, path: Path, engine, write_engine) -> None:
        self.path = path
        self._engine = engine
        self._wengine = write_engine

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | Path, *, timeout: float = 5.0) -> Store:
        """Open (creating if needed) and migrate to head. StoreError, with the file left as
        it was, for: not a database, truncated, a newer schema, locked, read-only."""
        path = Path(path).expanduser().absolute()
        is_new = _check_file(path)
        if is_new:
            try:
                _create_file(path)
            except OSError as exc:
                raise StoreError(f"cannot create database {path}: {exc.strerror or exc}") from None
        engine, wengine = make_engine(path, timeout=timeout)
        store = cls(path, engine, wengine)
        try:
            with store._errors():
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
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except sa_exc.DBAPIError as exc:
            raise StoreError(_describe_db_error(exc, self.path)) from None
        except OSError as exc:
            raise StoreError(f"cannot use database {self.path}: {exc.strerror or exc}") from None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One BEGIN IMMEDIATE transaction, committed on success."""
        with self._errors(), self._wengine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._errors(), self._engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def reading(self) -> Iterator[Reader]:
        """Many reads in ONE deferred transaction (one consistent WAL snapshot):
        ``with store.reading() as r: r.branches(sid); r.children([...])``. The Reader is
        valid only inside the block; a write made meanwhile (by anyone) is not seen by it."""
        with self._read() as conn:
            yield Reader(self, conn)

    # ------------------------------------------------------------------ events (low level)

    def _version(self, conn: Connection, session_id: int) -> int:
        return conn.execute(_SEL_VERSION, {"sid": session_id}).scalar() or 0

    def _append(
        self, conn: Connection, session_id: int, type_: str, payload: dict[str, Any], expected_version: int | None
    ) -> Event:
        if type_ not in ev.EVENT_TYPES:
            raise StoreError(f"unknown event type {type_!r}")
        current = self._version(conn, session_id)
        expected = current if expected_version is None else expected_version
        if expected > current:
            raise ConcurrencyError(f"session {session_id} is at version {current}, not {expected}")
        created_at = utc_now()
        body = dump_payload(payload)
        try:
            seq = conn.execute(
                _INS_EVENT,
                dict(session_id=session_id, version=expected + 1, type=type_, payload=body, created_at=created_at),
            ).inserted_primary_key[0]
        except sa_exc.IntegrityError:
            raise ConcurrencyError(
                f"session {session_id} was changed by another tokentree process "
                f"(version {expected + 1} already exists); reopen the session"
            ) from None
        event = Event(
            seq=seq,
            session_id=session_id,
            version=expected + 1,
            type=type_,
            payload=json.loads(body),
            created_at=created_at,
        )
        projector.apply(conn, event)
        return event

    def append_event(self, session_id: int, type_: str, payload: dict[str, Any], *, expected_version: int) -> Event:
        """Low level: append one event at version `expected_version + 1` and project it.
        ConcurrencyError when that version exists already (another writer got there first).
        The commands below are the normal way in; this exists for tools and tests."""
        with self._write() as conn:
            return self._append(conn, session_id, type_, payload, expected_version)

    def version(self, session_id: int) -> int:
        """The session's latest event version (0: no events)."""
        with self._read() as conn:
            return self._version(conn, session_id)

    def events(self, session_id: int) -> list[Event]:
        with self._read() as conn:
            rows = conn.execute(select(E).where(E.c.session_id == session_id).order_by(E.c.version)).all()
            return [projector.row_to_event(r) for r in rows]

    # ------------------------------------------------------------------ sessions

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
        with self._write() as conn:
            sid = (conn.execute(select(func.max(E.c.session_id))).scalar() or 0) + 1
            payload = {
                "model_name": model_name,
                "fingerprint": fingerprint,
                "vocab_key": vocab_key,
                "prompt_sources": [str(s) for s in prompt_sources],
            }
            self._append(conn, sid, ev.SESSION_STARTED, payload, 0)
            for root in roots:
                self._create_branch(conn, sid, root.tokens, source=root.source, name=root.name)
            return sid

    def _session_row(self, conn: Connection, session_id: int):
        row = conn.execute(_SEL_SESSION, {"sid": session_id}).first()
        if row is None:
            raise SessionNotFound(f"no session {session_id} in {self.path}")
        return row

    def session(self, session_id: int) -> SessionInfo:
        with self._read() as conn:
            return _session_info(self._session_row(conn, session_id))

    def latest_session_id(self) -> int | None:
        with self._read() as conn:
            return conn.execute(select(S.c.id).order_by(S.c.last_seq.desc()).limit(1)).scalar()

    def list_sessions(self) -> list[SessionSummary]:
        with self._read() as conn:
            rows = conn.execute(select(S).order_by(S.c.last_seq.desc())).all()
            out = []
            for row in rows:
                info = _session_info(row)
                n_branches = conn.execute(
                    select(func.count()).select_from(B).where(B.c.session_id == row.id, B.c.removed.is_(False))
                ).scalar_one()
                n_nodes = conn.execute(
                    select(func.count()).select_from(SN).where(SN.c.session_id == row.id)
                ).scalar_one()
                out.append(
                    SessionSummary(
                        **info.__dict__,
                        n_branches=n_branches,
                        n_nodes=n_nodes,
                        first_line=self._first_line(conn, row),
                    )
                )
            return out

    def _first_line(self, conn: Connection, session_row, limit: int = 80) -> str:
        root = conn.execute(
            select(B.c.root_node_id)
            .where(B.c.session_id == session_row.id)
            .order_by(B.c.removed, B.c.position, B.c.id)
            .limit(1)
        ).scalar()
        fallback = ", ".join(json.loads(session_row.prompt_sources))
        if root is None:
            return fallback[:limit]
        ids = [n.token_id for n in self._path(conn, root)]
        pieces = cache.token_bytes(conn, session_row.vocab_key, ids)
        if any(i not in pieces for i in ids):
            return fallback[:limit]
        textual = b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
        for line in textual.splitlines():
            if line.strip():
                return line.strip()[:limit]
        return fallback[:limit]

    # ------------------------------------------------------------------ command helpers

    def _live_branch(self, conn: Connection, session_id: int, branch_id: int):
        self._session_row(conn, session_id)
        row = conn.execute(_SEL_BRANCH, {"bid": branch_id}).first()
        if row is None or row.session_id != session_id or row.removed:
            raise StoreError(f"no branch {branch_id} in session {session_id}")
        return row

    def _focus(self, conn: Connection, session_id: int) -> int | None:
        return conn.execute(_SEL_FOCUS, {"sid": session_id}).scalar()

    def _next_branch_id(self, conn: Connection) -> int:
        return (conn.execute(select(func.max(B.c.id))).scalar() or 0) + 1

    def _default_name(self, conn: Connection, session_id: int) -> str:
        n = conn.execute(select(func.count()).select_from(B).where(B.c.session_id == session_id)).scalar_one()
        return f"branch {n + 1}"

    def _live_count(self, conn: Connection, session_id: int) -> int:
        return conn.execute(
            select(func.count()).select_from(B).where(B.c.session_id == session_id, B.c.removed.is_(False))
        ).scalar_one()

    # ------------------------------------------------------------------ commands

    def create_branch(
        self, session_id: int, root_tokens: Sequence[int], *, source: str | None = None, name: str | None = None
    ) -> int:
        with self._write() as conn:
            return self._create_branch(conn, session_id, root_tokens, source=source, name=name)

    def _create_branch(
        self, conn: Connection, session_id: int, root_tokens: Sequence[int], *, source: str | None, name: str | None
    ) -> int:
        tokens = [int(t) for t in root_tokens]
        if not tokens:
            raise StoreError("a branch needs a prompt of at least one token")
        if any(t < 0 or t >= 1 << 32 for t in tokens):
            raise StoreError("token ids must be in [0, 2**32)")
        self._session_row(conn, session_id)
        branch_id = self._next_branch_id(conn)
        payload = {
            "branch_id": branch_id,
            "name": name if name is not None else self._default_name(conn, session_id),
            "position": self._live_count(conn, session_id),
            "root_tokens": tokens,
            "source": source,
            "prev_focus": self._focus(conn, session_id),
        }
        self._append(conn, session_id, ev.BRANCH_CREATED, payload, None)
        return branch_id

    def append_token(self, session_id: int, branch_id: int, token_id: int) -> int:
        token_id = int(token_id)
        if token_id < 0 or token_id >= 1 << 32:
            raise StoreError("token ids must be in [0, 2**32)")
        with self._write() as conn:
            branch = self._live_branch(conn, session_id, branch_id)
            payload = {"branch_id": branch_id, "token_id": token_id, "from_node": branch.node_id}
            self._append(conn, session_id, ev.TOKEN_APPENDED, payload, None)
            return conn.execute(_SEL_BRANCH_NODE, {"bid": branch_id}).scalar_one()

    def pop_token(self, session_id: int, branch_id: int) -> int:
        with self._write() as conn:
            branch = self._live_branch(conn, session_id, branch_id)
            parent = conn.execute(_SEL_PARENT, {"nid": branch.node_id}).scalar_one()
            if parent is None:
                raise StoreError("cannot pop the only token of the path")
            payload = {"branch_id": branch_id, "from_node": branch.node_id}
            self._append(conn, session_id, ev.TOKEN_POPPED, payload, None)
            return parent

    def move_branch(self, session_id: int, branch_id: int, node_id: int) -> None:
        with self._write() as conn:
            branch = self._live_branch(conn, session_id, branch_id)
            if conn.execute(select(N.c.id).where(N.c.id == node_id)).first() is None:
                raise StoreError(f"no node {node_id}")
            payload = {"branch_id": branch_id, "node_id": int(node_id), "from_node": branch.node_id}
            self._append(conn, session_id, ev.BRANCH_MOVED, payload, None)

    def duplicate_branch(self, session_id: int, branch_id: int) -> int:
        with self._write() as conn:
            src = self._live_branch(conn, session_id, branch_id)
            new_id = self._next_branch_id(conn)
            payload = {
                "source_branch_id": branch_id,
                "branch_id": new_id,
                "name": self._default_name(conn, session_id),
                "position": src.position + 1,
                "prev_focus": self._focus(conn, session_id),
            }
            self._append(conn, session_id, ev.BRANCH_DUPLICATED, payload, None)
            return new_id

    def remove_branch(self, session_id: int, branch_id: int) -> None:
        with self._write() as conn:
            branch = self._live_branch(conn, session_id, branch_id)
            if self._live_count(conn, session_id) <= 1:
                raise StoreError("cannot remove the last branch")
            focus = self._focus(conn, session_id)
            new_focus = focus
            if focus == branch_id or focus is None:
                # the neighbour: the branch after it, else the one before it
                after = conn.execute(
                    select(B.c.id).where(
                        B.c.session_id == session_id, B.c.removed.is_(False), B.c.position == branch.position + 1
                    )
                ).scalar()
                before = conn.execute(
                    select(B.c.id).where(
                        B.c.session_id == session_id, B.c.removed.is_(False), B.c.position == branch.position - 1
                    )
                ).scalar()
                new_focus = after if after is not None else before
            payload = {
                "branch_id": branch_id,
                "position": branch.position,
                "prev_focus": focus,
                "new_focus": new_focus,
            }
            self._append(conn, session_id, ev.BRANCH_REMOVED, payload, None)

    def focus_branch(self, session_id: int, branch_id: int) -> None:
        with self._write() as conn:
            self._live_branch(conn, session_id, branch_id)
            payload = {"branch_id": branch_id, "prev_focus": self._focus(conn, session_id)}
            self._append(conn, session_id, ev.BRANCH_FOCUSED, payload, None)

    def reset_branch(self, session_id: int, branch_id: int) -> None:
        with self._write() as conn:
            branch = self._live_branch(conn, session_id, branch_id)
            payload = {"branch_id": branch_id, "from_node": branch.node_id}
            self._append(conn, session_id, ev.BRANCH_RESET, payload, None)

    def record_prompt_saved(self, session_id: int, branch_id: int, path: str) -> None:
        with self._write() as conn:
            self._live_branch(conn, session_id, branch_id)
            payload = {"branch_id": branch_id, "path": str(path)}
            self._append(conn, session_id, ev.PROMPT_SAVED, payload, None)

    def _undo_target(self, conn: Connection, session_id: int):
        undone = select(func.json_extract(E.c.payload, "$.target_seq")).where(
            E.c.session_id == session_id, E.c.type == ev.UNDO
        )
        target = conn.execute(
            select(E.c.seq, E.c.type)
            .where(E.c.session_id == session_id, E.c.type.in_(sorted(ev.UNDOABLE)), E.c.seq.not_in(undone))
            .order_by(E.c.seq.desc())
            .limit(1)
        ).first()
        # Undo history ends at the last branch: a session always keeps at least one.
        if target is not None and target.type == ev.BRANCH_CREATED and self._live_count(conn, session_id) <= 1:
            return None
        return target

    def undo(self, session_id: int) -> str | None:
        with self._write() as conn:
            self._session_row(conn, session_id)
            target = self._undo_target(conn, session_id)
            if target is None:
                return None
            self._append(conn, session_id, ev.UNDO, {"target_seq": target.seq, "target_type": target.type}, None)
            return target.type

    def can_undo(self, session_id: int) -> bool:
        with self._read() as conn:
            return self._undo_target(conn, session_id) is not None

    # ------------------------------------------------------------------ reads

    def branches(self, session_id: int) -> list[Branch]:
        with self._read() as conn:
            return self._branches(conn, session_id)

    def _branches(self, conn: Connection, session_id: int) -> list[Branch]:
        self._session_row(conn, session_id)
        focus = self._focus(conn, session_id)
        rows = conn.execute(_SEL_LIVE_BRANCHES, {"sid": session_id}).all()
        return [
            Branch(
                id=r.id,
                session_id=r.session_id,
                name=r.name,
                position=r.position,
                node_id=r.node_id,
                root_node_id=r.root_node_id,
                focused=r.id == focus,
                source=r.source,
            )
            for r in rows
        ]

    def node(self, node_id: int) -> Node:
        with self._read() as conn:
            row = conn.execute(_SEL_NODE, {"nid": node_id}).first()
            if row is None:
                raise StoreError(f"no node {node_id}")
            return _node(row)

    def _path(self, conn: Connection, node_id: int) -> list[Node]:
        rows = conn.execute(
            text(
                "WITH RECURSIVE anc(id) AS (SELECT :n UNION ALL "
                "SELECT nodes.parent_id FROM nodes JOIN anc ON nodes.id = anc.id "
                "WHERE nodes.parent_id IS NOT NULL) "
                "SELECT nodes.* FROM nodes JOIN anc ON nodes.id = anc.id ORDER BY nodes.depth"
            ),
            {"n": node_id},
        ).all()
        if not rows:
            raise StoreError(f"no node {node_id}")
        return [_node(r) for r in rows]

    def path_nodes(self, node_id: int) -> list[Node]:
        with self._read() as conn:
            return self._path(conn, node_id)

    def children(self, node_id: int) -> list[Node]:
        """Every child of the node in the whole node table (all sessions), oldest first."""
        with self._read() as conn:
            return [_node(r) for r in conn.execute(select(N).where(N.c.parent_id == node_id).order_by(N.c.id))]

    def session_nodes(self, session_id: int) -> list[Node]:
        with self._read() as conn:
            self._session_row(conn, session_id)
            rows = conn.execute(
                select(N.c.id, N.c.parent_id, N.c.token_id, N.c.depth, N.c.prefix_key)
                .join(SN, SN.c.node_id == N.c.id)
                .where(SN.c.session_id == session_id)
                .order_by(N.c.id)
            ).all()
            # Positional construction: this runs once per node of a possibly huge tree.
            return [Node(i, p, t, d, bytes(k)) for i, p, t, d, k in rows]

    def subtree_sizes(self, node_ids: Iterable[int]) -> dict[int, int]:
        """For each node, the number of its descendants (the node itself not counted) in the
        whole node table. Unknown ids are left out."""
        ids = list(dict.fromkeys(int(i) for i in node_ids))
        out: dict[int, int] = {}
        with self._read() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join(str(x) for x in chunk)  # ints only: safe to inline
                rows = conn.execute(
                    text(
                        "WITH RECURSIVE d(start, id) AS ("
                        f"SELECT id, id FROM nodes WHERE id IN ({marks}) UNION ALL "
                        "SELECT d.start, nodes.id FROM nodes JOIN d ON nodes.parent_id = d.id) "
                        "SELECT start, count(*) - 1 FROM d GROUP BY start"
                    )
                ).all()
                out.update({start: n for start, n in rows})
        return out

    # ------------------------------------------------------------------ model-output cache

    def get_outputs(self, prefix_keys: Sequence[bytes], fingerprint: str) -> dict[bytes, NodeOutput]:
        with self._read() as conn:
            return cache.get_outputs(conn, prefix_keys, fingerprint)

    def node_scores(self, session_id: int, fingerprint: str) -> dict[int, tuple[float | None, int | None, float, float]]:
        """node id -> (token_prob, token_rank, entropy, norm_entropy) for every node of the
        session with output cached under `fingerprint`: one query over the light columns,
        no top-K blobs, for exports of big trees."""
        with self._read() as conn:
            mid = cache.model_id(conn, fingerprint, create=False)
            if mid is None:
                return {}
            rows = conn.execute(
                select(SN.c.node_id, O.c.token_prob, O.c.token_rank, O.c.entropy, O.c.norm_entropy)
                .join(N, N.c.id == SN.c.node_id)
                .join(O, (O.c.prefix_key == N.c.prefix_key) & (O.c.model_id == mid))
                .where(SN.c.session_id == session_id)
            ).all()
            return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def put_outputs(self, items: Sequence[tuple[bytes, NodeOutput]], fingerprint: str) -> None:
        """Store many nodes' outputs (e.g. a whole prefill) in ONE transaction."""
        items = list(items)
        if not items:
            return
        with self._write() as conn:
            cache.put_outputs(conn, items, fingerprint)

    def get_analysis(self, prefix_key: bytes, fingerprint: str) -> Analysis | None:
        with self._read() as conn:
            return cache.get_analysis(conn, prefix_key, fingerprint)

    def put_analysis(self, prefix_key: bytes, fingerprint: str, analysis: Analysis) -> None:
        with self._write() as conn:
            cache.put_analysis(conn, prefix_key, fingerprint, analysis)

    def put_token_bytes(self, vocab_key: str, pieces: Mapping[int, bytes]) -> None:
        if not pieces:
            return
        with self._write() as conn:
            cache.put_token_bytes(conn, vocab_key, pieces)

    def token_bytes(self, vocab_key: str, ids: Iterable[int]) -> dict[int, bytes]:
        with self._read() as conn:
            return cache.token_bytes(conn, vocab_key, ids)


_SEL_MAX_NODE_ID = select(func.max(N.c.id))
_SEL_NODES_AFTER = select(N).where(N.c.id > bindparam("after")).order_by(N.c.id).limit(bindparam("limit"))
_SEL_NODES_IN = select(N).where(N.c.id.in_(bindparam("ids", expanding=True)))
_SEL_CHILDREN_IN = select(N).where(N.c.parent_id.in_(bindparam("ids", expanding=True))).order_by(N.c.id)
_SEL_SESSION_TREE = (
    select(N.c.id, N.c.parent_id, N.c.token_id)
    .join(SN, SN.c.node_id == N.c.id)
    .where(SN.c.session_id == bindparam("sid"))
    .order_by(N.c.id)
)
_SEL_SESSION_NODE_COUNT = select(func.count()).select_from(SN).where(SN.c.session_id == bindparam("sid"))
_CHUNK = 500  # bound on SQL parameters per IN (...)


class Reader:
    """Read-only queries inside one transaction of :meth:`Store.reading`. Batched forms of
    the Store's reads (many nodes, paths or children per statement) plus the cheap marks a
    cache needs to know whether it is still valid. Node ids are never reused and nodes never
    change, so a Node read once stays true; only "which nodes exist" grows."""

    def __init__(self, store: Store, conn: Connection) -> None:
        self._store = store
        self._conn = conn

    def branches(self, session_id: int) -> list[Branch]:
        """As Store.branches (SessionNotFound for an unknown session)."""
        return self._store._branches(self._conn, session_id)

    def session_seq(self, session_id: int) -> int:
        """The seq of the session's latest event (SessionNotFound for an unknown session).
        The session's branches are a function of its events: while this is unchanged, so is
        what :meth:`branches` returns."""
        return self._store._session_row(self._conn, session_id).last_seq

    def max_node_id(self) -> int:
        """The highest node id in the whole node table (0 when empty). Ids are allocated
        max+1 and never deleted, so an unchanged value means no node was added anywhere."""
        return self._conn.execute(_SEL_MAX_NODE_ID).scalar() or 0

    def nodes_after(self, node_id: int, limit: int) -> list[Node] | None:
        """Every node with an id above `node_id`, oldest first; None if there are more than
        `limit` of them."""
        rows = self._conn.execute(_SEL_NODES_AFTER, {"after": int(node_id), "limit": int(limit) + 1}).all()
        if len(rows) > limit:
            return None
        return [_node(r) for r in rows]

    def nodes(self, node_ids: Iterable[int]) -> dict[int, Node]:
        """id -> Node for the given ids; unknown ids are left out."""
        ids = list(dict.fromkeys(int(i) for i in node_ids))
        out: dict[int, Node] = {}
        for i in range(0, len(ids), _CHUNK):
            for r in self._conn.execute(_SEL_NODES_IN, {"ids": ids[i : i + _CHUNK]}):
                out[r.id] = _node(r)
        return out

    def paths(self, node_ids: Iterable[int]) -> dict[int, Node]:
        """Every node on the paths (root .. node) of the given nodes, each once, by id: the
        union of what Store.path_nodes would return for each. Unknown ids add nothing."""
        ids = list(dict.fromkeys(int(i) for i in node_ids))
        out: dict[int, Node] = {}
        for i in range(0, len(ids), _CHUNK):
            marks = ",".join(str(x) for x in ids[i : i + _CHUNK])  # ints only: safe to inline
            rows = self._conn.execute(
                text(
                    "WITH RECURSIVE anc(id) AS ("
                    f"SELECT id FROM nodes WHERE id IN ({marks}) UNION "
                    "SELECT nodes.parent_id FROM nodes JOIN anc ON nodes.id = anc.id "
                    "WHERE nodes.parent_id IS NOT NULL) "
                    "SELECT nodes.* FROM nodes JOIN anc ON nodes.id = anc.id"
                )
            ).all()
            for r in rows:
                out[r.id] = _node(r)
        return out

    def children(self, node_ids: Iterable[int]) -> dict[int, list[Node]]:
        """parent id -> its children (whole node table, oldest first, as Store.children),
        for every given id (an empty list for a leaf or an unknown id)."""
        ids = list(dict.fromkeys(int(i) for i in node_ids))
        out: dict[int, list[Node]] = {i: [] for i in ids}
        for i in range(0, len(ids), _CHUNK):
            for r in self._conn.execute(_SEL_CHILDREN_IN, {"ids": ids[i : i + _CHUNK]}):
                out[r.parent_id].append(_node(r))
        return out

    def subtree_links(self, node_ids: Iterable[int]) -> list[tuple[int, int | None]]:
        """(id, parent id) of every node in the subtrees of the given nodes (the nodes
        themselves included, each node once), over the whole node table: enough to count
        every descendant of every node in those subtrees (Store.subtree_sizes, in bulk)."""
        ids = list(dict.fromkeys(int(i) for i in node_ids))
        out: dict[int, int | None] = {}
        for i in range(0, len(ids), _CHUNK):
            marks = ",".join(str(x) for x in ids[i : i + _CHUNK])  # ints only: safe to inline
            rows = self._conn.execute(
                text(
                    "WITH RECURSIVE d(id, parent_id) AS ("
                    f"SELECT id, parent_id FROM nodes WHERE id IN ({marks}) UNION "
                    "SELECT nodes.id, nodes.parent_id FROM nodes JOIN d ON nodes.parent_id = d.id) "
                    "SELECT id, parent_id FROM d"
                )
            ).all()
            out.update(rows)
        return list(out.items())

    def session_node_count(self, session_id: int) -> int:
        """How many nodes the session has explored (the set only grows)."""
        return self._conn.execute(_SEL_SESSION_NODE_COUNT, {"sid": session_id}).scalar_one()

    def session_tree(self, session_id: int) -> list[tuple[int, int | None, int]]:
        """(id, parent id, token id) of every node of the session, by id: the light form of
        Store.session_nodes."""
        self._store._session_row(self._conn, session_id)
        return [tuple(r) for r in self._conn.execute(_SEL_SESSION_TREE, {"sid": session_id})]

    def get_outputs(self, prefix_keys: Sequence[bytes], fingerprint: str) -> dict[bytes, NodeOutput]:
        return cache.get_outputs(self._conn, prefix_keys, fingerprint)

    def output_probs(self, prefix_keys: Sequence[bytes], fingerprint: str) -> dict[bytes, float | None]:
        """prefix key -> the node's own token probability, for every key with an output
        cached under `fingerprint` (the light column only, no top-K blobs)."""
        mid = cache.model_id(self._conn, fingerprint, create=False)
        out: dict[bytes, float | None] = {}
        if mid is None:
            return out
        keys = list(dict.fromkeys(bytes(k) for k in prefix_keys))
        for i in range(0, len(keys), _CHUNK):
            rows = self._conn.execute(
                select(O.c.prefix_key, O.c.token_prob).where(O.c.model_id == mid, O.c.prefix_key.in_(keys[i : i + _CHUNK]))
            )
            out.update((bytes(k), p) for k, p in rows)
        return out

    def get_analysis(self, prefix_key: bytes, fingerprint: str) -> Analysis | None:
        return cache.get_analysis(self._conn, prefix_key, fingerprint)

    def token_bytes(self, vocab_key: str, ids: Iterable[int]) -> dict[int, bytes]:
        return cache.token_bytes(self._conn, vocab_key, ids)

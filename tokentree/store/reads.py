"""Reader: every read query of the store, each implemented once, on one open connection.

:meth:`Store.reading` gives a Reader inside ONE deferred read transaction (a consistent WAL
snapshot); the Store's one-call read methods are wrappers around it, and the commands use a
Reader on their own write connection to validate against the projections. Node ids are never
reused and nodes never change, so a Node read once stays true; only "which nodes exist" grows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import Connection, bindparam, func, select, text

from tokentree.errors import SessionNotFound, StoreError
from tokentree.outputs import Analysis, NodeOutput

from . import cache
from .events import BRANCH_CREATED, BRANCH_DUPLICATED, BRANCH_REMOVED, UNDO, UNDOABLE, Event, event_from_row
from .schema import branches_t, constraints_t, events_t, focus_t, nodes_t, outputs_t, session_nodes_t, sessions_t
from .types import Branch, Constraint, Node, SessionInfo, SessionSummary

_CHUNK = 500  # bound on SQL parameters per IN (...)

# Hot statements, built once.
_SEL_SESSION = select(sessions_t).where(sessions_t.c.id == bindparam("sid"))
_SEL_VERSION = select(func.max(events_t.c.version)).where(events_t.c.session_id == bindparam("sid"))
_SEL_FOCUS = select(focus_t.c.branch_id).where(focus_t.c.session_id == bindparam("sid"))
_SEL_LIVE_BRANCHES = (
    select(branches_t)
    .where(branches_t.c.session_id == bindparam("sid"), branches_t.c.removed.is_(False))
    .order_by(branches_t.c.position)
)
_SEL_LIVE_BRANCH_COUNT = (
    select(func.count())
    .select_from(branches_t)
    .where(branches_t.c.session_id == bindparam("sid"), branches_t.c.removed.is_(False))
)
_SEL_MAX_NODE_ID = select(func.max(nodes_t.c.id))
_SEL_NODES_AFTER = (
    select(nodes_t).where(nodes_t.c.id > bindparam("after")).order_by(nodes_t.c.id).limit(bindparam("limit"))
)
_SEL_NODES_IN = select(nodes_t).where(nodes_t.c.id.in_(bindparam("ids", expanding=True)))
_SEL_CHILDREN_IN = (
    select(nodes_t).where(nodes_t.c.parent_id.in_(bindparam("ids", expanding=True))).order_by(nodes_t.c.id)
)
_SEL_SESSION_NODES = (
    select(nodes_t.c.id, nodes_t.c.parent_id, nodes_t.c.token_id, nodes_t.c.depth, nodes_t.c.prefix_key)
    .join(session_nodes_t, session_nodes_t.c.node_id == nodes_t.c.id)
    .where(session_nodes_t.c.session_id == bindparam("sid"))
    .order_by(nodes_t.c.id)
)
_SEL_SESSION_TREE = (
    select(nodes_t.c.id, nodes_t.c.parent_id, nodes_t.c.token_id)
    .join(session_nodes_t, session_nodes_t.c.node_id == nodes_t.c.id)
    .where(session_nodes_t.c.session_id == bindparam("sid"))
    .order_by(nodes_t.c.id)
)
# Undoable events of a session not undone yet, newest first (a session's versions follow its
# seq order; the (session_id, version) index walks it backwards), with their group. An undo
# row names its targets as target_seqs (v2) or target_seq (v1 rows, never rewritten).
_SEL_UNDO_CANDIDATES = text(
    "SELECT seq, type, json_extract(payload, '$.group') AS grp FROM events "
    "WHERE session_id = :sid AND type IN (%s) AND seq NOT IN ("
    " SELECT json_extract(payload, '$.target_seq') FROM events"
    " WHERE session_id = :sid AND type = :undo AND json_extract(payload, '$.target_seq') IS NOT NULL"
    " UNION ALL"
    " SELECT j.value FROM events, json_each(events.payload, '$.target_seqs') AS j"
    " WHERE events.session_id = :sid AND events.type = :undo"
    ") ORDER BY version DESC" % ", ".join("'%s'" % t for t in sorted(UNDOABLE))
)
# How undoing an event changes the number of live branches.
_LIVE_CHANGE = {BRANCH_CREATED: -1, BRANCH_DUPLICATED: -1, BRANCH_REMOVED: +1}
_SEL_SESSION_NODE_COUNT = (
    select(func.count()).select_from(session_nodes_t).where(session_nodes_t.c.session_id == bindparam("sid"))
)


def _ids(values: Iterable[int]) -> list[int]:
    """Distinct ints, first-seen order."""
    return list(dict.fromkeys(int(i) for i in values))


def _chunks(ids: list, n: int = _CHUNK):
    for i in range(0, len(ids), n):
        yield ids[i : i + n]


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
        chat=None if row.chat is None else json.loads(row.chat),
    )


class Reader:
    """Read-only queries on one connection (valid only inside the transaction it came with)."""

    def __init__(self, conn: Connection, db_path: Path) -> None:
        self.conn = conn
        self.db_path = db_path  # for messages

    # ------------------------------------------------------------------ sessions and events

    def session_row(self, session_id: int):
        """The session's projection row (SessionNotFound for an unknown session)."""
        row = self.conn.execute(_SEL_SESSION, {"sid": session_id}).first()
        if row is None:
            raise SessionNotFound(f"no session {session_id} in {self.db_path}")
        return row

    def session(self, session_id: int) -> SessionInfo:
        return _session_info(self.session_row(session_id))

    def version(self, session_id: int) -> int:
        """The session's latest event version (0: no events, or no such session)."""
        return self.conn.execute(_SEL_VERSION, {"sid": session_id}).scalar() or 0

    def session_version(self, session_id: int) -> int:
        """As :meth:`version`, but SessionNotFound for an unknown session. A command built
        from what this transaction read passes it as ``expected_version``."""
        self.session_row(session_id)
        return self.version(session_id)

    def events(self, session_id: int) -> list[Event]:
        rows = self.conn.execute(
            select(events_t).where(events_t.c.session_id == session_id).order_by(events_t.c.version)
        ).all()
        return [event_from_row(r) for r in rows]

    def latest_session_id(self) -> int | None:
        return self.conn.execute(select(sessions_t.c.id).order_by(sessions_t.c.last_seq.desc()).limit(1)).scalar()

    def list_sessions(self) -> list[SessionSummary]:
        """Every session, the most recently used first."""
        out = []
        for row in self.conn.execute(select(sessions_t).order_by(sessions_t.c.last_seq.desc())).all():
            out.append(
                SessionSummary(
                    **_session_info(row).__dict__,
                    n_branches=self.live_branch_count(row.id),
                    n_nodes=self.session_node_count(row.id),
                    first_line=self._first_line(row),
                )
            )
        return out

    def _first_line(self, session_row, limit: int = 80) -> str:
        root = self.conn.execute(
            select(branches_t.c.root_node_id)
            .where(branches_t.c.session_id == session_row.id)
            .order_by(branches_t.c.removed, branches_t.c.position, branches_t.c.id)
            .limit(1)
        ).scalar()
        fallback = ", ".join(json.loads(session_row.prompt_sources))
        if root is None:
            return fallback[:limit]
        ids = [n.token_id for n in self.path_nodes(root)]
        pieces = self.token_bytes(session_row.vocab_key, ids)
        if any(i not in pieces for i in ids):
            return fallback[:limit]
        textual = b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
        for line in textual.splitlines():
            if line.strip():
                return line.strip()[:limit]
        return fallback[:limit]

    # ------------------------------------------------------------------ branches and undo

    def branches(self, session_id: int) -> list[Branch]:
        """The live branches in display order (SessionNotFound for an unknown session)."""
        self.session_row(session_id)
        focus = self.focus(session_id)
        rows = self.conn.execute(_SEL_LIVE_BRANCHES, {"sid": session_id}).all()
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
                messages=None if r.messages is None else tuple(json.loads(r.messages)),
            )
            for r in rows
        ]

    def constraints(self, session_id: int) -> dict[int, Constraint]:
        """branch id -> its regex constraint, for the session's live branches that have one."""
        rows = self.conn.execute(
            select(constraints_t)
            .join(branches_t, branches_t.c.id == constraints_t.c.branch_id)
            .where(constraints_t.c.session_id == session_id, branches_t.c.removed.is_(False))
        ).all()
        return {r.branch_id: Constraint(r.branch_id, r.name, r.pattern, r.depth) for r in rows}

    def constraint(self, branch_id: int) -> Constraint | None:
        row = self.conn.execute(select(constraints_t).where(constraints_t.c.branch_id == branch_id)).first()
        return None if row is None else Constraint(row.branch_id, row.name, row.pattern, row.depth)

    def focus(self, session_id: int) -> int | None:
        """The focused branch's id (None: no focus)."""
        return self.conn.execute(_SEL_FOCUS, {"sid": session_id}).scalar()

    def live_branch_count(self, session_id: int) -> int:
        return self.conn.execute(_SEL_LIVE_BRANCH_COUNT, {"sid": session_id}).scalar_one()

    def undo_targets(self, session_id: int) -> list:
        """(seq, type) rows of the events an undo would revert now, newest first; empty when
        there is nothing to undo. That is the latest undoable event not yet undone and, when
        it has a group, the older not-undone undoable events right before it with the same
        group (the group's newest unbroken run)."""
        run: list = []
        result = self.conn.execute(_SEL_UNDO_CANDIDATES, {"sid": session_id, "undo": UNDO})
        try:
            for row in result:  # newest first; stop at the end of the run
                if run and row.grp != run[0].grp:
                    break
                run.append(row)
                if row.grp is None:
                    break  # an event without a group is undone alone
        finally:
            result.close()
        if not run:
            return []
        # Undo history ends at the last branch: a session always keeps at least one.
        change = sum(_LIVE_CHANGE.get(r.type, 0) for r in run)
        if self.live_branch_count(session_id) + change < 1:
            return []
        return [(r.seq, r.type) for r in run]

    def undo_target(self, session_id: int):
        """(seq, type) of the newest event an undo would revert now, or None."""
        targets = self.undo_targets(session_id)
        return targets[0] if targets else None

    def can_undo(self, session_id: int) -> bool:
        return self.undo_target(session_id) is not None

    # ------------------------------------------------------------------ nodes

    def max_node_id(self) -> int:
        """The highest node id in the whole node table (0 when empty). Ids are allocated
        max+1 and never deleted, so an unchanged value means no node was added anywhere."""
        return self.conn.execute(_SEL_MAX_NODE_ID).scalar() or 0

    def nodes_after(self, node_id: int, limit: int) -> list[Node] | None:
        """Every node with an id above `node_id`, oldest first; None if there are more than
        `limit` of them."""
        rows = self.conn.execute(_SEL_NODES_AFTER, {"after": int(node_id), "limit": int(limit) + 1}).all()
        if len(rows) > limit:
            return None
        return [_node(r) for r in rows]

    def nodes(self, node_ids: Iterable[int]) -> dict[int, Node]:
        """id -> Node for the given ids; unknown ids are left out."""
        out: dict[int, Node] = {}
        for chunk in _chunks(_ids(node_ids)):
            for r in self.conn.execute(_SEL_NODES_IN, {"ids": chunk}):
                out[r.id] = _node(r)
        return out

    def node(self, node_id: int) -> Node:
        """One node (StoreError if there is none with that id)."""
        found = self.nodes([node_id])
        if not found:
            raise StoreError(f"no node {node_id}")
        return found[int(node_id)]

    def paths(self, node_ids: Iterable[int]) -> dict[int, Node]:
        """Every node on the paths (root .. node) of the given nodes, each once, by id: the
        union of what :meth:`path_nodes` returns for each. Unknown ids add nothing."""
        out: dict[int, Node] = {}
        for chunk in _chunks(_ids(node_ids)):
            marks = ",".join(str(x) for x in chunk)  # ints only: safe to inline
            rows = self.conn.execute(
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

    def path_nodes(self, node_id: int) -> list[Node]:
        """The path root .. node, root first (StoreError for an unknown node)."""
        path = sorted(self.paths([node_id]).values(), key=lambda n: n.depth)
        if not path:
            raise StoreError(f"no node {node_id}")
        return path

    def children(self, node_ids: Iterable[int]) -> dict[int, list[Node]]:
        """parent id -> its children in the whole node table (all sessions), oldest first,
        for every given id (an empty list for a leaf or an unknown id)."""
        ids = _ids(node_ids)
        out: dict[int, list[Node]] = {i: [] for i in ids}
        for chunk in _chunks(ids):
            for r in self.conn.execute(_SEL_CHILDREN_IN, {"ids": chunk}):
                out[r.parent_id].append(_node(r))
        return out

    def subtree_sizes(self, node_ids: Iterable[int]) -> dict[int, int]:
        """For each node, the number of its descendants (the node itself not counted) in the
        whole node table. Unknown ids are left out."""
        out: dict[int, int] = {}
        for chunk in _chunks(_ids(node_ids)):
            marks = ",".join(str(x) for x in chunk)  # ints only: safe to inline
            rows = self.conn.execute(
                text(
                    "WITH RECURSIVE d(start, id) AS ("
                    f"SELECT id, id FROM nodes WHERE id IN ({marks}) UNION ALL "
                    "SELECT d.start, nodes.id FROM nodes JOIN d ON nodes.parent_id = d.id) "
                    "SELECT start, count(*) - 1 FROM d GROUP BY start"
                )
            ).all()
            out.update({start: n for start, n in rows})
        return out

    def subtree_links(self, node_ids: Iterable[int]) -> list[tuple[int, int | None]]:
        """(id, parent id) of every node in the subtrees of the given nodes (the nodes
        themselves included, each node once), over the whole node table: enough to count
        every descendant of every node in those subtrees (:meth:`subtree_sizes`, in bulk)."""
        out: dict[int, int | None] = {}
        for chunk in _chunks(_ids(node_ids)):
            marks = ",".join(str(x) for x in chunk)  # ints only: safe to inline
            rows = self.conn.execute(
                text(
                    "WITH RECURSIVE d(id, parent_id) AS ("
                    f"SELECT id, parent_id FROM nodes WHERE id IN ({marks}) UNION "
                    "SELECT nodes.id, nodes.parent_id FROM nodes JOIN d ON nodes.parent_id = d.id) "
                    "SELECT id, parent_id FROM d"
                )
            ).all()
            out.update(rows)
        return list(out.items())

    def session_nodes(self, session_id: int) -> list[Node]:
        """Every node the session has explored, by id (SessionNotFound for an unknown session)."""
        self.session_row(session_id)
        rows = self.conn.execute(_SEL_SESSION_NODES, {"sid": session_id}).all()
        # Positional construction: this runs once per node of a possibly huge tree.
        return [Node(i, p, t, d, bytes(k)) for i, p, t, d, k in rows]

    def session_tree(self, session_id: int) -> list[tuple[int, int | None, int]]:
        """(id, parent id, token id) of every node of the session, by id: the light form of
        :meth:`session_nodes`."""
        self.session_row(session_id)
        return [tuple(r) for r in self.conn.execute(_SEL_SESSION_TREE, {"sid": session_id})]

    def session_node_count(self, session_id: int) -> int:
        """How many nodes the session has explored (the set only grows)."""
        return self.conn.execute(_SEL_SESSION_NODE_COUNT, {"sid": session_id}).scalar_one()

    # ------------------------------------------------------------------ model-output cache

    def get_outputs(self, prefix_keys: Sequence[bytes], fingerprint: str) -> dict[bytes, NodeOutput]:
        return cache.get_outputs(self.conn, prefix_keys, fingerprint)

    def output_probs(self, prefix_keys: Sequence[bytes], fingerprint: str) -> dict[bytes, float | None]:
        """prefix key -> the node's own token probability, for every key with an output
        cached under `fingerprint` (the light column only, no top-K blobs)."""
        mid = cache.model_id(self.conn, fingerprint, create=False)
        out: dict[bytes, float | None] = {}
        if mid is None:
            return out
        keys = list(dict.fromkeys(bytes(k) for k in prefix_keys))
        for chunk in _chunks(keys):
            rows = self.conn.execute(
                select(outputs_t.c.prefix_key, outputs_t.c.token_prob).where(
                    outputs_t.c.model_id == mid, outputs_t.c.prefix_key.in_(chunk)
                )
            )
            out.update((bytes(k), p) for k, p in rows)
        return out

    def node_scores(self, session_id: int, fingerprint: str) -> dict[int, tuple[float | None, int | None, float, float]]:
        """node id -> (token_prob, token_rank, entropy, norm_entropy) for every node of the
        session with output cached under `fingerprint`: one query over the light columns,
        no top-K blobs, for exports of big trees."""
        mid = cache.model_id(self.conn, fingerprint, create=False)
        if mid is None:
            return {}
        o = outputs_t.c
        rows = self.conn.execute(
            select(session_nodes_t.c.node_id, o.token_prob, o.token_rank, o.entropy, o.norm_entropy)
            .join(nodes_t, nodes_t.c.id == session_nodes_t.c.node_id)
            .join(outputs_t, (o.prefix_key == nodes_t.c.prefix_key) & (o.model_id == mid))
            .where(session_nodes_t.c.session_id == session_id)
        ).all()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def get_analysis(self, prefix_key: bytes, fingerprint: str) -> Analysis | None:
        return cache.get_analysis(self.conn, prefix_key, fingerprint)

    def token_bytes(self, vocab_key: str, ids: Iterable[int]) -> dict[int, bytes]:
        return cache.token_bytes(self.conn, vocab_key, ids)

    def special_ids(self, vocab_key: str) -> frozenset[int]:
        return cache.special_ids(self.conn, vocab_key)

"""The projector: the ONLY code that writes the projection tables.

``apply(conn, event)`` is a deterministic function of the event and the projection tables
(plus, for ``undo``, the event it reverts). The Store calls it in the same transaction that
appends the event; ``rebuild`` calls it for every event in seq order on wiped tables. Because
both paths run the same code in the same order, they produce identical rows, ids included:

* node ids: INTEGER PRIMARY KEY, allocated max+1 on first sight of a prefix; nodes are never
  deleted (except all at once by rebuild), so the allocation order is the event order;
* branch ids: chosen by the command (max+1 over every branch row, removed ones included,
  so never reused) and recorded in the payload.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tokentree.errors import StoreError

from .events import (
    BranchCreated,
    BranchDuplicated,
    BranchFocused,
    BranchMoved,
    BranchRemoved,
    BranchRenamed,
    BranchReset,
    ConstraintCleared,
    ConstraintSet,
    Event,
    EventData,
    EventFormatError,
    PromptSaved,
    SamplesDrawn,
    SessionStarted,
    TokenAppended,
    TokenPopped,
    Undo,
    UNDOABLE,
    decode,
    event_from_row,
    load_payload,
)
from .keys import prefix_key, prefix_keys
from .schema import (
    PROJECTION_TABLES,
    Base,
    branches_t,
    checkpoint_t,
    constraints_t,
    events_t,
    focus_t,
    nodes_t,
    session_nodes_t,
    sessions_t,
)

# Statements built once (building a construct per call costs more than running it).
_SEL_SESSION = select(sessions_t).where(sessions_t.c.id == bindparam("sid"))
_SEL_NODE = select(nodes_t).where(nodes_t.c.id == bindparam("nid"))
_SEL_NODE_BY_KEY = select(nodes_t).where(nodes_t.c.prefix_key == bindparam("key"))
_SEL_NODES_BY_KEYS = select(nodes_t).where(nodes_t.c.prefix_key.in_(bindparam("keys", expanding=True)))
_SEL_MAX_NODE = select(func.max(nodes_t.c.id))
_SEL_PARENT = select(nodes_t.c.parent_id).where(nodes_t.c.id == bindparam("nid"))
_INS_NODE = insert(nodes_t)
_INS_SESSION_NODE = sqlite_insert(session_nodes_t).on_conflict_do_nothing()
_SEL_BRANCH = select(branches_t).where(branches_t.c.id == bindparam("bid"))
_SHIFT = (
    update(branches_t)
    .where(
        branches_t.c.session_id == bindparam("sid"),
        branches_t.c.removed.is_(False),
        branches_t.c.position >= bindparam("pos"),
    )
    .values(position=branches_t.c.position + bindparam("delta"))
)
_DEL_FOCUS = delete(focus_t).where(focus_t.c.session_id == bindparam("sid"))
_UPSERT_FOCUS = sqlite_insert(focus_t).values(session_id=bindparam("sid"), branch_id=bindparam("bid"))
_UPSERT_FOCUS = _UPSERT_FOCUS.on_conflict_do_update(
    index_elements=[focus_t.c.session_id], set_={"branch_id": _UPSERT_FOCUS.excluded.branch_id}
)
_SET_BRANCH_NODE = update(branches_t).where(branches_t.c.id == bindparam("bid")).values(node_id=bindparam("nid"))
_REMOVE_BRANCH = update(branches_t).where(branches_t.c.id == bindparam("bid")).values(removed=True, position=None)
_RESTORE_BRANCH = (
    update(branches_t).where(branches_t.c.id == bindparam("bid")).values(removed=False, position=bindparam("pos"))
)
_SET_BRANCH_NAME = update(branches_t).where(branches_t.c.id == bindparam("bid")).values(name=bindparam("name"))
_INS_BRANCH = insert(branches_t)
_SEL_CONSTRAINT = select(constraints_t).where(constraints_t.c.branch_id == bindparam("bid"))
_DEL_CONSTRAINT = delete(constraints_t).where(constraints_t.c.branch_id == bindparam("bid"))
_INS_CONSTRAINT = insert(constraints_t)
_SEL_EVENT = select(events_t).where(events_t.c.seq == bindparam("seq"))
_SEL_CHECKPOINT = select(checkpoint_t.c.last_seq).where(checkpoint_t.c.id == 1)
_TOUCH_SESSION = (
    update(sessions_t)
    .where(sessions_t.c.id == bindparam("sid"))
    .values(last_used_at=bindparam("at"), last_seq=bindparam("seq"))
)
_UPSERT_CHECKPOINT = sqlite_insert(checkpoint_t).values(id=1, last_seq=bindparam("seq"))
_UPSERT_CHECKPOINT = _UPSERT_CHECKPOINT.on_conflict_do_update(
    index_elements=[checkpoint_t.c.id], set_={"last_seq": _UPSERT_CHECKPOINT.excluded.last_seq}
)


class ProjectionError(StoreError):
    """An event does not fit the projections (a bug, or a damaged database)."""


# --------------------------------------------------------------------------- helpers


def _session(conn: Connection, session_id: int):
    row = conn.execute(_SEL_SESSION, {"sid": session_id}).first()
    if row is None:
        raise ProjectionError(f"event for unknown session {session_id}")
    return row


def _node(conn: Connection, node_id: int):
    row = conn.execute(_SEL_NODE, {"nid": node_id}).first()
    if row is None:
        raise ProjectionError(f"unknown node {node_id}")
    return row


def _child(conn: Connection, parent, token_id: int, vocab_key: str):
    """The node for parent + [token_id] (parent None: a root), created on first sight."""
    key = prefix_key(None if parent is None else parent.prefix_key, token_id, vocab_key)
    row = conn.execute(_SEL_NODE_BY_KEY, {"key": key}).first()
    parent_id = None if parent is None else parent.id
    if row is not None:
        if row.parent_id != parent_id or row.token_id != token_id:  # pragma: no cover - 2**-128
            raise ProjectionError(f"prefix key collision at node {row.id}")
        return row
    depth = 1 if parent is None else parent.depth + 1
    conn.execute(_INS_NODE, {"parent_id": parent_id, "token_id": token_id, "depth": depth, "prefix_key": key})
    return conn.execute(_SEL_NODE_BY_KEY, {"key": key}).one()


def _chain(conn: Connection, tokens: list[int], vocab_key: str) -> list[int]:
    """Ids of the nodes for every prefix of `tokens`, creating the missing ones in one
    executemany. A node's parent always exists, so the missing prefixes are a suffix of the
    chain; their ids are allocated max+1 in order, exactly as one-by-one inserts would."""
    keys = prefix_keys(tokens, vocab_key)
    found: dict[bytes, Any] = {}
    for i in range(0, len(keys), 500):
        for row in conn.execute(_SEL_NODES_BY_KEYS, {"keys": keys[i : i + 500]}):
            found[bytes(row.prefix_key)] = row
    ids: list[int] = []
    new_rows: list[dict[str, Any]] = []
    next_id = None
    parent_id = None
    for depth, (tok, key) in enumerate(zip(tokens, keys), start=1):
        row = found.get(key)
        if row is not None and not new_rows:
            if row.parent_id != parent_id or row.token_id != tok:  # pragma: no cover - 2**-128
                raise ProjectionError(f"prefix key collision at node {row.id}")
            parent_id = row.id
        else:
            if row is not None:  # pragma: no cover - a node whose parent is missing
                raise ProjectionError(f"node {row.id} exists without its parent")
            if next_id is None:
                next_id = (conn.execute(_SEL_MAX_NODE).scalar() or 0) + 1
            new_rows.append({"id": next_id, "parent_id": parent_id, "token_id": tok, "depth": depth, "prefix_key": key})
            parent_id = next_id
            next_id += 1
        ids.append(parent_id)
    if new_rows:
        conn.execute(_INS_NODE, new_rows)
    return ids


def _explore(conn: Connection, session_id: int, node_id: int) -> None:
    """Record `node_id` and its ancestors as explored by the session. The explored set is
    kept ancestor-closed, so the walk stops at the first node already recorded."""
    current: int | None = node_id
    while current is not None:
        res = conn.execute(_INS_SESSION_NODE, {"session_id": session_id, "node_id": current})
        if res.rowcount == 0:
            return
        current = conn.execute(_SEL_PARENT, {"nid": current}).scalar_one()


def _branch(conn: Connection, session_id: int, branch_id: int, *, removed: bool = False):
    row = conn.execute(_SEL_BRANCH, {"bid": branch_id}).first()
    if row is None or row.session_id != session_id or bool(row.removed) != removed:
        state = "removed" if removed else "live"
        raise ProjectionError(f"no {state} branch {branch_id} in session {session_id}")
    return row


def _shift(conn: Connection, session_id: int, from_position: int, delta: int) -> None:
    conn.execute(_SHIFT, {"sid": session_id, "pos": from_position, "delta": delta})


def _set_focus(conn: Connection, session_id: int, branch_id: int | None) -> None:
    if branch_id is None:
        conn.execute(_DEL_FOCUS, {"sid": session_id})
        return
    conn.execute(_UPSERT_FOCUS, {"sid": session_id, "bid": branch_id})


def _set_node(conn: Connection, branch, from_node: int, node_id: int) -> None:
    if branch.node_id != from_node:
        raise ProjectionError(f"branch {branch.id} is at node {branch.node_id}, the event expects {from_node}")
    conn.execute(_SET_BRANCH_NODE, {"bid": branch.id, "nid": node_id})


def _remove(conn: Connection, branch, focus: int | None) -> None:
    conn.execute(_REMOVE_BRANCH, {"bid": branch.id})
    _shift(conn, branch.session_id, branch.position + 1, -1)
    _set_focus(conn, branch.session_id, focus)


# --------------------------------------------------------------------------- handlers


def _session_started(conn: Connection, ev: Event, p: SessionStarted) -> None:
    if conn.execute(select(sessions_t.c.id).where(sessions_t.c.id == ev.session_id)).first() is not None:
        raise ProjectionError(f"session {ev.session_id} started twice")
    conn.execute(
        insert(sessions_t).values(
            id=ev.session_id,
            created_at=ev.created_at,
            last_used_at=ev.created_at,
            last_seq=ev.seq,
            model_name=p.model_name,
            fingerprint=p.fingerprint,
            vocab_key=p.vocab_key,
            prompt_sources=json.dumps(list(p.prompt_sources), ensure_ascii=False),
            chat=None if p.chat is None else json.dumps(p.chat, ensure_ascii=False, sort_keys=True),
        )
    )


def _branch_created(conn: Connection, ev: Event, p: BranchCreated) -> None:
    sid = ev.session_id
    vocab_key = _session(conn, sid).vocab_key
    if not p.root_tokens:
        raise ProjectionError("branch.created without tokens")
    chain = _chain(conn, [int(t) for t in p.root_tokens], vocab_key)
    conn.execute(_INS_SESSION_NODE, [{"session_id": sid, "node_id": nid} for nid in chain])
    messages = None if p.messages is None else json.dumps(list(p.messages), ensure_ascii=False)
    _insert_branch(conn, sid, p, node_id=chain[-1], root_node_id=chain[-1], source=p.source, messages=messages)


def _token_appended(conn: Connection, ev: Event, p: TokenAppended) -> None:
    sid = ev.session_id
    branch = _branch(conn, sid, p.branch_id)
    child = _child(conn, _node(conn, p.from_node), int(p.token_id), _session(conn, sid).vocab_key)
    _set_node(conn, branch, p.from_node, child.id)
    _explore(conn, sid, child.id)
    return child.id


def _token_popped(conn: Connection, ev: Event, p: TokenPopped) -> None:
    branch = _branch(conn, ev.session_id, p.branch_id)
    node = _node(conn, p.from_node)
    if node.parent_id is None:
        raise ProjectionError("token.popped at a one-token path")
    _set_node(conn, branch, p.from_node, node.parent_id)


def _branch_moved(conn: Connection, ev: Event, p: BranchMoved) -> None:
    branch = _branch(conn, ev.session_id, p.branch_id)
    target = _node(conn, p.node_id)
    _set_node(conn, branch, p.from_node, target.id)
    _explore(conn, ev.session_id, target.id)


def _branch_duplicated(conn: Connection, ev: Event, p: BranchDuplicated) -> None:
    sid = ev.session_id
    src = _branch(conn, sid, p.source_branch_id)
    _insert_branch(conn, sid, p, node_id=src.node_id, root_node_id=src.root_node_id, source=src.source,
                   messages=src.messages)
    rule = conn.execute(_SEL_CONSTRAINT, {"bid": src.id}).first()
    if rule is not None:  # a copy of a branch keeps its regex constraint
        _put_constraint(conn, sid, p.branch_id, rule.name, rule.pattern, rule.depth)


def _insert_branch(
    conn: Connection,
    sid: int,
    p: BranchCreated | BranchDuplicated,
    *,
    node_id: int,
    root_node_id: int,
    source: str | None,
    messages: str | None = None,
) -> None:
    """A new live branch at p.position (later ones shift down), focused."""
    if conn.execute(_SEL_BRANCH, {"bid": p.branch_id}).first() is not None:
        raise ProjectionError(f"branch id {p.branch_id} already used")
    _shift(conn, sid, p.position, +1)
    conn.execute(
        _INS_BRANCH,
        dict(id=p.branch_id, session_id=sid, name=p.name, position=p.position, node_id=node_id,
             root_node_id=root_node_id, source=source, messages=messages, removed=False),
    )
    _set_focus(conn, sid, p.branch_id)


def _branch_removed(conn: Connection, ev: Event, p: BranchRemoved) -> None:
    branch = _branch(conn, ev.session_id, p.branch_id)
    if branch.position != p.position:
        raise ProjectionError(f"branch {branch.id} is at position {branch.position}, not {p.position}")
    _remove(conn, branch, p.new_focus)


def _branch_focused(conn: Connection, ev: Event, p: BranchFocused) -> None:
    _branch(conn, ev.session_id, p.branch_id)
    _set_focus(conn, ev.session_id, p.branch_id)


def _branch_reset(conn: Connection, ev: Event, p: BranchReset) -> None:
    branch = _branch(conn, ev.session_id, p.branch_id)
    _set_node(conn, branch, p.from_node, branch.root_node_id)


def _branch_renamed(conn: Connection, ev: Event, p: BranchRenamed) -> None:
    branch = _branch(conn, ev.session_id, p.branch_id)
    if branch.name != p.prev_name:
        raise ProjectionError(f"branch {branch.id} is called {branch.name!r}, the event expects {p.prev_name!r}")
    conn.execute(_SET_BRANCH_NAME, {"bid": branch.id, "name": p.name})


def _put_constraint(conn: Connection, sid: int, branch_id: int, name: str | None, pattern: str | None,
                    depth: int | None) -> None:
    """The branch's constraint row becomes (name, pattern, depth); name None: no row."""
    conn.execute(_DEL_CONSTRAINT, {"bid": branch_id})
    if name is not None:
        conn.execute(_INS_CONSTRAINT, {"branch_id": branch_id, "session_id": sid, "name": name,
                                       "pattern": pattern, "depth": int(depth)})


def _check_constraint(conn: Connection, branch_id: int, name, pattern, depth) -> None:
    """The branch's constraint is the one the event expects (None: none)."""
    row = conn.execute(_SEL_CONSTRAINT, {"bid": branch_id}).first()
    found = None if row is None else (row.name, row.pattern, row.depth)
    expected = None if name is None else (name, pattern, depth)
    if found != expected:
        raise ProjectionError(f"branch {branch_id} has constraint {found!r}, the event expects {expected!r}")


def _constraint_set(conn: Connection, ev: Event, p: ConstraintSet) -> None:
    _branch(conn, ev.session_id, p.branch_id)
    _check_constraint(conn, p.branch_id, p.prev_name, p.prev_pattern, p.prev_depth)
    _put_constraint(conn, ev.session_id, p.branch_id, p.name, p.pattern, p.depth)


def _constraint_cleared(conn: Connection, ev: Event, p: ConstraintCleared) -> None:
    _branch(conn, ev.session_id, p.branch_id)
    _check_constraint(conn, p.branch_id, p.name, p.pattern, p.depth)
    _put_constraint(conn, ev.session_id, p.branch_id, None, None, None)


def _prompt_saved(conn: Connection, ev: Event, p: PromptSaved) -> None:
    pass  # recorded for history; changes no projection but the session's last use


def _samples_drawn(conn: Connection, ev: Event, p: SamplesDrawn) -> None:
    # Recorded for history (how the sample branches of its group were drawn); the branches
    # themselves are made by the events of the group that follow it.
    _branch(conn, ev.session_id, p.branch_id)


def _undo(conn: Connection, ev: Event, p: Undo) -> None:
    """Revert the target events, in the order listed (newest first)."""
    sid = ev.session_id
    if not p.target_seqs:
        raise ProjectionError("undo without a target")
    previous = ev.seq
    for seq in p.target_seqs:
        row = conn.execute(_SEL_EVENT, {"seq": seq}).first()
        if row is None or row.session_id != sid or row.type not in UNDOABLE or row.seq >= previous:
            raise ProjectionError(f"undo of an event that cannot be undone (seq {seq})")
        previous = row.seq
        _invert(conn, sid, row.type, _decode(row.seq, row.type, load_payload(row.payload)))


def _invert(conn: Connection, sid: int, type_name: str, target: EventData) -> None:
    if isinstance(target, (BranchCreated, BranchDuplicated)):
        _remove(conn, _branch(conn, sid, target.branch_id), target.prev_focus)
    elif isinstance(target, (TokenAppended, TokenPopped, BranchMoved, BranchReset)):
        branch = _branch(conn, sid, target.branch_id)
        conn.execute(_SET_BRANCH_NODE, {"bid": branch.id, "nid": target.from_node})
    elif isinstance(target, BranchRemoved):
        branch = _branch(conn, sid, target.branch_id, removed=True)
        _shift(conn, sid, target.position, +1)
        conn.execute(_RESTORE_BRANCH, {"bid": branch.id, "pos": target.position})
        _set_focus(conn, sid, target.prev_focus)
    elif isinstance(target, BranchFocused):
        _set_focus(conn, sid, target.prev_focus)
    elif isinstance(target, BranchRenamed):
        branch = _branch(conn, sid, target.branch_id)
        conn.execute(_SET_BRANCH_NAME, {"bid": branch.id, "name": target.prev_name})
    elif isinstance(target, ConstraintSet):
        _branch(conn, sid, target.branch_id)
        _put_constraint(conn, sid, target.branch_id, target.prev_name, target.prev_pattern, target.prev_depth)
    elif isinstance(target, ConstraintCleared):
        _branch(conn, sid, target.branch_id)
        _put_constraint(conn, sid, target.branch_id, target.name, target.pattern, target.depth)
    else:  # pragma: no cover - events.UNDOABLE and this list agree (tests/test_events.py)
        raise ProjectionError(f"no inverse for {type_name}")


HANDLERS = {
    SessionStarted: _session_started,
    BranchCreated: _branch_created,
    TokenAppended: _token_appended,
    TokenPopped: _token_popped,
    BranchMoved: _branch_moved,
    BranchDuplicated: _branch_duplicated,
    BranchRemoved: _branch_removed,
    BranchFocused: _branch_focused,
    BranchReset: _branch_reset,
    BranchRenamed: _branch_renamed,
    PromptSaved: _prompt_saved,
    SamplesDrawn: _samples_drawn,
    Undo: _undo,
    ConstraintSet: _constraint_set,
    ConstraintCleared: _constraint_cleared,
}


# --------------------------------------------------------------------------- entry point


def _decode(seq: int, type_name: str, payload: dict[str, Any]) -> EventData:
    try:
        return decode(type_name, payload)
    except EventFormatError as exc:
        raise ProjectionError(f"event {seq}: {exc}") from None


def apply(conn: Connection, event: Event):
    """Apply one event to the projections (inside the caller's transaction). Returns what
    its handler does: token.appended, the branch's new node id; else None."""
    data = _decode(event.seq, event.type, event.payload)
    last = conn.execute(_SEL_CHECKPOINT).scalar()
    if last is not None and event.seq <= last:
        raise ProjectionError(f"event {event.seq} applied out of order (checkpoint at {last})")
    if not isinstance(data, SessionStarted):
        _session(conn, event.session_id)
    try:
        result = HANDLERS[type(data)](conn, event, data)
    except (KeyError, TypeError) as exc:
        raise ProjectionError(f"malformed {event.type} event {event.seq}: {exc!r}") from None
    conn.execute(_TOUCH_SESSION, {"sid": event.session_id, "at": event.created_at, "seq": event.seq})
    conn.execute(_UPSERT_CHECKPOINT, {"seq": event.seq})
    return result


def wipe(conn: Connection) -> None:
    """Delete every projection row (the caches are kept)."""
    for name in PROJECTION_TABLES:
        conn.execute(delete(Base.metadata.tables[name]))


def replay(conn: Connection, *, batch: int = 1000) -> int:
    """Wipe the projections and apply every event in seq order; returns the event count."""
    wipe(conn)
    count = 0
    after = 0
    while True:
        rows = conn.execute(select(events_t).where(events_t.c.seq > after).order_by(events_t.c.seq).limit(batch)).all()
        if not rows:
            return count
        for row in rows:
            apply(conn, event_from_row(row))
            count += 1
        after = rows[-1].seq

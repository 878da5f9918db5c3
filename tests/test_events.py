"""Typed events: the name <-> class mapping, the stored JSON, and upcasting old payloads."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import insert, select

from tokentree.store import Store, maintenance
from tokentree.store import events as ev
from tokentree.store import projector
from tokentree.store.schema import events_t

SAMPLES = [
    ev.SessionStarted(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=("a.txt", "é")),
    ev.BranchCreated(branch_id=1, name="main", position=0, root_tokens=(1, 2), prev_focus=None, source="a.txt"),
    ev.TokenAppended(branch_id=1, token_id=7, from_node=2),
    ev.TokenPopped(branch_id=1, from_node=3),
    ev.BranchMoved(branch_id=1, node_id=3, from_node=2),
    ev.BranchDuplicated(source_branch_id=1, branch_id=2, name="branch 2", position=1, prev_focus=1),
    ev.BranchRemoved(branch_id=2, position=1, prev_focus=2, new_focus=1),
    ev.BranchFocused(branch_id=1, prev_focus=2),
    ev.BranchReset(branch_id=1, from_node=3),
    ev.BranchRenamed(branch_id=1, name="new", prev_name="branch 1"),
    ev.PromptSaved(branch_id=1, path="/tmp/p.txt"),
    ev.SamplesDrawn(
        branch_id=1, settings={"temperature": 0.7, "top_k": 0, "top_p": 0.9, "min_p": None}, seed=5, count=2,
        steps=8, group=12,
    ),
    ev.Undo(target_seqs=(4,), target_type=ev.TOKEN_POPPED),
]
GROUPED = [
    ev.BranchCreated(branch_id=1, name="m", position=0, root_tokens=(1,), prev_focus=None, group=3),
    ev.TokenAppended(branch_id=1, token_id=7, from_node=2, group=3),
    ev.TokenPopped(branch_id=1, from_node=3, group=3),
    ev.BranchMoved(branch_id=1, node_id=3, from_node=2, group=3),
    ev.BranchDuplicated(source_branch_id=1, branch_id=2, name="b", position=1, prev_focus=1, group=3),
    ev.BranchRemoved(branch_id=2, position=1, prev_focus=2, new_focus=1, group=3),
    ev.BranchFocused(branch_id=1, prev_focus=2, group=3),
    ev.BranchReset(branch_id=1, from_node=3, group=3),
    ev.BranchRenamed(branch_id=1, name="x", prev_name="y", group=3),
    ev.Undo(target_seqs=(9, 8, 6), target_type=ev.TOKEN_APPENDED),
]

CONSTRAINTS = [
    ev.ConstraintSet(branch_id=1, name="iso_date", pattern="[0-9]{4}", depth=3),
    ev.ConstraintSet(branch_id=1, name="b", pattern="b+", depth=4, prev_name="iso_date", prev_pattern="[0-9]{4}",
                     prev_depth=3, group=7),
    ev.ConstraintCleared(branch_id=1, name="b", pattern="b+", depth=4),
]


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "t.db")
    yield s
    s.close()


def test_every_event_class_round_trips_through_its_name():
    assert {type(s) for s in SAMPLES + CONSTRAINTS} == set(ev.EVENT_CLASSES.values())
    assert len(ev.EVENT_CLASSES) == len(ev.TYPE_NAMES)  # one class per name, one name per class
    for data in SAMPLES + GROUPED + CONSTRAINTS:
        name = ev.type_name(data)
        assert ev.event_class(name) is type(data)
        stored = ev.load_payload(ev.dump_payload(ev.to_payload(data)))
        assert stored["v"] == ev.PAYLOAD_VERSION
        assert ev.decode(name, stored) == data
    with pytest.raises(ev.EventFormatError, match="unknown event type"):
        ev.event_class("branch.coloured")


def test_the_projector_handles_every_class_and_undo_inverts_exactly_the_undoable_ones():
    assert set(projector.HANDLERS) == set(ev.EVENT_CLASSES.values())
    assert ev.UNDOABLE == ev.EVENT_TYPES - {ev.SESSION_STARTED, ev.PROMPT_SAVED, ev.SAMPLES_DRAWN, ev.UNDO}
    # every undoable event can carry a group
    for name in ev.UNDOABLE:
        group = {f.name: f for f in dataclasses.fields(ev.EVENT_CLASSES[name])}["group"]
        assert group.default is None, name


def test_stored_json_is_unchanged():
    """The bytes stored for new events: sorted keys, no spaces, UTF-8, "v" included. Existing
    databases and `db rebuild` equality depend on this."""
    texts = [ev.dump_payload(ev.to_payload(s)) for s in SAMPLES[:3] + SAMPLES[-3:]]
    assert texts == [
        '{"fingerprint":"fp","model_name":"m","prompt_sources":["a.txt","é"],"v":2,"vocab_key":"v"}',
        '{"branch_id":1,"group":null,"name":"main","position":0,"prev_focus":null,"root_tokens":[1,2],'
        '"source":"a.txt","v":2}',
        '{"branch_id":1,"from_node":2,"group":null,"token_id":7,"v":2}',
        '{"branch_id":1,"path":"/tmp/p.txt","v":2}',
        '{"branch_id":1,"count":2,"group":12,"seed":5,'
        '"settings":{"min_p":null,"temperature":0.7,"top_k":0,"top_p":0.9},"steps":8,"v":2}',
        '{"target_seqs":[4],"target_type":"token.popped","v":2}',
    ]


# The payloads tokentree wrote at v1 (before groups), byte for byte, and what they read as.
V1_ROWS = [
    (ev.SESSION_STARTED, '{"fingerprint":"fp","model_name":"m","prompt_sources":["a.txt","é"],"v":1,"vocab_key":"v"}',
     SAMPLES[0]),
    (ev.BRANCH_CREATED,
     '{"branch_id":1,"name":"main","position":0,"prev_focus":null,"root_tokens":[1,2],"source":"a.txt","v":1}',
     SAMPLES[1]),
    (ev.TOKEN_APPENDED, '{"branch_id":1,"from_node":2,"token_id":7,"v":1}', SAMPLES[2]),
    (ev.TOKEN_POPPED, '{"branch_id":1,"from_node":3,"v":1}', SAMPLES[3]),
    (ev.BRANCH_MOVED, '{"branch_id":1,"from_node":2,"node_id":3,"v":1}', SAMPLES[4]),
    (ev.BRANCH_DUPLICATED,
     '{"branch_id":2,"name":"branch 2","position":1,"prev_focus":1,"source_branch_id":1,"v":1}', SAMPLES[5]),
    (ev.BRANCH_REMOVED, '{"branch_id":2,"new_focus":1,"position":1,"prev_focus":2,"v":1}', SAMPLES[6]),
    (ev.BRANCH_FOCUSED, '{"branch_id":1,"prev_focus":2,"v":1}', SAMPLES[7]),
    (ev.BRANCH_RESET, '{"branch_id":1,"from_node":3,"v":1}', SAMPLES[8]),
    (ev.PROMPT_SAVED, '{"branch_id":1,"path":"/tmp/p.txt","v":1}', SAMPLES[10]),
    (ev.UNDO, '{"target_seq":4,"target_type":"token.popped","v":1}', SAMPLES[12]),
]


def test_v1_payloads_read_back_exactly_as_before():
    assert {name for name, _text, _data in V1_ROWS} == ev.EVENT_TYPES - {
        ev.BRANCH_RENAMED, ev.SAMPLES_DRAWN, ev.CONSTRAINT_SET, ev.CONSTRAINT_CLEARED}
    for name, text, data in V1_ROWS:
        stored = ev.load_payload(text)
        assert ev.decode(name, stored) == data, name
        assert stored == ev.load_payload(text)  # upcasting works on a copy
        if name in ev.UNDOABLE:
            assert data.group is None
    assert ev.upcast(ev.UNDO, ev.load_payload(V1_ROWS[-1][1])) == {
        "v": 2, "target_seqs": [4], "target_type": "token.popped"
    }
    assert ev.upcast(ev.TOKEN_APPENDED, ev.load_payload(V1_ROWS[2][1])) == {
        "v": 2, "branch_id": 1, "from_node": 2, "token_id": 7, "group": None
    }


def test_bad_payloads_are_refused():
    with pytest.raises(ev.EventFormatError, match="payload version 3"):
        ev.decode(ev.TOKEN_POPPED, {"v": 3, "branch_id": 1, "from_node": 3})
    with pytest.raises(ev.EventFormatError, match="malformed token.popped"):
        ev.decode(ev.TOKEN_POPPED, {"v": 1, "branch_id": 1})


def test_an_old_row_is_read_through_the_upcaster(store, monkeypatch):
    """Pretend token.appended's payload is at v3, where v2 called the token "token" and v3
    calls it "token_id" (today's class). A v2 row stored before the change is upcast when it
    is read, projected like a new one, and left as it was in the log."""
    sid = store.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])
    b = store.create_branch(sid, [1, 2])
    root = store.branches(sid)[0].node_id
    old = '{"branch_id":%d,"from_node":%d,"group":null,"token":9,"v":2}' % (b, root)
    with store.write_transaction() as conn:  # an old tokentree wrote this row
        conn.execute(
            insert(events_t).values(
                session_id=sid, version=3, type=ev.TOKEN_APPENDED, payload=old, created_at=ev.utc_now()
            )
        )

    def v2_to_v3(payload):
        body = dict(payload)
        body["token_id"] = body.pop("token")
        return body

    monkeypatch.setattr(ev, "PAYLOAD_VERSION", 3)
    monkeypatch.setitem(ev.UPCASTERS, (ev.TOKEN_APPENDED, 2), v2_to_v3)

    stored = store.events(sid)[-1]
    assert stored.payload == {"v": 2, "branch_id": b, "from_node": root, "token": 9, "group": None}  # as stored
    assert stored.data == ev.TokenAppended(branch_id=b, token_id=9, from_node=root)
    assert maintenance.rebuild(store) == 3  # the projector reads it through the upcaster
    assert [n.token_id for n in store.path_nodes(store.branches(sid)[0].node_id)] == [1, 2, 9]
    # New events are written at v3 and need no upcasting; both kinds replay the same.
    store.append_token(sid, b, 4)
    assert store.events(sid)[-1].payload["v"] == 3
    with store.read_transaction() as conn:
        before = maintenance.snapshot(conn)
    maintenance.rebuild(store)
    with store.read_transaction() as conn:
        assert maintenance.snapshot(conn) == before
    assert store.undo(sid) == ev.TOKEN_APPENDED and store.undo(sid) == ev.TOKEN_APPENDED  # the v2 one too
    assert [n.token_id for n in store.path_nodes(store.branches(sid)[0].node_id)] == [1, 2]
    monkeypatch.delitem(ev.UPCASTERS, (ev.TOKEN_APPENDED, 2))
    with pytest.raises(ev.EventFormatError, match="malformed"):  # without its upcaster: unreadable
        stored.data


def _as_v1(type_name: str, payload: dict) -> str:
    """The JSON text tokentree v1 stored for an event written today without a group."""
    body = dict(payload)
    if type_name in ev.UNDOABLE:
        assert body.pop("group") is None
    if type_name == ev.UNDO:
        (body["target_seq"],) = body.pop("target_seqs")
    body["v"] = 1
    return ev.json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _busy_history(store) -> int:
    """Every v1 event type, undos included, in one session (and a second session after it)."""
    sid = store.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=["a.txt"])
    a = store.create_branch(sid, [1, 2], source="a.txt")
    store.append_token(sid, a, 3)
    store.append_token(sid, a, 4)
    b = store.duplicate_branch(sid, a)
    store.pop_token(sid, b)
    store.undo(sid)
    store.move_branch(sid, b, store.branches(sid)[0].root_node_id)
    store.focus_branch(sid, a)
    store.reset_branch(sid, a)
    store.record_prompt_saved(sid, a, "/tmp/x.txt")
    store.create_branch(sid, [5])
    store.remove_branch(sid, b)
    store.undo(sid)
    store.undo(sid)
    store.append_token(sid, a, 6)
    other = store.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])
    store.create_branch(other, [1, 2, 3])
    return sid


def test_a_v1_database_replays_and_undoes_like_today(tmp_path):
    """A log written by tokentree v1 (no groups, undo with target_seq) gives the same
    projections as today's log of the same actions, undoes the same way (its old undos
    count), and keeps working when new v2 events follow the old rows."""
    today = Store.open(tmp_path / "today.db")
    old = Store.open(tmp_path / "old.db")
    try:
        sid = _busy_history(today)
        with today.read_transaction() as conn:
            rows = conn.execute(select(events_t).order_by(events_t.c.seq)).all()
            expected = maintenance.snapshot(conn)
        with old.write_transaction() as conn:  # what the old tokentree would have stored
            for r in rows:
                conn.execute(insert(events_t).values(
                    seq=r.seq, session_id=r.session_id, version=r.version, type=r.type,
                    payload=_as_v1(r.type, ev.load_payload(r.payload)), created_at=r.created_at,
                ))
        assert all(e.payload["v"] == 1 for e in old.events(sid))
        assert [e.data for e in old.events(sid)] == [e.data for e in today.events(sid)]
        assert maintenance.rebuild(old) == len(rows)
        with old.read_transaction() as conn:
            assert maintenance.snapshot(conn) == expected
        assert maintenance.check(old) == []

        def projections(store):
            with store.read_transaction() as conn:
                snap = maintenance.snapshot(conn)
            # sessions.last_used_at is the time of the latest event: the two logs differ there
            snap["sessions"] = [(r[0], r[1]) + r[3:] for r in snap["sessions"]]
            return snap

        def same():
            return projections(today) == projections(old)

        # Undo walks back through the old history exactly as through today's.
        while True:
            got = today.undo(sid)
            assert old.undo(sid) == got
            assert same()
            if got is None:
                break
        # New (v2) events after old rows.
        for store in (today, old):
            a = store.branches(sid)[0].id
            store.append_token(sid, a, 9, group=store.version(sid) + 1)
            store.rename_branch(sid, a, "renamed")
            store.undo(sid)
        assert same()
        assert maintenance.rebuild(old) == maintenance.rebuild(today) > len(rows)
        assert same() and maintenance.check(old) == []
        v1_rows = [ev.load_payload(_as_v1(r.type, ev.load_payload(r.payload))) for r in rows if r.session_id == sid]
        assert [e.payload for e in old.events(sid)][: len(v1_rows)] == v1_rows  # old rows are never rewritten
    finally:
        today.close()
        old.close()

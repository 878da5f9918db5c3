"""Typed events: the name <-> class mapping, the stored JSON, and upcasting old payloads."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

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
    ev.PromptSaved(branch_id=1, path="/tmp/p.txt"),
    ev.Undo(target_seq=4, target_type=ev.TOKEN_POPPED),
]


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "t.db")
    yield s
    s.close()


def test_every_event_class_round_trips_through_its_name():
    assert {type(s) for s in SAMPLES} == set(ev.EVENT_CLASSES.values())
    assert len(ev.EVENT_CLASSES) == len(ev.TYPE_NAMES)  # one class per name, one name per class
    for data in SAMPLES:
        name = ev.type_name(data)
        assert ev.event_class(name) is type(data)
        stored = ev.load_payload(ev.dump_payload(ev.to_payload(data)))
        assert stored["v"] == ev.PAYLOAD_VERSION
        assert ev.decode(name, stored) == data
    with pytest.raises(ev.EventFormatError, match="unknown event type"):
        ev.event_class("branch.renamed")


def test_the_projector_handles_every_class_and_undo_inverts_exactly_the_undoable_ones():
    assert set(projector.HANDLERS) == set(ev.EVENT_CLASSES.values())
    assert ev.UNDOABLE == ev.EVENT_TYPES - {ev.SESSION_STARTED, ev.PROMPT_SAVED, ev.UNDO}


def test_stored_json_is_unchanged():
    """The bytes stored for new events: sorted keys, no spaces, UTF-8, "v" included. Existing
    databases and `db rebuild` equality depend on this."""
    texts = [ev.dump_payload(ev.to_payload(s)) for s in SAMPLES[:3]]
    assert texts == [
        '{"fingerprint":"fp","model_name":"m","prompt_sources":["a.txt","é"],"v":1,"vocab_key":"v"}',
        '{"branch_id":1,"name":"main","position":0,"prev_focus":null,"root_tokens":[1,2],"source":"a.txt","v":1}',
        '{"branch_id":1,"from_node":2,"token_id":7,"v":1}',
    ]


def test_bad_payloads_are_refused():
    with pytest.raises(ev.EventFormatError, match="payload version 2"):
        ev.decode(ev.TOKEN_POPPED, {"v": 2, "branch_id": 1, "from_node": 3})
    with pytest.raises(ev.EventFormatError, match="malformed token.popped"):
        ev.decode(ev.TOKEN_POPPED, {"v": 1, "branch_id": 1})


def test_a_v1_row_is_read_through_the_upcaster(store, monkeypatch):
    """Pretend token.appended's payload is at v2, where v1 called the token "token" and v2
    calls it "token_id" (today's class). A v1 row stored before the change is upcast when it
    is read, projected like a new one, and left as it was in the log."""
    sid = store.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])
    b = store.create_branch(sid, [1, 2])
    root = store.branches(sid)[0].node_id
    old = '{"branch_id":%d,"from_node":%d,"token":9,"v":1}' % (b, root)
    with store.write_transaction() as conn:  # an old tokentree wrote this row
        conn.execute(
            insert(events_t).values(
                session_id=sid, version=3, type=ev.TOKEN_APPENDED, payload=old, created_at=ev.utc_now()
            )
        )

    def v1_to_v2(payload):
        body = dict(payload)
        body["token_id"] = body.pop("token")
        return body

    monkeypatch.setattr(ev, "PAYLOAD_VERSION", 2)
    monkeypatch.setitem(ev.UPCASTERS, (ev.TOKEN_APPENDED, 1), v1_to_v2)

    stored = store.events(sid)[-1]
    assert stored.payload == {"v": 1, "branch_id": b, "from_node": root, "token": 9}  # as stored
    assert stored.data == ev.TokenAppended(branch_id=b, token_id=9, from_node=root)
    assert maintenance.rebuild(store) == 3  # the projector reads it through the upcaster
    assert [n.token_id for n in store.path_nodes(store.branches(sid)[0].node_id)] == [1, 2, 9]
    # New events are written at v2 and need no upcasting; both kinds replay the same.
    store.append_token(sid, b, 4)
    assert store.events(sid)[-1].payload["v"] == 2
    with store.read_transaction() as conn:
        before = maintenance.snapshot(conn)
    maintenance.rebuild(store)
    with store.read_transaction() as conn:
        assert maintenance.snapshot(conn) == before
    assert store.undo(sid) == ev.TOKEN_APPENDED and store.undo(sid) == ev.TOKEN_APPENDED  # the v1 one too
    assert [n.token_id for n in store.path_nodes(store.branches(sid)[0].node_id)] == [1, 2]
    monkeypatch.delitem(ev.UPCASTERS, (ev.TOKEN_APPENDED, 1))
    with pytest.raises(ev.EventFormatError, match="malformed"):  # without its upcaster: unreadable
        stored.data

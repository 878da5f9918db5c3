"""Groups of events that undo as one step (fill, counterfactual, samples), branch renames and
recorded samples."""

from __future__ import annotations

import pytest

from tokentree.errors import StaleCommand, StoreError
from tokentree.store import Store, maintenance
from tokentree.store import events as ev

SETTINGS = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.0}


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "t.db")
    yield s
    s.close()


def new_session(store):
    return store.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])


def tokens_of(store, node_id):
    return [n.token_id for n in store.path_nodes(node_id)]


def state(store, sid):
    return [(b.id, b.name, b.position, b.node_id, b.root_node_id, b.focused) for b in store.branches(sid)]


def last_event(store, sid):
    return store.events(sid)[-1]


# --------------------------------------------------------------------------- groups


def test_a_fill_of_five_appends_is_undone_by_one_undo(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1, 2])
    store.append_token(sid, a, 3)  # not part of the fill
    before = state(store, sid)
    v = store.version(sid)
    group = v + 1
    for i, tok in enumerate([10, 11, 12, 13, 14]):
        store.append_token(sid, a, tok, expected_version=v + i, group=group)
    assert store.version(sid) == v + 5
    assert [e.payload["group"] for e in store.events(sid)[-5:]] == [group] * 5
    assert tokens_of(store, store.branches(sid)[0].node_id) == [1, 2, 3, 10, 11, 12, 13, 14]

    assert store.undo(sid, expected_version=v + 5) == ev.TOKEN_APPENDED
    assert store.version(sid) == v + 6  # one undo: one event
    undo = last_event(store, sid)
    assert undo.type == ev.UNDO
    assert undo.payload == {"v": 2, "target_seqs": [e.seq for e in store.events(sid)[-2:-7:-1]],
                            "target_type": ev.TOKEN_APPENDED}
    assert undo.payload["target_seqs"] == sorted(undo.payload["target_seqs"], reverse=True)
    assert state(store, sid) == before
    # the next undo reverts the ungrouped append alone
    assert store.undo(sid) == ev.TOKEN_APPENDED
    assert tokens_of(store, store.branches(sid)[0].node_id) == [1, 2]
    assert maintenance.check(store) == []


def test_a_counterfactual_pop_and_append_undo_as_one(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1, 2])
    store.append_token(sid, a, 3)
    before = state(store, sid)
    g = store.version(sid) + 1
    store.pop_token(sid, a, group=g)
    store.append_token(sid, a, 4, group=g)
    assert tokens_of(store, store.branches(sid)[0].node_id) == [1, 2, 4]
    assert store.undo(sid) == ev.TOKEN_APPENDED
    assert state(store, sid) == before
    assert len(last_event(store, sid).payload["target_seqs"]) == 2
    assert maintenance.check(store) == []


def test_every_grouped_command_and_focus_restore(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1])
    store.append_token(sid, a, 2)
    before = state(store, sid)
    g = store.version(sid) + 1
    b = store.create_branch(sid, [5, 6], group=g)
    c = store.duplicate_branch(sid, a, group=g)
    store.move_branch(sid, c, store.branches(sid)[0].root_node_id, group=g)
    store.pop_token(sid, b, group=g)
    store.focus_branch(sid, a, group=g)
    store.append_token(sid, c, 7, group=g)
    assert len(store.branches(sid)) == 3
    assert store.undo(sid) == ev.TOKEN_APPENDED
    assert state(store, sid) == before
    assert len(last_event(store, sid).payload["target_seqs"]) == 6
    assert maintenance.check(store) == []


def test_a_group_is_its_newest_unbroken_run(store):
    """Two runs that reuse a group number (a caller's mistake) are undone one run at a time,
    never out of order; undone and non-undoable events in between do not break a run."""
    sid = new_session(store)
    a = store.create_branch(sid, [1])
    store.append_token(sid, a, 2, group=7)
    store.append_token(sid, a, 3)
    store.append_token(sid, a, 4, group=7)
    store.record_prompt_saved(sid, a, "p.txt")  # not undoable: skipped
    store.focus_branch(sid, a)
    store.undo(sid)  # the focus
    store.append_token(sid, a, 5, group=7)
    assert store.undo(sid) == ev.TOKEN_APPENDED
    assert tokens_of(store, store.branches(sid)[0].node_id) == [1, 2, 3]
    assert len(last_event(store, sid).payload["target_seqs"]) == 2
    assert store.undo(sid) == ev.TOKEN_APPENDED
    assert store.undo(sid) == ev.TOKEN_APPENDED
    assert tokens_of(store, store.branches(sid)[0].node_id) == [1]
    assert store.undo(sid) is None
    assert maintenance.check(store) == []


def test_a_group_that_would_remove_the_last_branch_is_not_undone(store):
    sid = new_session(store)
    g = store.version(sid) + 1
    a = store.create_branch(sid, [1, 2], group=g)
    store.append_token(sid, a, 3, group=g)
    store.append_token(sid, a, 4, group=g)
    before = state(store, sid)
    version = store.version(sid)
    assert not store.can_undo(sid)
    assert store.undo(sid) is None
    assert store.version(sid) == version and state(store, sid) == before
    # ... but a group that creates a second branch can be undone
    g = store.version(sid) + 1
    store.create_branch(sid, [5], group=g)
    store.append_token(sid, a, 6, group=g)
    assert store.undo(sid) == ev.TOKEN_APPENDED
    assert state(store, sid) == before
    # a group that creates a branch and removes the other one leaves one branch: undoable
    g = store.version(sid) + 1
    b = store.create_branch(sid, [7], group=g)
    store.append_token(sid, b, 8, group=g)
    store.remove_branch(sid, a)  # remove_branch takes no group: a step of its own
    assert [x.id for x in store.branches(sid)] == [b]
    assert store.undo(sid) == ev.BRANCH_REMOVED
    assert store.undo(sid) == ev.TOKEN_APPENDED
    assert state(store, sid) == before
    assert store.undo(sid) is None
    assert maintenance.check(store) == []


def test_bad_groups_are_refused(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1])
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(StoreError, match="group must be a positive integer"):
            store.append_token(sid, a, 2, group=bad)
    assert store.version(sid) == 2


# --------------------------------------------------------------------------- rename


def test_rename_and_its_undo(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1])
    store.rename_branch(sid, a, "  the plan  ")
    assert store.branches(sid)[0].name == "the plan"
    e = last_event(store, sid)
    assert e.type == ev.BRANCH_RENAMED
    assert e.payload == {"v": 2, "branch_id": a, "name": "the plan", "prev_name": "branch 1", "group": None}
    b = store.duplicate_branch(sid, a)
    store.rename_branch(sid, b, "the plan")  # names need not be unique
    assert [x.name for x in store.branches(sid)] == ["the plan", "the plan"]
    assert store.undo(sid) == ev.BRANCH_RENAMED
    assert [x.name for x in store.branches(sid)] == ["the plan", "branch 2"]
    store.undo(sid)
    assert store.undo(sid) == ev.BRANCH_RENAMED
    assert store.branches(sid)[0].name == "branch 1"
    store.rename_branch(sid, a, "é" * 40)
    assert maintenance.check(store) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "cannot be empty"),
        ("   \t ", "cannot be empty"),
        ("x" * 41, "at most 40 characters"),
        ("a\nb", "control characters"),
        ("a\x1b[31mb", "control characters"),
        ("a\x7fb", "control characters"),
        ("a\x85b", "control characters"),
        ("a\u2028b", "control characters"),
        ("a\u202eb", "control characters"),
        ("branch 1", "the branch is already called branch 1"),
        (" branch 1 ", "the branch is already called branch 1"),
    ],
)
def test_rename_validation(store, name, message):
    sid = new_session(store)
    a = store.create_branch(sid, [1])
    version = store.version(sid)
    with pytest.raises(StoreError, match=message) as info:
        store.rename_branch(sid, a, name)
    assert "\n" not in str(info.value)
    assert store.version(sid) == version


def test_rename_of_an_unknown_or_removed_branch(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1])
    b = store.create_branch(sid, [2])
    store.remove_branch(sid, b)
    for bid in (b, 99):
        with pytest.raises(StoreError, match=f"no branch {bid}"):
            store.rename_branch(sid, bid, "x")
    store.rename_branch(sid, a, "x")


# --------------------------------------------------------------------------- samples


def test_record_samples(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1, 2])
    other = store.create_branch(sid, [9])
    store.focus_branch(sid, a)
    before = state(store, sid)
    v0 = store.version(sid)
    conts = [[3, 4, 5], [], [3, 6]]
    ids, version = store.record_samples(
        sid, a, settings=SETTINGS, seed=42, continuations=conts, names=["s1", " s2 ", "s3"], steps=3,
        expected_version=v0,
    )
    assert version == store.version(sid) == v0 + 1 + sum(1 + len(c) for c in conts) + 1
    assert len(ids) == 3 and len(set(ids)) == 3 and other not in ids and a not in ids
    branches = store.branches(sid)
    assert [b.id for b in branches] == [a, *ids, other]  # right after the source, in order
    assert [b.name for b in branches[1:4]] == ["s1", "s2", "s3"]
    assert [tokens_of(store, b.node_id) for b in branches[1:4]] == [[1, 2, 3, 4, 5], [1, 2], [1, 2, 3, 6]]
    assert all(b.root_node_id == branches[0].root_node_id for b in branches[1:4])
    assert [b.id for b in branches if b.focused] == [ids[0]]

    events = store.events(sid)[v0:]
    g = v0 + 1
    assert events[0].type == ev.SAMPLES_DRAWN
    assert events[0].data == ev.SamplesDrawn(branch_id=a, settings=SETTINGS, seed=42, count=3, steps=3, group=g)
    assert [e.type for e in events[1:]] == (
        [ev.BRANCH_DUPLICATED] + [ev.TOKEN_APPENDED] * 3 + [ev.BRANCH_DUPLICATED]
        + [ev.BRANCH_DUPLICATED] + [ev.TOKEN_APPENDED] * 2 + [ev.BRANCH_FOCUSED]
    )
    assert all(e.payload["group"] == g for e in events)

    # One undo removes every sample branch and restores the focus.
    assert store.undo(sid, expected_version=version) == ev.BRANCH_FOCUSED
    assert store.version(sid) == version + 1
    assert state(store, sid) == before
    assert len(last_event(store, sid).payload["target_seqs"]) == len(events) - 1
    assert maintenance.check(store) == []
    # Samples again: new ids (never reused), the same layout.
    ids2, _ = store.record_samples(sid, a, settings={}, seed=0, continuations=[[7]], names=["again"], steps=1)
    assert ids2[0] > max(ids)
    assert [b.name for b in store.branches(sid)] == ["branch 1", "again", "branch 2"]
    with store.read_transaction() as conn:
        incremental = maintenance.snapshot(conn)
    maintenance.rebuild(store)
    with store.read_transaction() as conn:
        assert maintenance.snapshot(conn) == incremental
    assert maintenance.check(store) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(continuations=[[1], [2]], names=["x"]), "2 sample continuation"),
        (dict(continuations=[[1]], names=["x", "y"]), "but 2 name"),
        (dict(continuations=[], names=[]), "no samples"),
        (dict(continuations=[[1, -1]], names=["x"]), "token ids"),
        (dict(continuations=[[1 << 32]], names=["x"]), "token ids"),
        (dict(continuations=[[1]], names=[""]), "cannot be empty"),
        (dict(continuations=[[1]], names=["a\tb"]), "control characters"),
        (dict(settings={"temperature": float("nan")}), "finite"),
        (dict(settings={"temperature": [1]}), "number, text or null"),
        (dict(settings=[1]), "mapping"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(steps=-1), "steps must be at least 0"),
    ],
)
def test_record_samples_validation(store, kwargs, message):
    sid = new_session(store)
    a = store.create_branch(sid, [1])
    args = dict(settings=SETTINGS, seed=1, continuations=[[1]], names=["x"], steps=1) | kwargs
    version = store.version(sid)
    with pytest.raises(StoreError, match=message):
        store.record_samples(sid, a, **args)
    assert store.version(sid) == version


def test_record_samples_is_one_transaction(store):
    """A failure part-way (an unknown source branch) writes nothing at all."""
    sid = new_session(store)
    store.create_branch(sid, [1])
    version = store.version(sid)
    with pytest.raises(StoreError, match="no branch 99"):
        store.record_samples(sid, 99, settings=SETTINGS, seed=1, continuations=[[2]], names=["x"], steps=1)
    assert store.version(sid) == version


def test_new_commands_refuse_a_stale_screen(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1])
    seen = store.version(sid)
    store.append_token(sid, a, 2)
    calls = [
        lambda v: store.rename_branch(sid, a, "n", expected_version=v),
        lambda v: store.record_samples(
            sid, a, settings=SETTINGS, seed=1, continuations=[[3]], names=["x"], steps=1, expected_version=v
        ),
        lambda v: store.append_token(sid, a, 3, expected_version=v, group=v + 1),
        lambda v: store.undo(sid, expected_version=v),
    ]
    events = store.events(sid)
    for call in calls:
        with pytest.raises(StaleCommand):
            call(seen)
    assert store.events(sid) == events
    for call in calls:
        current = store.version(sid)
        call(current)
        with pytest.raises(StaleCommand):
            call(current)
    assert maintenance.check(store) == []

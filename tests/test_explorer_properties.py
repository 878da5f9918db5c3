"""Property tests (hypothesis): random command sequences against the explorer core (the
same Explorer the TUI drives, with the fake model) keep every invariant:

* every listed branch points at an existing node with a complete path to the tree's root,
  and its root-prompt node exists; exactly one branch is focused; positions are 0..n-1; the snapshot the screen draws matches;
* undo inverts: each undo restores exactly the branches/focus from before the change it undoes,
  walking back change by change;
* pop then append puts the popped token back (same node);
* rebuild == projection: replaying the event log gives identical projection rows, and
  `db check` finds nothing.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_engine import FakeEngine, new_session
from tokentree.config import Config, DisplayConfig
from tokentree.errors import TokentreeError
from tokentree.core.explorer import Explorer
from tokentree.store import Store, maintenance
from tokentree.store import events as ev

CONFIG = Config(display=DisplayConfig(tokens_to_show=5))
PROMPTS = {"cat": " the cat sat", "dog": " a dog"}

COMMANDS = st.sampled_from([
    "append", "append", "append", "pop", "pop", "pop_append", "cursor_down", "cursor_up",
    "walk_forward", "next_branch", "prev_branch", "duplicate", "remove", "reset",
    "undo", "undo", "save", "view", "jobs",
])

_DIR = Path(tempfile.mkdtemp(prefix="tokentree-explorer-prop-"))
_TEMPLATE = _DIR / "template.db"


def fresh_store() -> Store:
    if not _TEMPLATE.exists():
        Store.open(_TEMPLATE).close()  # migrated once; each example copies the file
    path = _DIR / f"{uuid.uuid4().hex}.db"
    shutil.copyfile(_TEMPLATE, path)
    return Store.open(path)


def observe(store: Store, sid: int) -> tuple:
    return tuple((b.id, b.name, b.position, b.node_id, b.root_node_id, b.focused) for b in store.branches(sid))


def check_invariants(ex: Explorer, store: Store, sid: int) -> None:
    branches = store.branches(sid)
    assert branches, "a session must keep at least one branch"
    assert [b.position for b in branches] == list(range(len(branches)))
    assert sum(b.focused for b in branches) == 1
    for b in branches:
        path = [n.id for n in store.path_nodes(b.node_id)]  # raises if the node is missing
        assert path[-1] == b.node_id and len(path) == store.node(b.node_id).depth
        store.node(b.root_node_id)  # popping may go above the root prompt; the root stays
    snap = ex.snapshot()
    assert [r.id for r in snap.branches] == [b.id for b in branches]
    focused = next(b for b in branches if b.focused)
    assert len(snap.prompt) == store.node(focused.node_id).depth
    assert not snap.candidates or 0 <= snap.selected < len(snap.candidates)


def run(ex: Explorer, command: str) -> None:
    if command == "append":
        ex.append()
    elif command == "pop":
        ex.pop()
    elif command == "cursor_down":
        ex.cursor(1)
    elif command == "cursor_up":
        ex.cursor(-1)
    elif command == "walk_forward":
        ex.walk_forward()
    elif command == "next_branch":
        ex.features.branches.switch_branch(1)
    elif command == "prev_branch":
        ex.features.branches.switch_branch(-1)
    elif command == "duplicate":
        ex.features.branches.duplicate_branch()
    elif command == "remove":
        ex.features.branches.remove_branch()
    elif command == "reset":
        ex.features.branches.reset_branch()
    elif command == "undo":
        ex.undo()
    elif command == "save":
        ex.features.branches.save_branch()
    elif command == "view":
        ex.features.views.cycle_prompt_view()
    elif command == "jobs":
        ex.run_jobs_inline()
    else:  # pragma: no cover
        raise AssertionError(command)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(commands=st.lists(COMMANDS, min_size=1, max_size=30), eager=st.booleans())
def test_random_commands_keep_every_invariant(tokentree_home, commands, eager):
    store = fresh_store()
    try:
        engine = FakeEngine()
        loaded = engine.loaded
        sid = store.start_session(model_name=loaded.name, fingerprint=loaded.fingerprint,
                                  vocab_key=loaded.vocab_key, prompt_sources=list(PROMPTS))
        # (the state before each undoable change, its undo group), newest last: one undo takes
        # back the newest change and every change before it in the same group (a key's run).
        undo_stack: list[tuple] = []
        for name, text in PROMPTS.items():  # as launch does; creating a branch is undoable too
            undo_stack.append((observe(store, sid), None))
            store.create_branch(sid, engine.encode(text), source=name, name=name)
        ex = Explorer(store, sid, config=CONFIG, model_name=loaded.name)
        ex.attach_engine(engine)
        for command in commands:
            if eager:
                ex.run_jobs_inline()  # model results arrive at once, or only on "jobs"
            before = observe(store, sid)
            n_events = store.version(sid)
            queued = ex.queued_appends
            if command == "pop_append":
                node = ex.focused_branch().node_id
                ex.pop()
                if store.version(sid) == n_events:
                    continue  # nothing to pop
                middle = observe(store, sid)
                ex.run_jobs_inline()
                ex.append()
                assert ex.focused_branch().node_id == node, "pop then append must put the token back"
                groups = [e.payload.get("group") for e in store.events(sid)[n_events:]]
                assert len(groups) == 2 and groups[0] != groups[1]  # a pop run, then an append run
                undo_stack += [(before, groups[0]), (middle, groups[1])]
                check_invariants(ex, store, sid)
                continue
            try:
                run(ex, command)
            except TokentreeError as exc:  # refused: nothing may have changed
                assert store.version(sid) == n_events, exc
            new = store.events(sid)[n_events:]
            if command == "jobs" and len(new) > 1:
                # Appends pressed while the model was busy are queued; the results append
                # them now, one event per earlier key press.
                assert len(new) <= queued and all(e.type == ev.TOKEN_APPENDED for e in new)
                states = [before] + [None] * (len(new) - 1)  # states in between: not seen
                undo_stack += [(state, e.payload.get("group")) for state, e in zip(states, new)]
                check_invariants(ex, store, sid)
                continue
            assert len(new) <= 1, f"{command} appended {len(new)} events"
            if new and new[0].type == ev.UNDO:
                assert undo_stack, "undo undid something the test never did"
                expected, group = undo_stack.pop()
                while group is not None and undo_stack and undo_stack[-1][1] == group:
                    expected, _ = undo_stack.pop()  # the rest of the run goes with it
                if expected is not None:
                    assert observe(store, sid) == expected, "undo is not the exact inverse"
            elif new and new[0].type in ev.UNDOABLE:
                undo_stack.append((before, new[0].payload.get("group")))
            elif command == "undo":  # refused: nothing left, or only the session's first branch
                assert observe(store, sid) == before
                assert not undo_stack or (len(undo_stack) == 1 and len(before) == 1)
            check_invariants(ex, store, sid)
        # rebuild == projection, and the database checks clean.
        with store.read_transaction() as conn:
            projections = maintenance.snapshot(conn)
        maintenance.rebuild(store)
        with store.read_transaction() as conn:
            assert maintenance.snapshot(conn) == projections
        assert maintenance.check(store) == []
    finally:
        store.close()
        path = store.path
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)


def test_undo_never_removes_the_last_branch(tokentree_home):
    store = fresh_store()
    try:
        engine = FakeEngine()
        sid = new_session(store, engine, {"only": " the cat"})
        ex = Explorer(store, sid, config=CONFIG, model_name=engine.loaded.name)
        ex.attach_engine(engine)
        ex.run_jobs_inline()
        ex.append()
        for _ in range(4):
            ex.undo()
        assert len(store.branches(sid)) == 1
        assert ex.message == "nothing to undo"
        ex.snapshot()
    finally:
        store.close()

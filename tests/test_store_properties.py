"""Property tests (hypothesis) for the event store.

Random action sequences over two sessions that share one node table (single commands, and
groups that undo as one step: fills, counterfactual pop + append, duplicate + fill + focus,
recorded samples; renames) check that:
* the Store agrees with a tiny pure-Python model of branches, focus and token paths;
* every undo restores the observable state from just before the undone action (a whole
  group for a grouped one), exactly
  (branch ids, names, positions, current and root nodes, focus), and walks further back
  when repeated;
* a rebuild (wipe + replay of all events) gives identical projection rows, ids included,
  and `check` finds nothing wrong.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokentree.errors import StoreError
from tokentree.store import Store, maintenance
from tokentree.store import events as ev

VOCAB = "vocab-p"
TOKENS = st.integers(0, 3)  # a small alphabet: prefixes collide and nodes get shared
SESSION = st.sampled_from([0, 0, 0, 1])  # mostly one session: longer histories to undo
INDEX = st.one_of(st.just(-1), st.integers(0, 7))  # -1: the focused branch
NAMES = st.sampled_from(["a", " b ", "branch 1", "branch 2", "x y"])

ACTION = st.one_of(
    st.tuples(st.just("create"), SESSION, st.lists(TOKENS, min_size=1, max_size=3)),
    st.tuples(st.just("append"), SESSION, INDEX, TOKENS),
    st.tuples(st.just("append"), SESSION, INDEX, TOKENS),
    st.tuples(st.just("pop"), SESSION, INDEX),
    st.tuples(st.just("move"), SESSION, INDEX, st.integers(0, 40)),
    st.tuples(st.just("duplicate"), SESSION, INDEX),
    st.tuples(st.just("remove"), SESSION, INDEX),
    st.tuples(st.just("focus"), SESSION, INDEX),
    st.tuples(st.just("reset"), SESSION, INDEX),
    st.tuples(st.just("save"), SESSION, INDEX),
    st.tuples(st.just("fill"), SESSION, INDEX, st.lists(TOKENS, min_size=1, max_size=4)),
    st.tuples(st.just("counterfactual"), SESSION, INDEX, TOKENS),
    st.tuples(st.just("dupfill"), SESSION, INDEX, st.lists(TOKENS, max_size=3)),
    st.tuples(st.just("samples"), SESSION, INDEX, st.lists(st.lists(TOKENS, max_size=3), min_size=1, max_size=3)),
    st.tuples(st.just("rename"), SESSION, INDEX, NAMES),
    st.tuples(st.just("undo"), SESSION),
    st.tuples(st.just("undo"), SESSION),
)

_TEMPLATE_DIR = Path(tempfile.mkdtemp(prefix="tokentree-prop-"))
_TEMPLATE = _TEMPLATE_DIR / "template.db"
atexit.register(shutil.rmtree, _TEMPLATE_DIR, ignore_errors=True)


def _fresh_store() -> Store:
    if not _TEMPLATE.exists():
        Store.open(_TEMPLATE).close()  # migrated once; each example copies the file
    path = _TEMPLATE_DIR / f"{uuid.uuid4().hex}.db"
    shutil.copyfile(_TEMPLATE, path)
    return Store.open(path)


def _observe(store: Store, sid: int) -> list[tuple]:
    """What a user can see of a session: branches in order, focus, and their token paths."""
    out = []
    for b in store.branches(sid):
        path = [n.token_id for n in store.path_nodes(b.node_id)]
        root = [n.token_id for n in store.path_nodes(b.root_node_id)]
        out.append((b.id, b.name, b.position, b.focused, b.node_id, b.root_node_id, tuple(path), tuple(root)))
    return out


class Model:
    """Branches of one session as plain lists; ids and names predicted like the Store does."""

    def __init__(self) -> None:
        self.branches: list[dict] = []  # display order
        self.focus: int | None = None
        self.created = 0  # branch rows ever made in the session (names: "branch N")

    def view(self) -> list[tuple]:
        return [
            (b["id"], b["name"], i, b["id"] == self.focus, tuple(b["tokens"]), tuple(b["root"]))
            for i, b in enumerate(self.branches)
        ]


def _strip_ids(observed: list[tuple]) -> list[tuple]:
    return [(i, name, pos, foc, path, root) for (i, name, pos, foc, _n, _r, path, root) in observed]


def _run(actions) -> None:
    store = _fresh_store()
    try:
        sids = [
            store.start_session(model_name="m", fingerprint="fp", vocab_key=VOCAB, prompt_sources=["p"])
            for _ in range(2)
        ]
        models = [Model(), Model()]
        stacks: list[list[tuple[list, list, int | None]]] = [[], []]
        next_branch_id = [1]

        def snapshot(k):
            m = models[k]
            return _observe(store, sids[k]), [dict(b, tokens=list(b["tokens"])) for b in m.branches], m.focus

        def new_branch(k, tokens, root, at):
            m = models[k]
            m.created += 1
            b = {"id": next_branch_id[0], "name": f"branch {m.created}", "tokens": list(tokens), "root": list(root)}
            next_branch_id[0] += 1
            m.branches.insert(at, b)
            m.focus = b["id"]
            return b["id"]

        for k in (0, 1):
            stacks[k].append(snapshot(k))
            bid = store.create_branch(sids[k], [0])
            assert bid == new_branch(k, [0], [0], 0)

        for action in actions:
            kind, k = action[0], action[1]
            sid, m = sids[k], models[k]
            if kind == "create":
                before = snapshot(k)
                bid = store.create_branch(sid, action[2])
                assert bid == new_branch(k, action[2], action[2], len(m.branches))
                stacks[k].append(before)
            elif kind == "undo":
                got = store.undo(sid)
                # Nothing to undo, or only the creation of the last branch (a session keeps one).
                if not stacks[k] or not stacks[k][-1][1]:
                    assert got is None
                else:
                    assert got in ev.UNDOABLE
                    observed, branches, focus = stacks[k].pop()
                    assert _observe(store, sid) == observed  # exact: node ids included
                    m.branches, m.focus = branches, focus
            elif not m.branches:
                continue  # every branch of the session was undone away
            else:
                focused = [x for x in m.branches if x["id"] == m.focus]
                if action[2] == -1 and focused:
                    b = focused[0]
                else:
                    b = m.branches[action[2] % len(m.branches)]
                bid = b["id"]
                before = snapshot(k)
                if kind == "append":
                    store.append_token(sid, bid, action[3])
                    b["tokens"].append(action[3])
                elif kind == "pop":
                    if len(b["tokens"]) == 1:
                        with pytest.raises(StoreError):
                            store.pop_token(sid, bid)
                        continue
                    store.pop_token(sid, bid)
                    b["tokens"].pop()
                elif kind == "move":
                    nodes = store.session_nodes(sid)
                    target = nodes[action[3] % len(nodes)]
                    store.move_branch(sid, bid, target.id)
                    b["tokens"] = [n.token_id for n in store.path_nodes(target.id)]
                elif kind == "duplicate":
                    at = m.branches.index(b) + 1
                    got = store.duplicate_branch(sid, bid)
                    assert got == new_branch(k, b["tokens"], b["root"], at)
                elif kind == "remove":
                    if len(m.branches) == 1:
                        with pytest.raises(StoreError):
                            store.remove_branch(sid, bid)
                        continue
                    store.remove_branch(sid, bid)
                    i = m.branches.index(b)
                    m.branches.pop(i)
                    if m.focus == bid:
                        m.focus = m.branches[min(i, len(m.branches) - 1)]["id"]
                elif kind == "focus":
                    store.focus_branch(sid, bid)
                    m.focus = bid
                elif kind == "reset":
                    store.reset_branch(sid, bid)
                    b["tokens"] = list(b["root"])
                elif kind == "save":
                    store.record_prompt_saved(sid, bid, "saved.txt")
                    continue  # not undoable
                elif kind == "fill":  # grouped appends, each with the screen's version
                    v = store.version(sid)
                    for i, tok in enumerate(action[3]):
                        store.append_token(sid, bid, tok, expected_version=v + i, group=v + 1)
                    b["tokens"] += action[3]
                elif kind == "counterfactual":  # pop + append as one step
                    if len(b["tokens"]) == 1:
                        continue
                    v = store.version(sid)
                    store.pop_token(sid, bid, expected_version=v, group=v + 1)
                    store.append_token(sid, bid, action[3], expected_version=v + 1, group=v + 1)
                    b["tokens"][-1] = action[3]
                elif kind == "dupfill":  # duplicate, fill the copy, focus back: one step
                    g = store.version(sid) + 1
                    at = m.branches.index(b) + 1
                    new_id = store.duplicate_branch(sid, bid, group=g)
                    assert new_id == new_branch(k, b["tokens"], b["root"], at)
                    for tok in action[3]:
                        store.append_token(sid, new_id, tok, group=g)
                    m.branches[at]["tokens"] += action[3]
                    store.focus_branch(sid, bid, group=g)
                    m.focus = bid
                elif kind == "samples":
                    conts = action[3]
                    names = [f"s{j}" for j in range(len(conts))]
                    v = store.version(sid)
                    ids, version = store.record_samples(
                        sid, bid, settings={"temperature": 1.0}, seed=7, continuations=conts, names=names,
                        steps=3, expected_version=v,
                    )
                    assert version == store.version(sid) == v + 2 + sum(1 + len(c) for c in conts)
                    at = m.branches.index(b) + 1
                    for j, cont in enumerate(conts):
                        assert ids[j] == new_branch(k, b["tokens"] + cont, b["root"], at + j)
                        m.branches[at + j]["name"] = names[j]
                    m.focus = ids[0]
                elif kind == "rename":
                    name = action[3].strip()
                    if name == b["name"]:
                        with pytest.raises(StoreError, match="already called"):
                            store.rename_branch(sid, bid, action[3])
                        continue
                    store.rename_branch(sid, bid, action[3])
                    b["name"] = name
                stacks[k].append(before)
            assert _strip_ids(_observe(store, sid)) == m.view()

        for k in (0, 1):
            assert _strip_ids(_observe(store, sids[k])) == models[k].view()
        with store.read_transaction() as conn:
            incremental = maintenance.snapshot(conn)
        maintenance.rebuild(store)
        with store.read_transaction() as conn:
            assert maintenance.snapshot(conn) == incremental

        # Walk every session all the way back: each undo must land exactly on the state from
        # before the action it reverts.
        for k in (0, 1):
            while len(stacks[k]) > 1:
                observed, _branches, _focus = stacks[k].pop()
                assert store.undo(sids[k]) in ev.UNDOABLE
                assert _observe(store, sids[k]) == observed
            # History ends at the first branch: a session always keeps one.
            assert store.undo(sids[k]) is None
            assert len(store.branches(sids[k])) == 1
        assert maintenance.check(store) == []
    finally:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(store.path) + suffix).unlink(missing_ok=True)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(ACTION, min_size=8, max_size=30))
def test_random_actions_rebuild_equals_incremental_and_undo_is_exact(actions):
    _run(actions)


def test_undo_everything_then_rebuild():
    """A fixed long sequence: do a lot, undo all of it, and the sessions are empty again."""
    actions = [("create", 0, [1, 2]), ("append", 0, 1, 3), ("duplicate", 0, 2), ("remove", 0, 0)]
    actions += [("move", 0, 0, 5), ("reset", 0, 0), ("focus", 0, 1), ("append", 1, 0, 2)]
    actions += [("undo", 0)] * 12 + [("undo", 1)] * 3 + [("create", 1, [3])]
    _run(actions)

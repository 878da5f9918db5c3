"""The event store: commands, content-addressed nodes, undo, the append-only log, the
model-output cache, maintenance (rebuild/check/backup) and faults."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text

from tokentree.errors import ConcurrencyError, SessionNotFound, StoreError
from tokentree.outputs import Analysis, Distribution, NodeOutput
from tokentree.paths import default_db_path
from tokentree.store import Store, maintenance, prefix_key, prefix_keys
from tokentree.store import events as ev
from tokentree.store.cache import pack_f32, pack_u32, unpack_f32, unpack_u32


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "data" / "tokentree.db")
    yield s
    s.close()


def new_session(store, vocab_key="vocab-a", sources=("prompt.txt",)):
    return store.start_session(
        model_name="tiny", fingerprint="tiny@abc:float32", vocab_key=vocab_key, prompt_sources=list(sources)
    )


def tokens_of(store, node_id):
    return [n.token_id for n in store.path_nodes(node_id)]


def _fingerprint(path):
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode)


# --------------------------------------------------------------------------- files


def test_open_creates_user_only_dir_and_file(tmp_path):
    path = tmp_path / "new" / "dir" / "tokentree.db"
    store = Store.open(path)
    store.start_session(model_name="m", fingerprint="f", vocab_key="v", prompt_sources=[])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for side in ("-wal", "-shm"):
        side_path = path.with_name(path.name + side)
        if side_path.exists():
            assert stat.S_IMODE(side_path.stat().st_mode) & 0o077 == 0
    store.close()


def test_default_db_path_follows_tokentree_home(tokentree_home):
    assert default_db_path() == tokentree_home / "tokentree.db"
    with Store.open(default_db_path()) as store:
        assert store.path == tokentree_home / "tokentree.db"


def test_data_survives_reopen(tmp_path):
    path = tmp_path / "t.db"
    with Store.open(path) as store:
        sid = new_session(store)
        b = store.create_branch(sid, [5, 6, 7], source="prompt.txt")
        node = store.append_token(sid, b, 8)
    with Store.open(path) as store:
        assert store.latest_session_id() == sid
        [branch] = store.branches(sid)
        assert branch.node_id == node and branch.focused and branch.source == "prompt.txt"
        assert tokens_of(store, node) == [5, 6, 7, 8]
        assert [e.type for e in store.events(sid)] == [ev.SESSION_STARTED, ev.BRANCH_CREATED, ev.TOKEN_APPENDED]


# --------------------------------------------------------------------------- commands


def test_create_branch_builds_the_prompt_path(store):
    sid = new_session(store)
    b = store.create_branch(sid, [1, 2, 3], name="main")
    [branch] = store.branches(sid)
    assert (branch.id, branch.name, branch.position, branch.focused) == (b, "main", 0, True)
    assert branch.node_id == branch.root_node_id
    path = store.path_nodes(branch.node_id)
    assert [n.token_id for n in path] == [1, 2, 3]
    assert [n.depth for n in path] == [1, 2, 3]
    assert path[0].parent_id is None and path[1].parent_id == path[0].id
    assert [n.prefix_key for n in path] == prefix_keys([1, 2, 3], "vocab-a")
    assert {n.id for n in store.session_nodes(sid)} == {n.id for n in path}
    with pytest.raises(StoreError):
        store.create_branch(sid, [])


def test_append_pop_reset_move(store):
    sid = new_session(store)
    b = store.create_branch(sid, [1, 2])
    n3 = store.append_token(sid, b, 3)
    n4 = store.append_token(sid, b, 4)
    assert tokens_of(store, n4) == [1, 2, 3, 4]
    assert store.pop_token(sid, b) == n3
    assert store.branches(sid)[0].node_id == n3
    store.reset_branch(sid, b)
    root = store.branches(sid)[0].root_node_id
    assert store.branches(sid)[0].node_id == root
    store.move_branch(sid, b, n4)  # walk forward along the tree
    assert store.branches(sid)[0].node_id == n4
    # popping back through the prompt works, down to one token
    store.pop_token(sid, b)
    store.pop_token(sid, b)
    first = store.pop_token(sid, b)
    assert store.node(first).depth == 1
    with pytest.raises(StoreError, match="only token"):
        store.pop_token(sid, b)
    with pytest.raises(StoreError):
        store.move_branch(sid, b, 10_000)


def test_same_prefix_is_one_node_across_branches_and_sessions(store):
    s1 = new_session(store)
    b1 = store.create_branch(s1, [1, 2])
    x = store.append_token(s1, b1, 9)
    b2 = store.create_branch(s1, [1, 2, 9])
    assert store.branches(s1)[1].node_id == x
    dup = store.duplicate_branch(s1, b2)
    assert store.append_token(s1, dup, 4) == store.append_token(s1, b1, 4)
    s2 = new_session(store)
    b3 = store.create_branch(s2, [1, 2, 9, 4])
    assert store.branches(s2)[0].node_id == store.branches(s1)[0].node_id
    # another vocabulary: other nodes, even for the same ids
    s3 = new_session(store, vocab_key="vocab-b")
    store.create_branch(s3, [1, 2])
    assert store.branches(s3)[0].node_id not in {n.id for n in store.session_nodes(s1)}
    assert b3 != b1
    root = store.path_nodes(x)[0]
    assert store.subtree_sizes([root.id])[root.id] == 3  # 2, 9, 4 below 1
    assert [c.token_id for c in store.children(x)] == [4]


def test_prefix_key_is_chained():
    root = prefix_key(None, 5, "v")
    assert len(root) == 16
    assert prefix_key(root, 6, "v") == prefix_keys([5, 6], "v")[1]
    assert prefix_key(None, 5, "w") != root
    assert prefix_key(root, 6, "v") != prefix_key(None, 6, "v")


def test_duplicate_remove_focus(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1])
    b = store.create_branch(sid, [2])
    c = store.duplicate_branch(sid, a)  # right after the source, focused
    assert [x.id for x in store.branches(sid)] == [a, c, b]
    assert [x.position for x in store.branches(sid)] == [0, 1, 2]
    assert [x.id for x in store.branches(sid) if x.focused] == [c]
    store.remove_branch(sid, c)  # focus moves to the neighbour (the next one)
    assert [x.id for x in store.branches(sid)] == [a, b]
    assert [x.id for x in store.branches(sid) if x.focused] == [b]
    store.remove_branch(sid, b)  # last in order: focus moves to the previous one
    assert [x.id for x in store.branches(sid) if x.focused] == [a]
    with pytest.raises(StoreError, match="last branch"):
        store.remove_branch(sid, a)
    with pytest.raises(StoreError):
        store.focus_branch(sid, b)  # removed
    d = store.create_branch(sid, [3])
    assert d > c  # branch ids are never reused
    store.focus_branch(sid, a)
    assert [x.id for x in store.branches(sid) if x.focused] == [a]


def test_unknown_session_and_branch(store):
    with pytest.raises(SessionNotFound):
        store.session(42)
    with pytest.raises(SessionNotFound):
        store.create_branch(42, [1])
    sid = new_session(store)
    with pytest.raises(StoreError):
        store.append_token(sid, 99, 1)


def test_undo_walks_back_and_is_exact(store):
    sid = new_session(store)
    states = []

    def state():
        return [(b.id, b.name, b.position, b.node_id, b.root_node_id, b.focused) for b in store.branches(sid)]

    a = store.create_branch(sid, [1, 2])
    states.append(state())
    store.append_token(sid, a, 3)
    states.append(state())
    b = store.duplicate_branch(sid, a)
    states.append(state())
    store.pop_token(sid, b)
    states.append(state())
    store.focus_branch(sid, a)
    states.append(state())
    store.remove_branch(sid, a)
    states.append(state())
    store.record_prompt_saved(sid, b, "/tmp/x.txt")  # not undoable: undo skips it
    store.reset_branch(sid, b)
    store.move_branch(sid, b, store.branches(sid)[0].node_id)
    assert store.undo(sid) == ev.BRANCH_MOVED
    assert store.undo(sid) == ev.BRANCH_RESET
    assert state() == states[-1]
    expected_types = [ev.BRANCH_REMOVED, ev.BRANCH_FOCUSED, ev.TOKEN_POPPED, ev.BRANCH_DUPLICATED, ev.TOKEN_APPENDED]
    for t in expected_types:
        states.pop()
        assert store.undo(sid) == t
        assert state() == states[-1]
    # Undo history ends at the session's last branch: a session always keeps one.
    assert store.undo(sid) is None and not store.can_undo(sid)
    assert state() == states[-1] and len(store.branches(sid)) == 1
    undos = [e for e in store.events(sid) if e.type == ev.UNDO]
    assert len(undos) == 7 and undos[0].payload["target_type"] == ev.BRANCH_MOVED
    # undo after new work reverts the new work first
    c = store.create_branch(sid, [7])
    store.append_token(sid, c, 8)
    assert store.undo(sid) == ev.TOKEN_APPENDED
    assert tokens_of(store, store.branches(sid)[-1].node_id) == [7]
    assert maintenance.check(store) == []


# --------------------------------------------------------------------------- event log


def test_events_are_append_only(store):
    sid = new_session(store)
    store.create_branch(sid, [1])
    raw = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("UPDATE events SET type = 'x'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM events")
    finally:
        raw.close()
    with pytest.raises(StoreError, match="append-only"):
        with store.write_transaction() as conn:
            conn.execute(text("DELETE FROM events WHERE seq = 1"))
    assert len(store.events(sid)) == 2


def test_events_shape(store):
    sid = new_session(store)
    b = store.create_branch(sid, [1])
    store.append_token(sid, b, 2)
    events = store.events(sid)
    assert [e.version for e in events] == [1, 2, 3]
    assert all(e.payload["v"] == ev.PAYLOAD_VERSION for e in events)
    assert all(e.type in ev.EVENT_TYPES for e in events)
    assert all(e.created_at.endswith("Z") for e in events)
    assert events[1].payload["root_tokens"] == [1]
    assert events[2].payload == {
        "v": 2, "branch_id": b, "token_id": 2, "from_node": events[2].payload["from_node"], "group": None
    }


def test_duplicate_version_raises_concurrency_error(store):
    sid = new_session(store)
    b = store.create_branch(sid, [1])
    version = store.version(sid)
    payload = {"branch_id": b, "prev_focus": b}
    store.append_event(sid, ev.BRANCH_FOCUSED, payload, expected_version=version)
    with pytest.raises(ConcurrencyError):
        store.append_event(sid, ev.BRANCH_FOCUSED, payload, expected_version=version)  # stale
    assert store.version(sid) == version + 1
    assert maintenance.check(store) == []


def test_two_stores_on_one_file_interleave_safely(tmp_path):
    path = tmp_path / "t.db"
    one, two = Store.open(path), Store.open(path)
    try:
        sid = new_session(one)
        b = one.create_branch(sid, [1])
        for i in range(5):
            one.append_token(sid, b, 10 + i)
            two.append_token(sid, b, 20 + i)
        assert [e.version for e in two.events(sid)] == list(range(1, 13))
        assert len(tokens_of(one, one.branches(sid)[0].node_id)) == 11
        assert maintenance.check(two) == []
    finally:
        one.close()
        two.close()


# --------------------------------------------------------------------------- sessions


def test_sessions_listing(store):
    s1 = new_session(store, sources=["a.txt"])
    b1 = store.create_branch(s1, [1, 2])
    s2 = new_session(store, sources=["b.txt"])
    store.create_branch(s2, [3])
    assert store.latest_session_id() == s2
    store.append_token(s1, b1, 4)  # s1 becomes the most recently used
    assert store.latest_session_id() == s1
    store.put_token_bytes("vocab-a", {1: b"\n", 2: b"Hello world\nmore", 3: b"x"})
    summaries = store.list_sessions()
    assert [s.id for s in summaries] == [s1, s2]
    first = summaries[0]
    assert (first.n_branches, first.n_nodes, first.first_line) == (1, 3, "Hello world")
    assert first.prompt_sources == ("a.txt",)
    info = store.session(s1)
    assert info.fingerprint == "tiny@abc:float32" and info.vocab_key == "vocab-a"
    assert info.created_at <= info.last_used_at


def test_empty_store_has_no_sessions(store):
    assert store.latest_session_id() is None
    assert store.list_sessions() == []


# --------------------------------------------------------------------------- cache


def _output(k, seed, token_prob=0.25, token_rank=3):
    ids = tuple((seed * 7919 + i * 104729) % 151_936 for i in range(k))
    probs = tuple(1.0 / (i + 2) for i in range(k))
    return NodeOutput(token_prob=token_prob, token_rank=token_rank, next=Distribution(ids, probs, 2.5, 0.21))


def test_packing_round_trip():
    assert unpack_u32(pack_u32([0, 1, 2**32 - 1])) == (0, 1, 2**32 - 1)
    assert len(pack_u32(range(64))) == 256 and len(pack_f32([0.5] * 64)) == 256
    assert unpack_f32(pack_f32([0.5, 0.25])) == (0.5, 0.25)


def test_outputs_round_trip_and_one_transaction(store):
    keys = prefix_keys(list(range(100, 140)), "vocab-a")
    items = [(k, _output(64, i)) for i, k in enumerate(keys)]
    items[0] = (keys[0], _output(64, 0, token_prob=None, token_rank=None))
    commits = []
    sa_event.listen(store.engine, "commit", lambda conn: commits.append(1))
    store.put_outputs(items, "fp")
    assert len(commits) == 1  # a whole prefill in ONE transaction
    got = store.get_outputs(keys + [b"\0" * 16], "fp")
    assert set(got) == set(keys)
    assert got[keys[0]].token_prob is None and got[keys[0]].token_rank is None
    for key, out in items[1:]:
        g = got[key]
        assert g.token_prob == out.token_prob and g.token_rank == out.token_rank
        assert g.next.top_ids == out.next.top_ids
        assert g.next.entropy == out.next.entropy and g.next.norm_entropy == out.next.norm_entropy
        assert g.next.top_probs == pytest.approx(out.next.top_probs, rel=1e-6)
    assert store.get_outputs(keys, "other-model") == {}
    store.put_outputs([(keys[1], _output(64, 99))], "fp")  # replaces
    assert store.get_outputs([keys[1]], "fp")[keys[1]].next.top_ids == _output(64, 99).next.top_ids


def test_node_scores_are_the_light_columns_of_the_session_nodes(store):
    sid = store.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])
    b = store.create_branch(sid, [5, 6, 7])
    nodes = store.path_nodes(store.branches(sid)[0].node_id)
    outputs = [_output(64, i) for i in range(len(nodes))]
    store.put_outputs([(n.prefix_key, o) for n, o in zip(nodes[1:], outputs[1:])], "fp")  # first left uncached
    scores = store.node_scores(sid, "fp")
    assert set(scores) == {n.id for n in nodes[1:]}
    for n, o in zip(nodes[1:], outputs[1:]):
        assert scores[n.id] == (o.token_prob, o.token_rank, o.next.entropy, o.next.norm_entropy)
    assert store.node_scores(sid, "another-model") == {}
    assert b == store.branches(sid)[0].id


def test_analysis_merges_fields(store):
    key = prefix_key(None, 1, "v")
    assert store.get_analysis(key, "fp") is None
    store.put_analysis(key, "fp", Analysis(influence=(1.0, 0.5, 0.25)))
    store.put_analysis(key, "fp", Analysis(lens_ids=(4, 5), lens_probs=((0.5, 0.25), (0.125, 1.0), (0.0, 0.75))))
    got = store.get_analysis(key, "fp")
    assert got.influence == (1.0, 0.5, 0.25)
    assert got.lens_ids == (4, 5)
    assert got.lens_probs == ((0.5, 0.25), (0.125, 1.0), (0.0, 0.75))
    store.put_analysis(key, "fp", Analysis(influence=(1.0,)))
    got = store.get_analysis(key, "fp")
    assert got.influence == (1.0,) and got.lens_ids == (4, 5)
    assert store.get_analysis(key, "other") is None


def test_influence_round_trips_its_missing_positions_and_sink_share(store):
    """Positions without an influence value (the sink, the query) are NaN on disk and None
    again in memory; the sink share is stored with the influence and replaced with it."""
    key = prefix_key(None, 2, "v")
    store.put_analysis(key, "fp", Analysis(influence=(None, 1.0, 0.5, 0.25, None), sink_share=0.875))
    got = store.get_analysis(key, "fp")
    assert got.influence == (None, 1.0, 0.5, 0.25, None) and got.sink_share == 0.875
    with store.read_transaction() as conn:
        blob = conn.execute(text("SELECT influence FROM node_analyses")).scalar()
    assert [v != v for v in unpack_f32(blob)] == [True, False, False, False, True]  # NaN on disk
    # A lens-only write keeps both; a new influence replaces both (a short prefix: no share).
    store.put_analysis(key, "fp", Analysis(lens_ids=(4,), lens_probs=((0.5,),)))
    assert store.get_analysis(key, "fp").sink_share == 0.875
    store.put_analysis(key, "fp", Analysis(influence=(None,), sink_share=None))
    got = store.get_analysis(key, "fp")
    assert got.influence == (None,) and got.sink_share is None and got.lens_ids == (4,)


def test_token_bytes_insert_or_ignore(store):
    store.put_token_bytes("v", {1: b"a", 2: b"\xff"})
    store.put_token_bytes("v", {1: b"changed", 3: b" c"})
    assert store.token_bytes("v", [1, 2, 3, 4]) == {1: b"a", 2: b"\xff", 3: b" c"}
    assert store.token_bytes("w", [1]) == {}


def test_cache_rows_are_compact(store):
    key = prefix_key(None, 1, "v")
    store.put_outputs([(key, _output(64, 1))], "fp")
    with store.read_transaction() as conn:
        row = conn.execute(text("SELECT length(top_ids), length(top_probs) FROM node_outputs")).one()
    assert tuple(row) == (256, 256)


# --------------------------------------------------------------------------- maintenance


def _busy_session(store):
    sid = new_session(store)
    a = store.create_branch(sid, [1, 2, 3])
    store.append_token(sid, a, 4)
    b = store.duplicate_branch(sid, a)
    store.append_token(sid, b, 5)
    store.remove_branch(sid, a)
    store.undo(sid)
    s2 = new_session(store, vocab_key="vocab-b")
    store.create_branch(s2, [1, 2, 3])
    store.focus_branch(sid, b)
    return sid


def test_rebuild_reproduces_projections_and_keeps_the_cache(store):
    _busy_session(store)
    key = prefix_key(None, 1, "vocab-a")
    store.put_outputs([(key, _output(64, 1))], "fp")
    with store.read_transaction() as conn:
        before = maintenance.snapshot(conn)
    assert maintenance.rebuild(store) == len(store.events(1)) + len(store.events(2))
    with store.read_transaction() as conn:
        assert maintenance.snapshot(conn) == before
    assert key in store.get_outputs([key], "fp")
    assert maintenance.check(store) == []


def test_check_detects_a_tampered_projection(store):
    sid = _busy_session(store)
    with store.write_transaction() as conn:
        conn.execute(text("UPDATE branches SET name = 'tampered' WHERE session_id = :s"), {"s": sid})
    problems = maintenance.check(store)
    assert any("branches" in p for p in problems)
    maintenance.rebuild(store)
    assert maintenance.check(store) == []


def test_backup_with_vacuum_into(store, tmp_path):
    sid = _busy_session(store)
    dest = tmp_path / "backup.db"
    maintenance.backup(store, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    with Store.open(dest) as copy:
        assert copy.events(sid) == store.events(sid)
        assert maintenance.check(copy) == []
    with pytest.raises(StoreError, match="already exists"):
        maintenance.backup(store, dest)
    with pytest.raises(StoreError):
        maintenance.backup(store, tmp_path / "missing-dir" / "b.db")


# --------------------------------------------------------------------------- faults


def _made_db(tmp_path, pages=True):
    path = tmp_path / "t.db"
    with Store.open(path) as store:
        sid = new_session(store)
        store.create_branch(sid, list(range(50)))
        if pages:
            keys = prefix_keys(list(range(200)), "vocab-a")
            store.put_outputs([(k, _output(64, i)) for i, k in enumerate(keys)], "fp")
    return path


def test_not_a_database_file(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 100)
    before = _fingerprint(path)
    with pytest.raises(StoreError, match="not a tokentree database") as info:
        Store.open(path)
    assert "\n" not in str(info.value)
    assert _fingerprint(path) == before
    short = tmp_path / "short.db"
    short.write_bytes(b"\x00\x01binary")
    with pytest.raises(StoreError):
        Store.open(short)


@pytest.mark.parametrize("cut", ["half-page", "whole-pages", "header"])
def test_truncated_database(tmp_path, cut):
    path = _made_db(tmp_path)
    data = path.read_bytes()
    page = int.from_bytes(data[16:18], "big")
    size = {"half-page": len(data) // 2 + 100, "whole-pages": (len(data) // page // 2) * page, "header": 60}[cut]
    path.write_bytes(data[:size])
    before = _fingerprint(path)
    with pytest.raises(StoreError, match="truncated") as info:
        Store.open(path)
    assert "\n" not in str(info.value)
    assert _fingerprint(path) == before


def test_locked_database(tmp_path):
    path = _made_db(tmp_path, pages=False)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        before = _fingerprint(path)
        with pytest.raises(StoreError, match="locked") as info:
            Store.open(path, timeout=0.1)
        assert "\n" not in str(info.value)
        assert _fingerprint(path) == before
    finally:
        other.execute("ROLLBACK")
    # and a command on an open store while another process holds the write lock
    with Store.open(path, timeout=0.1) as store:
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="locked"):
                store.start_session(model_name="m", fingerprint="f", vocab_key="v", prompt_sources=[])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.latest_session_id() == 1


def test_read_only_database(tmp_path):
    path = _made_db(tmp_path, pages=False)
    os.chmod(path, 0o400)
    try:
        before = _fingerprint(path)
        with pytest.raises(StoreError, match="read-only"):
            Store.open(path)
        assert _fingerprint(path) == before
    finally:
        os.chmod(path, 0o600)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(StoreError, match="directory"):
        Store.open(tmp_path)


def test_full_disk_is_one_clear_error_and_loses_nothing(store):
    sid = new_session(store)
    store.create_branch(sid, [1, 2])
    with store.read_transaction() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    store.engine.dispose()  # new connections get the cap below: "the disk" is full now
    sa_event.listen(store.engine, "connect", lambda dbapi, _rec: dbapi.execute(f"PRAGMA max_page_count = {pages + 1}"))
    keys = prefix_keys(list(range(300)), "vocab-a")
    with pytest.raises(StoreError, match="disk is full") as info:
        store.put_outputs([(k, _output(64, i)) for i, k in enumerate(keys)], "fp")
    assert "\n" not in str(info.value)
    assert store.get_outputs(keys, "fp") == {}  # the transaction rolled back as a whole
    assert [b.node_id for b in store.branches(sid)] == [2]


def test_reader_batches_reads_in_one_transaction(store):
    """Store.reading(): the batched reads give the right nodes, and they all run in ONE read
    transaction."""
    sid = new_session(store)
    b1 = store.create_branch(sid, [1, 2, 3])
    x = store.append_token(sid, b1, 9)
    b2 = store.create_branch(sid, [1, 2, 4, 5])
    s2 = new_session(store)
    store.create_branch(s2, [1, 2, 3, 7])  # another session grows the same tree
    path = store.path_nodes(x)
    keys = [n.prefix_key for n in path]
    store.put_outputs([(keys[1], _output(8, 1)), (keys[2], _output(8, 2, token_prob=None, token_rank=None))], "fp")
    store.put_token_bytes("vocab-a", {1: b"a"})
    other = store.branches(sid)[1].node_id
    begins = []
    sa_event.listen(store.engine, "begin", lambda conn: begins.append(1))
    with store.reading() as r:
        got = dict(
            branches=r.branches(sid), version=r.session_version(sid), top=r.max_node_id(),
            after=r.nodes_after(x, 10), after_few=r.nodes_after(x, 1),
            nodes=r.nodes([x, path[0].id, 10**9]), union=r.paths([x, other, 10**9]),
            kids=r.children([path[1].id, x, 10**9]), links=dict(r.subtree_links([path[1].id])),
            count=r.session_node_count(sid), tree=r.session_tree(sid),
            probs=r.output_probs(keys, "fp"), no_probs=r.output_probs(keys, "no-such-model"),
            outputs=r.get_outputs(keys, "fp"), analysis=r.get_analysis(keys[1], "fp"),
            pieces=r.token_bytes("vocab-a", [1, 2]),
        )
        with pytest.raises(SessionNotFound):
            r.session_version(10**6)
    assert len(begins) == 1  # all of it in ONE read transaction
    assert [(b.id, b.node_id, b.focused) for b in got["branches"]] == [(b1, x, False), (b2, other, True)]
    assert got["version"] == store.events(sid)[-1].version == 4
    top = got["top"]
    assert top == max(n.id for n in store.session_nodes(s2) + store.session_nodes(sid))
    assert [n.id for n in got["after"]] == list(range(x + 1, top + 1)) and got["after_few"] is None
    with store.reading() as r:
        assert r.nodes_after(top, 5) == []
    assert {i: (n.token_id, n.depth) for i, n in got["nodes"].items()} == {x: (9, 4), path[0].id: (1, 1)}
    union = sorted((n.depth, n.token_id) for n in got["union"].values())
    assert union == [(1, 1), (2, 2), (3, 3), (3, 4), (4, 5), (4, 9)]
    assert [c.token_id for c in got["kids"][path[1].id]] == [3, 4]  # whole table, oldest first
    assert got["kids"][x] == [] and got["kids"][10**9] == []
    links = got["links"]
    below = {n.id for s in (sid, s2) for n in store.session_nodes(s) if n.depth > 2}
    assert set(links) == {path[1].id} | below
    assert all(links[i] == store.node(i).parent_id for i in links)
    assert len(links) - 1 == store.subtree_sizes([path[1].id])[path[1].id]
    assert got["count"] == len(store.session_nodes(sid))
    assert got["tree"] == [(n.id, n.parent_id, n.token_id) for n in store.session_nodes(sid)]
    assert got["probs"] == {keys[1]: _output(8, 1).token_prob, keys[2]: None} and got["no_probs"] == {}
    assert set(got["outputs"]) == {keys[1], keys[2]} and got["outputs"][keys[2]].token_prob is None
    assert got["analysis"] is None and got["pieces"] == {1: b"a"}

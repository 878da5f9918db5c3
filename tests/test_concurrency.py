"""Two tokentree processes on one database.

The store has no session lock: a second process on the same session works alongside the
first. Every command is one BEGIN IMMEDIATE transaction that re-validates against the
projections, so the two interleave command by command: no corruption, no lost events, and
a command made stale by the other process is refused with a one-line message (e.g. "no
branch 3 in session 1") instead of writing nonsense. These tests prove that, with the
explorer core in two forked processes (tests/robust_child.py) and with two real `tokentree`
commands in pseudo-terminals.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from robust_child import parse_events, shared_zygote, stored_events
from tokentree.store import Store, maintenance

STEPS = 120


def _run_pair(db, modes, seeds=(11, 12), steps=STEPS):
    z = shared_zygote()
    pids = [z.start(db, seed, mode, steps) for seed, mode in zip(seeds, modes)]
    results = [z.reap(pid) for pid in pids]
    for (status, lines), pid in zip(results, pids):
        parse_events(lines)  # raises on a child's exception (with its message)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (pid, status, lines[-3:])
        assert "D" in lines, f"child {pid} did not finish its {steps} commands"
    return [lines for _, lines in results]


def _verify(db, outputs):
    reported = {}
    for lines in outputs:
        reported.update(parse_events(lines))
    store = Store.open(db)
    try:
        assert maintenance.check(store) == []
        stored = stored_events(store)
        sessions = {s.id: s for s in store.list_sessions()}
        for sid in sessions:
            assert store.branches(sid), f"session {sid} has no branch left"
            versions = [e.version for e in store.events(sid)]
            assert versions == list(range(1, len(versions) + 1))
    finally:
        store.close()
    lost = {seq for seq, ev in reported.items() if stored.get(seq) != ev}
    assert not lost, f"events reported as committed are missing: {sorted(lost)[:10]}"
    return reported, stored


def _refusals(lines):
    return [line[2:] for line in lines if line.startswith("R ")]


def test_two_processes_different_sessions_on_a_new_database(tmp_path):
    """Both start at once on a database that does not exist yet: one creates and migrates
    it, the other waits for the write lock; then they write two sessions side by side."""
    db = tmp_path / "two.db"
    outputs = _run_pair(db, ("new", "new"))
    reported, stored = _verify(db, outputs)
    sessions = {ev[0] for ev in stored.values()}
    assert len(sessions) == 2
    for lines in outputs:
        assert not [r for r in _refusals(lines) if "locked" in r], "a writer gave up on the lock"
    # Each process's own session got exactly its own commands' events (nothing from the other).
    own = [{ev[0] for ev in parse_events(lines).values()} for lines in outputs]
    assert own[0].isdisjoint(own[1])


def test_two_processes_same_session_work_alongside(tmp_path):
    db = tmp_path / "same.db"
    _run_pair(db, ("new",), seeds=(5,), steps=30)  # session 1, with some history
    outputs = _run_pair(db, ("one", "one"))
    reported, stored = _verify(db, outputs)
    assert {ev[0] for ev in stored.values()} == {1}
    # Both processes wrote: events interleave in one version sequence. The two scripts press
    # keys with no pause at all, so a key often races the other window's and is refused as
    # stale (its screen is redrawn, as the app's is); still, many keys get through.
    store = Store.open(db)
    try:
        n_events = len(store.events(1))
    finally:
        store.close()
    assert n_events > 30 + STEPS // 4
    refusals = [r for lines in outputs for r in _refusals(lines)]
    # A stale command is refused in one clear line, never a lock time-out or a traceback.
    assert not [r for r in refusals if "locked" in r]
    assert all("\n" not in r for r in refusals)


# ------------------------------------------------------------------ real commands, in ptys

KEYS = "hwdhsu"
WAIT = 120  # seconds: a deadline for a state, never a pause


def _drain(child):
    import pexpect

    try:
        while True:
            child.read_nonblocking(65536, timeout=0.02)
    except (pexpect.TIMEOUT, pexpect.EOF):
        pass


def _session_version(db) -> int:
    """Session 1's version now, as another process sees it (its last committed event's)."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT max(version) FROM events WHERE session_id = 1").fetchone()[0] or 0
    finally:
        con.close()


def test_two_real_commands_on_one_session(tmp_path, tokentree_home):
    """Two `tokentree --resume 1` on one database, keys typed into both in turn: each window
    follows the other's changes, so every key acts on what its screen shows and is recorded;
    both quit cleanly, and the database checks clean afterwards.

    Each window reports the session version its screen shows (tests/child_hooks.py), and a
    key is typed into it only once that is the database's version: the window has caught up
    (its follow timer came round), however long that takes on a busy machine."""
    pexpect = pytest.importorskip("pexpect")
    from child_hooks import shown_version, with_hooks
    from test_crash_safety import _read_events, _seed_session, app_env, spawn_app

    db = tmp_path / "pty2.db"
    _seed_session(db)
    before = _read_events(db)
    env = app_env(tmp_path, tokentree_home)
    stubs = Path(env["PYTHONPATH"].split(os.pathsep)[0])  # the hooks' sitecustomize goes beside the stubs
    shown = [tmp_path / f"shown-{i}" for i in range(2)]
    children = []
    grew = [0, 0]  # keys that produced a committed event, per process
    try:
        for i in range(2):
            children.append(spawn_app(db, with_hooks(env, stubs, TOKENTREE_TEST_SHOWN=str(shown[i])), resume="1"))
        for i, key in enumerate(KEYS * 2):
            child = children[i % 2]
            version = _session_version(db)
            deadline = time.monotonic() + WAIT
            while shown_version(shown[i % 2]) != version:  # the window has caught up with the other one
                assert time.monotonic() < deadline, (
                    f"window {i % 2} still shows version {shown_version(shown[i % 2])}, not {version}")
                for c in children:
                    assert c.isalive(), "a tokentree process exited"
                    _drain(c)
            n = len(_read_events(db))
            child.send(key)
            deadline = time.monotonic() + WAIT
            while len(_read_events(db)) == n and time.monotonic() < deadline and child.isalive():
                _drain(child)  # its event is committed (a refused key would never commit one)
            _drain(child)
            grew[i % 2] += len(_read_events(db)) > n
        for child in children:
            child.sendcontrol("q")
        for child in children:
            child.expect(pexpect.EOF, timeout=WAIT)
            child.close()
            assert child.exitstatus == 0, child.before[-500:]
    finally:
        for child in children:
            if child.isalive():
                child.close(force=True)
    after = _read_events(db)
    assert set(before.items()) <= set(after.items())
    assert grew == [len(KEYS), len(KEYS)], grew  # no key was refused as stale
    store = Store.open(db)
    try:
        assert maintenance.check(store) == []
    finally:
        store.close()

"""Crash safety: SIGKILL a tokentree process at random moments, many times, and prove that
after every kill the database opens, `tokentree db check` passes, and every event the
process had seen committed is still there, unchanged.

Two harnesses:

* the explorer core (Store + Explorer + model jobs, the code the app runs) in children
  forked from a zygote (tests/robust_child.py), killed after a random delay: during Store.open
  and the first migration, inside transactions, inside WAL checkpoints (the children
  checkpoint every 8 pages), between a session's start and its branches;
* the real `tokentree` command in a pseudo-terminal (`--resume last`), keys typed, killed at
  a random moment; the events it committed are read from the database while it runs.

Both run a FIXED number of seeded rounds, so the time is bounded and a failure replays.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from pty_signals import as_from_a_terminal
from robust_child import digest, parse_events, shared_zygote, stored_events

from tokentree.cli import main
from tokentree.store import Store, maintenance

ROUNDS = 30  # explorer-core kills
PTY_ROUNDS = 3  # real-command kills
SEED = 20240607
ROUNDS_PER_DB = 10  # a fresh database every 10 rounds: kills also hit creation + migration

KILLS = {"core": 0, "pty": 0}


@pytest.fixture
def zygote():
    return shared_zygote()


def _verify(db: Path, committed: dict[int, tuple]) -> dict[int, tuple]:
    """The database opens, checks clean, and holds every committed event unchanged."""
    store = Store.open(db)
    try:
        problems = maintenance.check(store)
        assert problems == [], f"db check after a kill: {problems}"
        stored = stored_events(store)
    finally:
        store.close()
    lost = {seq: ev for seq, ev in committed.items() if stored.get(seq) != ev}
    assert not lost, f"{len(lost)} committed event(s) lost or changed after a kill: {sorted(lost)[:10]}"
    return stored


def test_sigkill_during_scripted_sessions(zygote, tmp_path, capsys):
    rng = random.Random(SEED)
    committed: dict[int, tuple] = {}
    db = None
    stats = {"events": 0, "sessions_started": 0, "empty_sessions_resumed": 0, "finished_before_kill": 0}
    for round_ in range(ROUNDS):
        if round_ % ROUNDS_PER_DB == 0:
            db = tmp_path / f"crash{round_ // ROUNDS_PER_DB}.db"
            committed = {}
        fresh = not db.exists()
        mode = "new" if fresh or rng.random() < 0.2 else "last"
        # Right after the fork, open + migrate take a while: short delays hit them.
        delay = rng.uniform(0.0, 0.25) if fresh or rng.random() < 0.25 else rng.uniform(0.02, 0.45)
        pid = zygote.start(db, rng.randrange(1 << 30), mode)
        time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it died on its own: parse_events reports why
            pass
        status, lines = zygote.reap(pid)
        new = parse_events(lines)  # raises on a child's exception
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            stats["finished_before_kill"] += 1
        stats["empty_sessions_resumed"] += sum(line.startswith("B ") for line in lines)
        stats["sessions_started"] += sum(ev[2] == "session.started" for ev in new.values())
        committed.update(new)
        if not db.exists():
            continue  # killed before the file was created: nothing to check
        _verify(db, committed)
        KILLS["core"] += 1
        stats["events"] += len(new)
    # The last database also passes the real `tokentree db check`.
    assert main(["db", "check", "--db", str(db)]) == 0
    assert "ok" in capsys.readouterr().out
    with capsys.disabled():
        print(f"\n[crash-safety] explorer core: {KILLS['core']} SIGKILLs survived; {stats}")
    assert KILLS["core"] >= ROUNDS - 3
    assert stats["empty_sessions_resumed"] == 0, "a kill left a session without branches"
    assert stats["events"] > 0


# ---------------------------------------------------------------------------------- PTY


_SEEDED: dict[str, bytes] = {}


def _seed_session(db: Path) -> None:
    """A session with history, every node it shows computed and cached (by the fake model),
    so the real app can append, pop, undo, ... without a model. Built once, then copied."""
    if "db" not in _SEEDED:
        tmp = db.with_name(db.name + ".seed")
        _build_seed(tmp)
        _SEEDED["db"] = tmp.read_bytes()
        tmp.unlink()
    fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_SEEDED["db"])


def app_env(tmp_path: Path, home: Path) -> dict[str, str]:
    """The environment for a real `tokentree` in a pty. torch and transformers are replaced
    by stubs that fail to import, so the background model load fails at once instead of
    spending seconds of CPU importing torch (these tests are about the store, and the
    seeded session needs no model)."""
    stubs = tmp_path / "no-torch"
    for name in ("torch", "transformers"):
        (stubs / name).mkdir(parents=True, exist_ok=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is stubbed out by the test')\n")
    return dict(os.environ, TOKENTREE_HOME=str(home), TERM="xterm-256color", LANG="C.UTF-8",
                PYTHONPATH=os.pathsep.join([str(stubs), *filter(None, [os.environ.get("PYTHONPATH")])]))


def spawn_app(db: Path, env: dict[str, str], resume: str = "last", ready: str = "no-such-model"):
    """`ready`: what shows that the screen is up (by default the failed load's message)."""
    import pexpect

    child = pexpect.spawn(sys.executable, ["-m", "tokentree", "--resume", resume, "--db", str(db),
                                           "--model", str(db.parent / "no-such-model")],
                          env=env, dimensions=(30, 100), timeout=120, preexec_fn=as_from_a_terminal)
    child.expect(ready, timeout=120)  # the status bar: the screen is up
    return child


def _build_seed(db: Path) -> None:
    from fake_engine import FakeEngine, new_session
    from robust_child import PROMPTS, SCRIPT, _apply, _config

    from tokentree.core.explorer import Explorer

    engine = FakeEngine()
    store = Store.open(db)
    try:
        sid = new_session(store, engine, PROMPTS)
        ex = Explorer(store, sid, config=_config(), model_name=engine.loaded.name)
        ex.attach_engine(engine)
        rng = random.Random(SEED)
        commands = [c for c, _ in SCRIPT if c != "save"]
        for _ in range(60):
            ex.run_jobs_inline()
            _apply(ex, store, sid, rng.choice(commands))
        # Cache outputs around every explored node, so appends work without the model.
        for node in store.session_nodes(sid):
            path = [n.token_id for n in store.path_nodes(node.id)]
            outs = engine.prefill(path)
            keys = [n.prefix_key for n in store.path_nodes(node.id)]
            store.put_outputs(list(zip(keys, outs)), engine.loaded.fingerprint)
            for child_tok in outs[-1].next.top_ids[:5]:
                from tokentree.store import prefix_key

                key = prefix_key(keys[-1], child_tok, engine.loaded.vocab_key)
                store.put_outputs([(key, engine.step(path, child_tok))], engine.loaded.fingerprint)
        store.put_token_bytes(engine.loaded.vocab_key, engine.token_bytes(range(64)))
    finally:
        store.close()


def _read_events(db: Path) -> dict[int, tuple]:
    """Every event visible to another process right now (i.e. committed)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute("SELECT seq, session_id, version, type, payload FROM events").fetchall()
    finally:
        con.close()
    return {seq: (sid, v, t, digest(p)) for seq, sid, v, t, p in rows}


KEYS = ["l", "l", "l", "\x1b[C", "h", "h", "\x1b[D", "j", "k", "w", "s", "d", "a", "u", "\x12", "L", "e", "t"]


def _drain(child) -> None:
    import pexpect

    try:
        while True:
            child.read_nonblocking(65536, timeout=0.02)
    except (pexpect.TIMEOUT, pexpect.EOF):
        pass


def test_sigkill_the_real_command_in_a_terminal(tmp_path, tokentree_home):
    pytest.importorskip("pexpect")
    db = tmp_path / "pty.db"
    _seed_session(db)
    rng = random.Random(SEED + 1)
    committed = _read_events(db)
    env = app_env(tmp_path, tokentree_home)
    for _ in range(PTY_ROUNDS):
        child = spawn_app(db, env)
        try:
            kill_after = rng.randint(3, 25)
            for _ in range(kill_after):
                assert child.isalive(), "tokentree exited by itself before the kill"
                child.send(rng.choice(KEYS))
                time.sleep(rng.uniform(0.0, 0.08))
                _drain(child)
                committed.update(_read_events(db))  # seen by another process: committed
            child.kill(signal.SIGKILL)
            child.wait()
        finally:
            if child.isalive():
                child.kill(signal.SIGKILL)
            child.close(force=True)
        _verify(db, committed)
        KILLS["pty"] += 1
    assert len(committed) > 0
    print(f"[crash-safety] real command in a pty: {KILLS['pty']} SIGKILLs survived, {len(committed)} events")


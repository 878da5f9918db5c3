"""Terminal safety: after ctrl+c, an exception in a key handler, or an exception in the model
worker, the terminal is restored (alternate screen left, cursor shown, the tty back in
canonical mode with echo) and the session's recorded events are intact.

The real `tokentree` runs in a pseudo-terminal under `sh`, which runs `stty -a` on the same
tty after tokentree exits: that shows whether the tty modes were put back. torch and
transformers are stubbed out (see test_crash_safety.app_env), so the background model load
fails at once: that failure IS the "exception in the model worker" case. A key-handler
exception is injected with a sitecustomize module (tests/child_hooks.py, only when
TOKENTREE_TEST_RAISE_IN is set). And ctrl+q while the model is still loading exits at once
(a load held for ever by the same hooks).

Every wait here is for a state (a key's event in the database, a line on the screen) with a
generous deadline, never a pause: waiting is free when the machine is fast.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest
from child_hooks import with_hooks
from pty_signals import as_from_a_terminal
from test_crash_safety import _read_events, _seed_session, app_env, spawn_app

from tokentree.store import Store, maintenance

pexpect = pytest.importorskip("pexpect")

WAIT = 120  # seconds: a deadline for a state, not a pause


def _spawn(tmp_path, home, db, **extra_env):
    env = app_env(tmp_path, home)
    stubs = env["PYTHONPATH"].split(os.pathsep)[0]  # the hooks' sitecustomize goes beside the stubs
    env = with_hooks(env, Path(stubs), **extra_env)
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "tokentree", "--resume", "last",
                                            "--db", str(db), "--model", str(db.parent / "no-such-model")])
    child = pexpect.spawn("/bin/sh", ["-c", f"trap : INT; {cmd}; echo TOKENTREE-RC=$?; stty -a"],
                          env=env, dimensions=(30, 100), timeout=WAIT, preexec_fn=as_from_a_terminal)
    child.expect("no-such-model", timeout=WAIT)  # the screen is up
    return child


def _type(child, keys, db):
    """Type keys, each after the last one's event is in the database (in the seeded session
    each of these keys records exactly one); return the events seen."""
    for key in keys:
        n = len(_read_events(db))
        child.send(key)
        end = time.monotonic() + WAIT
        while len(_read_events(db)) == n:
            assert time.monotonic() < end and child.isalive(), f"the key {key!r} was not recorded"
            try:
                child.read_nonblocking(65536, timeout=0.02)
            except pexpect.TIMEOUT:
                pass
        assert len(_read_events(db)) == n + 1, f"the key {key!r} recorded more than one event"
    return _read_events(db)


def _finish(child) -> tuple[int, bytes]:
    child.expect(r"TOKENTREE-RC=(\d+)", timeout=WAIT)
    rc = int(child.match.group(1))
    out = child.before
    child.expect(pexpect.EOF, timeout=WAIT)
    stty = child.before.decode(errors="replace")
    child.close()
    # The tty is back in cooked mode: canonical input, echo, signals.
    for flag in ("icanon", "echo", "isig"):
        assert re.search(rf"(?<![-\w]){flag}\b", stty), f"tty left with -{flag}:\n{stty}"
    assert b"\x1b[?1049l" in out or b"\x1b[?47l" in out, "the alternate screen was not left"
    return rc, out


def _intact(db, seen):
    after = _read_events(db)
    assert set(seen.items()) <= set(after.items())
    store = Store.open(db)
    try:
        assert maintenance.check(store) == []
    finally:
        store.close()


def test_ctrl_c_restores_the_terminal_and_keeps_the_session(tmp_path, tokentree_home):
    db = tmp_path / "t.db"
    _seed_session(db)
    child = _spawn(tmp_path, tokentree_home, db)
    try:
        seen = _type(child, "hdhw", db)
        child.sendintr()
        rc, out = _finish(child)
    finally:
        if child.isalive():
            child.close(force=True)
    assert rc == 130
    assert b"interrupted" in out and b"Traceback" not in out
    _intact(db, seen)


def test_model_worker_failure_then_key_handler_exception(tmp_path, tokentree_home):
    """The model load fails in the worker (stubbed torch): the app says so and keeps working.
    Then a key handler raises: the app stops with one line, the terminal restored."""
    db = tmp_path / "t.db"
    _seed_session(db)
    child = _spawn(tmp_path, tokentree_home, db, TOKENTREE_TEST_RAISE_IN="remove_branch")
    try:
        child.expect("failed", timeout=WAIT)  # the worker's exception, shown in the status bar
        before = _read_events(db)
        seen = _type(child, "hhd", db)  # still working after the worker failed
        assert len(seen) > len(before) and child.isalive()
        child.send("a")  # remove_branch -> RuntimeError inside the key handler
        rc, out = _finish(child)
    finally:
        if child.isalive():
            child.close(force=True)
    assert rc == 1
    tail = out.rsplit(b"\x1b[?1049l", 1)[-1]
    assert b"internal error" in tail and b"injected failure in remove_branch" in tail
    assert b"Traceback" not in tail
    _intact(db, seen)


def test_quit_while_the_model_loads_is_prompt(tmp_path, tokentree_home):
    """ctrl+q must not wait for a model load still running: the worker is a daemon thread.
    It used to be a ThreadPoolExecutor thread, which the interpreter joins at exit: quitting
    during a load hung for the whole load. Here the load is held until a file appears that
    never does (tests/child_hooks.py), so it is certainly still running when ctrl+q comes,
    and an exit at all (within the generous deadline) is an exit that did not wait for it:
    no time limit to tune, however busy the machine is."""
    db = tmp_path / "quit.db"
    _seed_session(db)
    env = dict(os.environ, TOKENTREE_HOME=str(tokentree_home), TERM="xterm-256color", LANG="C.UTF-8")
    env = with_hooks(env, tmp_path / "hooks", TOKENTREE_TEST_HOLD_LOAD=str(tmp_path / "never"))
    # The screen is up, its status line saying the model is loading (held: only the file
    # that never appears would let it go on).
    child = spawn_app(db, env, ready=r"loading [^\n]*ctrl\+q: quit")
    try:
        child.sendcontrol("q")
        child.expect(pexpect.EOF, timeout=WAIT)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.kill(signal.SIGKILL)
        child.close(force=True)

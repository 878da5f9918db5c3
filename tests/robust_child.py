"""Child processes for the crash-safety and concurrency tests.

    python tests/robust_child.py zygote

starts a *zygote*: it imports tokentree's store and explorer once, then reads commands on
stdin and forks one child per command, so every round gets a real, separate process (that
the test can SIGKILL) without paying Python's start-up and import time again:

    run DB SEED MODE STEPS    fork a child that runs a scripted session on DB;
                              answers "P <pid>"
    reap PID                  wait for that child; answers "X <pid> <status>"
    quit

MODE is "new" (start a session, as `tokentree --input` does), "last" (resume the latest
session, as `--resume last` does) or "one" (resume session 1). STEPS is how many commands
to run (0: forever, until killed).

A child reports on the zygote's stdout, with one unbuffered write(2) per line (so a line is
either wholly in the pipe or not there at all when the child dies), each line prefixed with
its pid:

    E <seq> <session> <version> <type> <digest>   an event, read back after its commit
    R <message>                                   a command refused with a TokentreeError
    D                                             finished STEPS commands
    F <message>                                   failed (an exception: a bug)

Everything a child reports as E was committed before the report was written, so it must
still be in the database after any kill. The parent reads every line a child wrote before
the zygote answers "X" for it: the child's writes happen before its death, and the zygote
writes "X" only after waitpid.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

PROMPTS = {"cat": " the cat sat on the mat", "dog": " a dog ran away.\n"}

# (command, weight): mostly appends and pops, like a person exploring.
SCRIPT = [
    ("append", 8), ("pop", 4), ("cursor_down", 3), ("cursor_up", 1), ("walk_forward", 2),
    ("next_branch", 2), ("prev_branch", 1), ("duplicate", 1), ("remove", 1), ("reset", 1),
    ("undo", 3), ("save", 1), ("view", 1), ("snapshot", 2),
]


def digest(payload) -> str:
    """A short, stable digest of an event payload (a dict, or its JSON text)."""
    if isinstance(payload, (str, bytes)):
        payload = json.loads(payload)
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def event_line(seq: int, session_id: int, version: int, type_: str, payload) -> str:
    return f"E {seq} {session_id} {version} {type_} {digest(payload)}"


def _say(line: str) -> None:
    """A child's report line, tagged with its pid (several children share the pipe)."""
    _write(f"{os.getpid()} {line}")


def _write(line: str) -> None:
    data = (line + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def _config():
    from tokentree.config import Config, DisplayConfig

    return Config(display=DisplayConfig(tokens_to_show=5))


class Reporter:
    """Reports every event of the child's session(s) that is committed and not yet reported."""

    def __init__(self, store) -> None:
        from sqlalchemy import select

        from tokentree.store.schema import EventRow

        self.store = store
        self.E = EventRow.__table__
        self.select = select
        self.last_seq = {}

    def mark(self, session_id: int) -> None:
        from sqlalchemy import func

        E = self.E
        with self.store.read_transaction() as conn:
            top = conn.execute(self.select(func.max(E.c.seq)).where(E.c.session_id == session_id)).scalar()
        self.last_seq[session_id] = top or 0

    def report(self, session_id: int) -> None:
        E = self.E
        with self.store.read_transaction() as conn:
            rows = conn.execute(
                self.select(E.c.seq, E.c.session_id, E.c.version, E.c.type, E.c.payload)
                .where(E.c.session_id == session_id, E.c.seq > self.last_seq.get(session_id, 0))
                .order_by(E.c.seq)
            ).all()
        for seq, sid, version, type_, payload in rows:
            _say(event_line(seq, sid, version, type_, payload))
            self.last_seq[session_id] = seq


def run_session(db: str, seed: int, mode: str, steps: int) -> None:
    """A scripted session through the same code the app runs: Store + Explorer + model jobs."""
    from fake_engine import FakeEngine

    from tokentree.core.explorer import Explorer
    from tokentree.sessions import resolve_session
    from tokentree.store import RootPrompt, Store

    rng = random.Random(seed)
    store = Store.open(db)
    reporter = Reporter(store)
    engine = FakeEngine()
    if mode == "new" or store.latest_session_id() is None:
        # As launch does: the session and its root branches in ONE transaction.
        sid = store.start_session(
            model_name=engine.loaded.name, fingerprint=engine.loaded.fingerprint,
            vocab_key=engine.loaded.vocab_key, prompt_sources=list(PROMPTS),
            roots=[RootPrompt(tuple(engine.encode(text)), name, name) for name, text in PROMPTS.items()],
        )
        reporter.report(sid)
    else:
        sid = 1 if mode == "one" else resolve_session(store, "last")
        if not store.branches(sid):
            _say(f"B {sid}")  # a session without branches: must never happen (the test fails)
        reporter.mark(sid)  # earlier events were reported by earlier rounds
    explorer = Explorer(store, sid, config=_config(), model_name=engine.loaded.name)
    explorer.attach_engine(engine)
    commands = [c for c, _ in SCRIPT]
    weights = [w for _, w in SCRIPT]
    done = 0
    while steps == 0 or done < steps:
        explorer.run_jobs_inline()
        command = rng.choices(commands, weights)[0]
        _apply(explorer, store, sid, command)
        _apply(explorer, store, sid, "snapshot")  # the screen redraws after every key, as the app's does
        reporter.report(sid)
        done += 1
    explorer.run_jobs_inline()
    reporter.report(sid)
    store.close()
    _say("D")


def _apply(explorer, store, sid: int, command: str) -> None:
    from tokentree.errors import TokentreeError

    try:
        if command == "append":
            explorer.append()
        elif command == "pop":
            explorer.pop()
        elif command == "cursor_down":
            explorer.cursor(1)
        elif command == "cursor_up":
            explorer.cursor(-1)
        elif command == "walk_forward":
            explorer.walk_forward()
        elif command == "next_branch":
            explorer.features.branches.switch_branch(1)
        elif command == "prev_branch":
            explorer.features.branches.switch_branch(-1)
        elif command == "duplicate":
            explorer.features.branches.duplicate_branch()
        elif command == "remove":
            explorer.features.branches.remove_branch()
        elif command == "reset":
            explorer.features.branches.reset_branch()
        elif command == "undo":
            explorer.undo()
        elif command == "save":
            explorer.features.branches.save_branch()
        elif command == "view":
            explorer.features.views.cycle_prompt_view()
        elif command == "snapshot":
            explorer.snapshot(with_tree=True)
    except TokentreeError as exc:
        # A refusal the UI shows as a message (e.g. the branch was removed by another process).
        _say("R " + " ".join(str(exc).split()))


def _stress_checkpoints() -> None:
    """Checkpoint the WAL often, so kills also land inside checkpoints."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _small_wal(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA wal_autocheckpoint=8")


def zygote() -> int:
    # Import everything once; children are forked from here.
    import fake_engine  # noqa: F401

    import tokentree.core.explorer  # noqa: F401
    import tokentree.sessions  # noqa: F401
    from tokentree.store import Store, migrate  # noqa: F401

    migrate.script_directory()
    _stress_checkpoints()
    _write("READY")
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "quit":
            return 0
        if parts[0] == "reap":
            pid = int(parts[1])
            _, status = os.waitpid(pid, 0)
            _write(f"X {pid} {status}")
            continue
        if parts[0] != "run":
            _write(f"F unknown command {line.strip()!r}")
            continue
        db, seed, mode, steps = parts[1], int(parts[2]), parts[3], int(parts[4])
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.setsid()
                run_session(db, seed, mode, steps)
            except BaseException as exc:  # noqa: BLE001 -- reported to the test
                tb = " | ".join(traceback.format_exception(exc)[-3:]).replace("\n", " ")
                _say(f"F {exc!r} {tb}")
                code = 1
            finally:
                os._exit(code)
        _write(f"P {pid}")
    return 0


class Zygote:
    """The test's side: start the zygote, fork children, kill and reap them, read reports."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "zygote"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0,
        )
        self._buf = b""
        self.by_pid: dict[int, list[str]] = {}
        line = self.readline(timeout=120)
        if line != "READY":
            raise RuntimeError(f"zygote did not start: {line!r}")

    def send(self, line: str) -> None:
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def readline(self, timeout: float | None = None) -> str | None:
        """The zygote's next own line, or None when `timeout` (seconds) passes first.
        Children's lines ("<pid> ...") are filed under their pid on the way."""
        while True:
            line = self._rawline(timeout)
            if line is None or not line[:1].isdigit():
                return line
            pid, _, rest = line.partition(" ")
            self.by_pid.setdefault(int(pid), []).append(rest)

    def _rawline(self, timeout: float | None) -> str | None:
        import select
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the zygote exited")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def start(self, db, seed: int, mode: str, steps: int = 0) -> int:
        self.send(f"run {db} {seed} {mode} {steps}")
        line = self.readline(timeout=60)
        if line is None or not line.startswith("P "):
            raise RuntimeError(f"the zygote did not fork: {line!r}")
        return int(line.split()[1])

    def reap(self, pid: int) -> tuple[int, list[str]]:
        """Wait for the child; (wait status, every line it wrote)."""
        self.send(f"reap {pid}")
        line = self.readline(timeout=120)
        if line is None or not line.startswith(f"X {pid} "):
            raise RuntimeError(f"child {pid} was not reaped: {line!r}")
        return int(line.split()[2]), self.by_pid.pop(pid, [])

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait()


_SHARED: Zygote | None = None


def shared_zygote() -> Zygote:
    """One zygote for the whole test run (its start-up costs seconds); its children keep
    their saved prompts in a temporary TOKENTREE_HOME."""
    global _SHARED
    if _SHARED is None or _SHARED.proc.poll() is not None:
        import atexit
        import shutil
        import tempfile

        home = tempfile.mkdtemp(prefix="tokentree-zygote-")
        _SHARED = Zygote(env=dict(os.environ, TOKENTREE_HOME=home))
        atexit.register(_SHARED.close)
        atexit.register(shutil.rmtree, home, True)
    return _SHARED


def parse_events(lines: list[str]) -> dict[int, tuple]:
    """seq -> (session, version, type, digest) for every E line; raises on an F line."""
    out = {}
    for line in lines:
        if line.startswith("F "):
            raise AssertionError(f"child failed: {line[2:]}")
        if line.startswith("E "):
            _, seq, sid, version, type_, dig = line.split()
            out[int(seq)] = (int(sid), int(version), type_, dig)
    return out


def stored_events(store) -> dict[int, tuple]:
    """seq -> (session, version, type, digest) for every event in the database."""
    from sqlalchemy import select

    from tokentree.store.schema import EventRow

    E = EventRow.__table__
    with store.read_transaction() as conn:
        rows = conn.execute(select(E.c.seq, E.c.session_id, E.c.version, E.c.type, E.c.payload)).all()
    return {seq: (sid, version, type_, digest(payload)) for seq, sid, version, type_, payload in rows}


if __name__ == "__main__":
    if sys.argv[1:] == ["zygote"]:
        sys.exit(zygote())
    sys.exit(f"usage: {sys.argv[0]} zygote")

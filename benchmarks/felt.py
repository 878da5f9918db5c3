"""Key to drawn screen, as a person feels it: the real `tokentree` command in a
pseudo-terminal (pexpect + pyte), keys written to the pty, the time until the frame that
shows their result has been read back; a bare decode of one token in a second process on
the same GGUF, interleaved with the keys. Then the same keys in process, split into the
command, the store, the snapshot and the canvas, with SQL statements per key.

    uv run --no-sync python benchmarks/felt.py                  # everything, ~4 min
    uv run --no-sync python benchmarks/felt.py --reps 10 --only pty
    uv run --no-sync python benchmarks/felt.py --json out.json

"Drawn" is the moment the benchmark reads the end of the frame (urwid wraps each frame in
synchronized-output marks once the terminal says it has them; this terminal says so), before
the emulator parses it. Prefetch is off except in the prefetch section.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this folder would come first on sys.path and benchmarks/llama_cpp.py would
# shadow the llama_cpp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

SYNC_QUERY, SYNC_REPLY = b"\x1b[?2026$p", b"\x1b[?2026;2$y"
SYNC_END = b"\x1b[?2026l"
UP, DOWN, RIGHT, LEFT = "\x1b[A", "\x1b[B", "\x1b[C", "\x1b[D"
CTRL_Q = "\x11"
BRANCH_ROW = re.compile(r"\u25b6 ([^\u2502\u25b6]+?)\s+(\d+) \+(-?\d+)")  # the focused branch: name, len, +appended
SELECTED_ROW = re.compile(r"\u2502\u25b6\s+(\d+) ")  # the table's selected row: its rank
WAITING = "waiting for the model\u2026"  # the table's note while its node is computed
THREADS = 2


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# ------------------------------------------------------------------ the bare decode, in a process of its own


def bare_main(kind: str, model: str) -> int:
    """A second process: reads commands on stdin, answers one line each.
    `prime i,j,..`: the prompt into the cache; `step`: one token decoded after it (ms), then
    taken back; `steps N`: N tokens decoded one after another (ms in all), then taken back."""
    if kind == "llama":
        from benchmarks.llama_cpp import Bare
        from tokentree.lm.llama import LlamaBackend

        backend = LlamaBackend(Path(model), threads=THREADS)
        bare = Bare(backend, sequences=1)
        n = 0
        out = sys.stdout
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "prime":
                ids = [int(x) for x in arg.split(",")]
                bare.rm(0, 0)
                bare.decode(ids, 0)
                n = len(ids)
                last = ids[-1]
                out.write("ok\n")
            elif cmd == "step":
                t0 = time.perf_counter()
                bare.decode([last], n)
                dt = time.perf_counter() - t0
                bare.rm(0, n)
                out.write(f"{dt * 1000:.3f}\n")
            elif cmd == "steps":
                t0 = time.perf_counter()
                for i in range(int(arg)):
                    bare.decode([last], n + i)
                dt = time.perf_counter() - t0
                bare.rm(0, n)
                out.write(f"{dt * 1000:.3f}\n")
            elif cmd == "quit":
                break
            out.flush()
        bare.close()
        backend.close()
        return 0
    import torch

    from benchmarks.real_model import BareHF
    from tokentree.lm.loader import load_model

    torch.set_num_threads(THREADS)
    loaded = load_model(model, device="cpu")
    bare = BareHF(loaded.model)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "prime":
            ids = [int(x) for x in arg.split(",")]
            bare.prime(ids)
            last = ids[-1]
            sys.stdout.write("ok\n")
        elif cmd == "step":
            sys.stdout.write(f"{bare.step(last) * 1000:.3f}\n")
        elif cmd == "quit":
            break
        sys.stdout.flush()
    return 0


class BareProcess:
    def __init__(self, kind: str, model: str, ids: list[int]) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, __file__, "--bare", kind, model], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.ask("prime " + ",".join(map(str, ids)))
        self.step()  # warm-up

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the bare decode process stopped")
        return answer.strip()

    def step(self) -> float:
        return float(self.ask("step"))

    def steps(self, n: int) -> float:
        return float(self.ask(f"steps {n}"))

    def close(self) -> None:
        try:
            self.ask("quit")
        except (RuntimeError, BrokenPipeError, ValueError):
            pass
        self.proc.wait(timeout=30)


# ------------------------------------------------------------------ the real command in a pty


class Pty:
    """The real `tokentree` in a pseudo-terminal; `wait(pred)` returns the read time of the
    first whole frame after the last `send` whose screen satisfies `pred`."""

    def __init__(self, args: list[str], cols: int, rows: int, env: dict, cwd: Path) -> None:
        import pexpect
        import pyte
        from pty_signals import as_from_a_terminal

        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        exe = Path(sys.executable).with_name("tokentree")
        env = dict(env, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        self.child = pexpect.spawn(str(exe), args, env=env, cwd=str(cwd), dimensions=(rows, cols),
                                   preexec_fn=as_from_a_terminal)
        self.fd = self.child.child_fd
        self.buf = b""
        self.answered = False
        self.frames = 0
        self.parse_s: list[float] = []  # the emulator's time per frame (the benchmark's own cost)

    def send(self, keys: str) -> float:
        t = time.perf_counter()
        os.write(self.fd, keys.encode())
        return t

    def _chunks(self, timeout: float):
        """(read time, bytes) of what is there now, or within `timeout` if nothing is."""
        import select

        out = []
        wait = timeout
        while True:
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                return out
            try:
                data = os.read(self.fd, 1 << 20)
            except OSError:
                return out
            if not data:
                return out
            out.append((time.perf_counter(), data))
            wait = 0

    def wait(self, pred, timeout: float = 120.0, *, on_frame=None) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, data in self._chunks(max(0.0, min(0.5, deadline - time.monotonic()))):
                self.buf += data
                if not self.answered and SYNC_QUERY in self.buf:
                    self.answered = True
                    os.write(self.fd, SYNC_REPLY)
                while (end := self.buf.find(SYNC_END)) >= 0:
                    frame, self.buf = self.buf[: end + len(SYNC_END)], self.buf[end + len(SYNC_END):]
                    p0 = time.perf_counter()
                    self.stream.feed(frame)
                    self.parse_s.append(time.perf_counter() - p0)
                    self.frames += 1
                    text = "\n".join(self.screen.display)
                    if on_frame is not None:
                        on_frame(t, text)
                    if pred(text):
                        return t, text  # what followed the frame stays in buf: the next wait's
            if not self.child.isalive():
                raise RuntimeError("tokentree exited:\n" + "\n".join(self.screen.display))
        raise TimeoutError("no such screen:\n" + "\n".join(self.screen.display))

    def quit(self) -> None:
        self.send(CTRL_Q)
        self.child.expect(__import__("pexpect").EOF, timeout=60)


def focused(text: str) -> tuple[int, int] | None:
    """(length, appended) of the focused branch's row, or None."""
    m = BRANCH_ROW.search(text)
    return (int(m.group(2)), int(m.group(3))) if m else None


def shows_len(n: int):
    return lambda text: (f := focused(text)) is not None and f[0] == n and WAITING not in text and " idle " in text


class PtySession:
    """One tokentree on the bundled model in a pty, at one size."""

    def __init__(self, work: Path, cols: int, rows: int, *, backend: str, model: str, prefetch: int,
                 prompt: Path) -> None:
        home = Path(tempfile.mkdtemp(prefix="felt-", dir=work))
        cfg = home / "config.toml"
        cfg.write_text(f"[explore]\nprefetch = {prefetch}\n\n[llama]\nthreads = {THREADS}\n", encoding="utf-8")
        env = dict(os.environ, TOKENTREE_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(THREADS))
        args = ["--config", str(cfg), "--model", model, "--backend", backend, "-i", str(prompt)]
        self.home = home
        self.pty = Pty(args, cols, rows, env, home)
        _, text = self.pty.wait(lambda t: focused(t) is not None and " idle " in t and WAITING not in t, 300)
        self.length = focused(text)[0]

    def key(self, keys: str, length: int, extra=None) -> float:
        """Send `keys`, wait for the focused branch at `length`; ms from send to that frame."""
        t0 = self.pty.send(keys)
        pred = shows_len(length) if extra is None else (lambda t: shows_len(length)(t) and extra(t))
        t1, _ = self.pty.wait(pred)
        self.length = length
        return (t1 - t0) * 1000

    def db(self) -> Path:
        from tokentree.paths import default_db_path

        old = os.environ.get("TOKENTREE_HOME")
        os.environ["TOKENTREE_HOME"] = str(self.home)
        try:
            return default_db_path()
        finally:
            if old is None:
                os.environ.pop("TOKENTREE_HOME")
            else:
                os.environ["TOKENTREE_HOME"] = old

    def outputs(self) -> int:
        with sqlite3.connect(self.db()) as con:
            return con.execute("SELECT count(*) FROM node_outputs").fetchone()[0]

    def close(self) -> None:
        self.pty.quit()


def pty_gguf(work: Path, gguf: Path, ids: list[int], prompt: Path, size: tuple[int, int], reps: int, log) -> dict:
    cols, rows = size
    res: dict = {"size": f"{cols}x{rows}"}
    bare = BareProcess("llama", str(gguf), ids)
    s = PtySession(work, cols, rows, backend="llama", model=str(gguf), prefetch=0, prompt=prompt)
    try:
        log(f"pty {cols}x{rows}: {reps} uncached appends, each followed by a bare decode")
        s.key(RIGHT, s.length + 1)  # warm-up
        apps, floor = [], []
        for _ in range(reps):
            apps.append(s.key(RIGHT, s.length + 1))
            floor.append(bare.step())
        res["uncached_append_ms"] = median(apps)
        res["bare_decode_ms"] = median(floor)
        res["uncached_ratio"] = median([a / b for a, b in zip(apps, floor)])
        res["uncached_append_p90_ms"] = pct(apps, 0.9)
        log(f"  append {median(apps):.1f} ms, bare {median(floor):.1f} ms")
        pops = [s.key(LEFT, s.length - 1) for _ in range(reps)]
        again = [s.key(RIGHT, s.length + 1) for _ in range(reps)]
        res["cached_pop_ms"], res["cached_append_ms"] = median(pops), median(again)
        # A second branch to switch to (d duplicates and focuses it), then w / s between the two.
        s.key("d", s.length, extra=lambda t: "duplicated the branch" in t)
        switch = []
        for k in range(reps):
            name = BRANCH_ROW.search("\n".join(s.pty.screen.display)).group(1)
            switch.append(s.key("w" if k % 2 == 0 else "s", s.length,
                                extra=lambda t, n=name: BRANCH_ROW.search(t).group(1) != n))
        res["branch_switch_ms"] = median(switch)
        views = []
        for k in range(reps):
            before = s.pty.screen.display[0]
            views.append(s.key("e", s.length, extra=lambda t, b=before: t.split("\n")[0] != b))
        res["view_change_ms"] = median(views)
        log(f"  cached pop {res['cached_pop_ms']:.1f}, append {res['cached_append_ms']:.1f}, "
            f"switch {res['branch_switch_ms']:.1f}, view {res['view_change_ms']:.1f} ms")
        while "plain view" not in s.pty.screen.display[0]:  # back to the plain view for the fill
            before = s.pty.screen.display[0]
            s.key("e", s.length, extra=lambda t, b=before: t.split("\n")[0] != b)

        # A fill of 20 on uncached ground: every token drawn as it comes?
        lengths = set()
        start = s.length
        t0 = s.pty.send("f")
        t1, _ = s.pty.wait(lambda t: "filled" in t and WAITING not in t and " idle " in t,
                           on_frame=lambda _t, text: lengths.add((focused(text) or (0,))[0]))
        filled = focused("\n".join(s.pty.screen.display))[0] - start
        s.length = start + filled
        res["fill_tokens"] = filled
        res["fill_ms"] = (t1 - t0) * 1000
        res["fill_bare_ms"] = bare.steps(filled)
        res["fill_ratio"] = res["fill_ms"] / res["fill_bare_ms"]
        res["fill_lengths_drawn"] = len([n for n in lengths if start < n <= start + filled])
        log(f"  fill of {filled}: {res['fill_ms']:.0f} ms vs {res['fill_bare_ms']:.0f} ms bare; "
            f"{res['fill_lengths_drawn']} of {filled} lengths drawn")

        # A held right arrow: 30 keys a second on uncached ground.
        keys, gap = 3 * reps, 1 / 30
        start, sent, behind, order_ok = s.length, [], [], True
        seen = [start]

        def frame(_t, text):
            nonlocal order_ok
            f = focused(text)
            if f is None:
                return
            if f[0] < seen[-1]:
                order_ok = False
            seen.append(f[0])
            behind.append(len(sent) - (f[0] - start))

        t_next = time.perf_counter()
        for _ in range(keys):
            sent.append(s.pty.send(RIGHT))
            t_next += gap
            while (left := t_next - time.perf_counter()) > 0:
                try:
                    s.pty.wait(lambda t: False, timeout=left, on_frame=frame)
                except TimeoutError:
                    pass
        t_last, _ = s.pty.wait(shows_len(start + keys), on_frame=frame)
        s.length = start + keys
        res["held_keys"] = keys
        res["held_applied"] = s.length - start
        res["held_in_order"] = order_ok
        res["held_max_behind"] = max(behind) if behind else 0
        res["held_last_key_to_screen_ms"] = (t_last - sent[-1]) * 1000
        log(f"  held right x{keys}: all applied, in order {order_ok}, at most {res['held_max_behind']} behind, "
            f"last key drawn {res['held_last_key_to_screen_ms']:.1f} ms after it was sent")
        res["emulator_parse_ms"] = median(s.pty.parse_s) * 1000
    finally:
        s.close()
        bare.close()
    return res


def pty_prefetch(work: Path, gguf: Path, prompt: Path, size: tuple[int, int], reps: int, log) -> dict:
    """After each drawn screen a pause of 100 ms, then down x j and right (j = 0..3)."""
    cols, rows = size
    s = PtySession(work, cols, rows, backend="llama", model=str(gguf), prefetch=4, prompt=prompt)
    try:
        time.sleep(0.5)
        before = s.outputs()
        times = []
        trials = 4 * reps
        for k in range(trials):
            j = k % 4  # the candidate of rank j + 1: its row selected first, then a pause
            if j:
                s.pty.send(DOWN * j)
                s.pty.wait(lambda t, r=j + 1: (m := SELECTED_ROW.search(t)) is not None and int(m.group(1)) == r)
            time.sleep(0.1)
            times.append(s.key(RIGHT, s.length + 1))
        time.sleep(0.5)  # the last node's prefetches
        extra = (s.outputs() - before - trials) / trials
    finally:
        s.close()
    within = sum(t <= 5.0 for t in times) / len(times)
    log(f"prefetch: {within:.0%} of {len(times)} top-4 appends drawn within 5 ms (median {median(times):.1f} ms); "
        f"{extra:.2f} extra decodes per append")
    return {"appends": len(times), "within_5ms": within, "median_ms": median(times), "p90_ms": pct(times, 0.9),
            "extra_decodes_per_append": extra}


def pty_hf(work: Path, checkpoint: Path, ids: list[int], prompt: Path, size: tuple[int, int], reps: int,
           log) -> dict:
    cols, rows = size
    bare = BareProcess("hf", str(checkpoint), ids)
    s = PtySession(work, cols, rows, backend="transformers", model="smollm2", prefetch=0, prompt=prompt)
    try:
        s.key(RIGHT, s.length + 1)
        apps, floor = [], []
        for _ in range(reps):
            apps.append(s.key(RIGHT, s.length + 1))
            floor.append(bare.step())
    finally:
        s.close()
        bare.close()
    res = {"uncached_append_ms": median(apps), "bare_step_ms": median(floor),
           "ratio": median([a / b for a, b in zip(apps, floor)])}
    log(f"transformers pty: append {res['uncached_append_ms']:.1f} ms, bare step {res['bare_step_ms']:.1f} ms, "
        f"{res['ratio']:.2f}x")
    return res


# ------------------------------------------------------------------ in process: where the time goes


class Split:
    """Time inside SQL statements (SQLAlchemy's cursor events) and counts per key."""

    def __init__(self, store) -> None:
        from benchmarks.keypress_bench import SqlCounter
        from sqlalchemy import event

        self.counter = SqlCounter(store)
        self.sql = 0.0
        self._t = 0.0

        def before(*_a, **_k):
            self._t = time.perf_counter()

        def after(*_a, **_k):
            self.sql += time.perf_counter() - self._t

        event.listen(store.engine, "before_cursor_execute", before)
        event.listen(store.engine, "after_cursor_execute", after)


def inproc(engine, store, sid, ids, config, size, reps, log, *, label) -> dict:
    """ExplorerApp on `engine`: per key, the command (with its store write), the model work,
    the snapshot and the canvas, and SQL statements/reads/writes."""
    from tokentree.core.explorer import Explorer
    from tokentree.core.worker import InlineWorker
    from tokentree.tui.app import ExplorerApp
    from tokentree.tui.keymap import build_keymap

    store.create_branch(sid, ids, source="felt", name=label)
    ex = Explorer(store, sid, config=config, model_name=engine.info.name, engine=engine)
    app = ExplorerApp(ex, build_keymap(config), worker=InlineWorker())
    app.settle()
    app.render(size)
    split = Split(store)
    phases = {"command": 0.0, "model": 0.0, "snapshot": 0.0, "canvas": 0.0}
    real_refresh = app.refresh

    def timed_refresh():
        t0 = time.perf_counter()
        real_refresh()
        phases["snapshot"] += time.perf_counter() - t0

    app.refresh = timed_refresh
    out = {}

    def key(k):
        for p in phases:
            phases[p] = 0.0
        split.sql = 0.0
        split.counter.take()
        t0 = time.perf_counter()
        app.handle_key(k)
        app.settle()
        t2 = time.perf_counter()
        app.render(size)
        t3 = time.perf_counter()
        refreshed = phases["snapshot"]
        return {"total": t3 - t0, "canvas": t3 - t2, "refresh": refreshed, "sql": split.sql,
                "rest": (t3 - t0) - (t3 - t2) - refreshed, "counts": split.counter.take()}

    def run(name, k, n):
        xs = [key(k) for _ in range(n)]
        out[name] = {f: median([x[f] for x in xs]) * 1000 for f in ("total", "canvas", "refresh", "sql", "rest")}
        c = [x["counts"] for x in xs]
        out[name].update(statements=median([a for a, _, _ in c]), reads=median([b for _, b, _ in c]),
                         writes=median([w for _, _, w in c]))

    key("right")
    run("uncached append", "right", reps)
    run("cached pop", "left", reps)
    run("cached append", "right", reps)
    app.handle_key("d")
    app.settle()
    run("branch switch", "w", reps)
    run("view change", "e", reps)
    for name, r in out.items():
        log(f"  {label} {size[0]}x{size[1]} {name}: {r['total']:.2f} ms (canvas {r['canvas']:.2f}, "
            f"snapshot+pane updates {r['refresh']:.2f}, sql {r['sql']:.2f}, command+model {r['rest']:.2f}); "
            f"{r['statements']:.0f} statements, {r['reads']:.0f} reads, {r['writes']:.0f} writes")
    return out


def inproc_all(work: Path, gguf: Path, ids, reps: int, log) -> dict:
    from dataclasses import replace

    from tokentree.config import Config
    from tokentree.lm import bundled
    from tokentree.lm.llama import LlamaBackend
    from tokentree.store import Store

    config = Config()
    config = replace(config, explore=replace(config.explore, prefetch=0))
    backend = LlamaBackend(gguf, name=bundled.NAME, threads=THREADS, top_k=config.top_k,
                           cache_size=config.display.cache_size)
    out = {}
    info = backend.info
    try:
        for size in ((120, 36), (200, 50)):  # a database each: the second size's appends are uncached too
            store = Store.open(work / f"inproc-{size[0]}.db")
            try:
                sid = store.start_session(model_name=info.name, fingerprint=info.fingerprint,
                                          vocab_key=info.vocab_key, prompt_sources=["felt"])
                out[f"{size[0]}x{size[1]}"] = inproc(backend, store, sid, ids, config, size, reps, log,
                                                     label=f"gguf-{size[0]}")
            finally:
                store.close()
    finally:
        backend.close()
    return out


def inproc_tree(work: Path, nodes: int, reps: int, log) -> dict:
    """Cached keys on a stored session of `nodes` nodes (every node's output cached), with
    benchmarks/trees.py's stand-in engine (it fails on any model call)."""
    import shutil

    from benchmarks.trees import MODEL_NAME, _StubEngine, build_tree, test_tokenizer_pieces
    from tokentree.config import Config
    from tokentree.core.explorer import Explorer
    from tokentree.core.worker import InlineWorker
    from tokentree.store import Store
    from tokentree.tui.app import ExplorerApp
    from tokentree.tui.keymap import build_keymap

    cache = Path(tempfile.gettempdir()) / "tokentree-keypress-bench"
    cache.mkdir(exist_ok=True)
    db, meta = cache / f"tree-{nodes}.db", cache / f"tree-{nodes}.json"
    if not (db.exists() and meta.exists()):
        log(f"building a {nodes}-node session (once, kept in {cache})")
        info = build_tree(db, nodes, vocab=test_tokenizer_pieces(), log=log)
        meta.write_text(json.dumps({"session_id": info.session_id}))
    sid = json.loads(meta.read_text())["session_id"]
    copy = work / "tree-run.db"
    shutil.copyfile(db, copy)
    store = Store.open(copy)
    out = {}
    try:
        info = store.session(sid)
        engine = _StubEngine(info.vocab_key, info.fingerprint)
        config = Config()
        from dataclasses import replace

        # No influence view in the cycle: the stand-in computes nothing (every output is cached).
        engine.capabilities = replace(engine.capabilities, influence=False, influence_note="the stand-in has none")

        config = replace(config, explore=replace(config.explore, prefetch=0))
        ex = Explorer(store, sid, config=config, model_name=MODEL_NAME, engine=engine)
        app = ExplorerApp(ex, build_keymap(config), worker=InlineWorker())
        app.settle()
        split = Split(store)
        for size in ((120, 36), (200, 50)):
            app.render(size)
            res = {}
            for name, k in (("cached pop", "left"), ("cached append", "right"), ("branch switch", "s"),
                            ("view change", "e")):
                xs, counts = [], []
                for _ in range(reps):
                    if k == "right":  # back one token first (untimed): the append is of an explored child
                        app.handle_key("left")
                        app.settle()
                        app.render(size)
                    split.counter.take()
                    t0 = time.perf_counter()
                    app.handle_key(k)
                    app.settle()
                    app.render(size)
                    xs.append((time.perf_counter() - t0) * 1000)
                    counts.append(split.counter.take())
                    if k == "left":
                        app.handle_key("right")
                        app.settle()
                        app.render(size)
                res[name] = {"ms": median(xs), "statements": median([c[0] for c in counts]),
                             "reads": median([c[1] for c in counts]), "writes": median([c[2] for c in counts])}
                log(f"  {nodes}-node session {size[0]}x{size[1]} {name}: {res[name]['ms']:.2f} ms key to canvas; "
                    f"{res[name]['statements']:.0f} statements, {res[name]['reads']:.0f} reads")
            out[f"{size[0]}x{size[1]}"] = res
        out["model_calls"] = engine.forward_passes
    finally:
        store.close()
    return out


def pane_long_prompt(tokens: int, reps: int, log) -> dict:
    """The prompt pane alone on a long prompt (no model): update + layout + render per key,
    the whole text laid out (no screen size known) against the tail that fills the pane."""
    from dataclasses import replace

    from tokentree.core.snapshot import PromptToken, Snapshot, Status
    from tokentree.tui.prompt_pane import PromptPane

    words = "Natalia sold clips to 48 of her friends in April, and then she sold half as many".split()
    toks = tuple(PromptToken(text=("\n" if i % 17 == 0 else " ") + words[i % len(words)], token_id=i % 500,
                             appended=False, value=None, special=False) for i in range(tokens))
    status = Status(model="m", device="cpu", dtype="float32", session_id=1, origin="cache", ms=None, busy=None,
                    engine_ready=True)
    snap = Snapshot(prompt=toks, prompt_view="plain", layer_view="off", candidates=(), selected=0, waiting=False,
                    branches=(), status=status, message=None)
    out = {}
    for name, cells in (("whole text", None), ("tail", 120 * 14)):
        pane, ts = PromptPane(), []
        if cells:
            pane.fit_screen(cells)
        for k in range(reps):  # an append each time: a new text
            t0 = time.perf_counter()
            pane.update(replace(snap, prompt=toks[: tokens - reps + k]))
            pane.rows_needed(118)
            pane.render((120, 16))
            ts.append(time.perf_counter() - t0)
        out[name] = median(ts) * 1000
    log(f"prompt pane, {tokens}-token prompt, 120x36: whole text {out['whole text']:.1f} ms, tail {out['tail']:.1f} ms")
    return out


# ------------------------------------------------------------------ the report


def report(before: dict | None, after: dict, command: str) -> str:
    """Markdown: the targets, then every figure before and after."""

    def pty(d, size):
        return next((r for r in (d or {}).get("pty", []) if r["size"] == size), {})

    def cell(d, *path, fmt="{:.1f}"):
        for k in path:
            if not isinstance(d, dict) or k not in d:
                return "-"
            d = d[k]
        return fmt.format(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else str(d)

    lines = [f"Command: `{command}`. Key to drawn screen: the real command in a pty at the size shown, "
             "the time from writing the key to reading the end of the frame that shows its result; "
             "bare decode: llama_decode of one token in a second process on the same GGUF, interleaved. "
             "Load average at start/end of the after run: "
             f"{tuple(round(x, 2) for x in after.get('loadavg_start', ()))} / "
             f"{tuple(round(x, 2) for x in after.get('loadavg_end', ()))}.", "",
             "| target | goal | before | after | met |", "|---|---|---|---|---|"]
    for size in ("120x36", "200x50"):
        b, a = pty(before, size), pty(after, size)
        ratio = a.get("uncached_ratio")
        lines.append(f"| uncached append, key to screen, {size} | <= 1.5x bare decode | "
                     f"{cell(b, 'uncached_append_ms')} ms = {cell(b, 'uncached_ratio', fmt='{:.2f}')}x | "
                     f"{cell(a, 'uncached_append_ms')} ms = {cell(a, 'uncached_ratio', fmt='{:.2f}')}x "
                     f"(bare {cell(a, 'bare_decode_ms')} ms) | {'yes' if ratio and ratio <= 1.5 else '**no**'} |")
        for name, key in (("cached pop", "cached_pop_ms"), ("cached append", "cached_append_ms"),
                          ("branch switch", "branch_switch_ms"), ("view change", "view_change_ms")):
            v = a.get(key)
            lines.append(f"| {name}, key to screen, {size} | <= 5 ms | {cell(b, key)} ms | {cell(a, key)} ms | "
                         f"{'yes' if v is not None and v <= 5 else '**no**'} |")
        lines.append(f"| fill of {a.get('fill_tokens', '?')}, {size} | <= 1.2x as many bare decodes, each drawn | "
                     f"{cell(b, 'fill_ratio', fmt='{:.2f}')}x, {cell(b, 'fill_lengths_drawn', fmt='{}')} drawn | "
                     f"{cell(a, 'fill_ms', fmt='{:.0f}')} ms vs {cell(a, 'fill_bare_ms', fmt='{:.0f}')} ms = "
                     f"{cell(a, 'fill_ratio', fmt='{:.2f}')}x, {cell(a, 'fill_lengths_drawn', fmt='{}')} of "
                     f"{a.get('fill_tokens', '?')} drawn | {'yes' if a.get('fill_ratio', 9) <= 1.2 else '**no**'} |")
        ok = a.get("held_applied") == a.get("held_keys") and a.get("held_in_order") and a.get("held_max_behind", 9) <= 1
        lines.append(f"| held right arrow, 30 keys/s, {size} | all applied in order, <= 1 key behind | "
                     f"{cell(b, 'held_applied', fmt='{}')}/{cell(b, 'held_keys', fmt='{}')}, "
                     f"{cell(b, 'held_max_behind', fmt='{}')} behind | {cell(a, 'held_applied', fmt='{}')}/"
                     f"{cell(a, 'held_keys', fmt='{}')}, in order {cell(a, 'held_in_order')}, "
                     f"{cell(a, 'held_max_behind', fmt='{}')} behind, last drawn "
                     f"{cell(a, 'held_last_key_to_screen_ms', fmt='{:.0f}')} ms after it | {'yes' if ok else '**no**'} |")
    pb, pa = (before or {}).get("prefetch", {}), after.get("prefetch", {})
    lines.append(f"| prefetch: top-4 appends drawn within 5 ms after a 100 ms pause | >= 90% | "
                 f"{cell(pb, 'within_5ms', fmt='{:.0%}')} (median {cell(pb, 'median_ms')} ms) | "
                 f"{cell(pa, 'within_5ms', fmt='{:.0%}')} (median {cell(pa, 'median_ms')} ms), "
                 f"{cell(pa, 'extra_decodes_per_append', fmt='{:.2f}')} extra decodes per append | "
                 f"{'yes' if pa.get('within_5ms', 0) >= 0.9 else '**no**'} |")
    hb, ha = (before or {}).get("hf", {}), after.get("hf", {})
    lines.append(f"| transformers (dequantized checkpoint): uncached append | <= 1.2x bare HF step | "
                 f"{cell(hb, 'uncached_append_ms')} ms = {cell(hb, 'ratio', fmt='{:.2f}')}x | "
                 f"{cell(ha, 'uncached_append_ms')} ms = {cell(ha, 'ratio', fmt='{:.2f}')}x (bare "
                 f"{cell(ha, 'bare_step_ms')} ms) | {'yes' if ha.get('ratio', 9) <= 1.2 else '**no**'} |")
    for size in ("120x36", "200x50"):
        tb, ta = (before or {}).get("tree", {}).get(size, {}), after.get("tree", {}).get(size, {})
        for name in ("cached pop", "cached append", "branch switch", "view change"):
            v = ta.get(name, {}).get("ms")
            lines.append(f"| 100,000-node session, {name}, {size}, key to canvas (in process) | <= 5 ms | "
                         f"{cell(tb, name, 'ms')} ms | {cell(ta, name, 'ms')} ms | "
                         f"{'yes' if v is not None and v <= 5 else '**no**'} |")
    lines += ["", "In process (ExplorerApp, inline worker, key to rendered canvas; the GGUF at 2 threads): "
              "where the time goes, and the store's work per key (statements / read transactions / write "
              "transactions; an uncached append's second write is the model's outputs).", "",
              "| size | key | before ms | after ms | after: canvas | snapshot + panes | SQL | command + model | "
              "statements before / after | reads before / after | writes before / after |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, keys in (after.get("inproc") or {}).items():
        for key, r in keys.items():
            old = ((before or {}).get("inproc") or {}).get(size, {}).get(key, {})
            lines.append(f"| {size} | {key} | {cell(old, 'total', fmt='{:.2f}')} | {r['total']:.2f} | "
                         f"{r['canvas']:.2f} | {r['refresh']:.2f} | {r['sql']:.2f} | {r['rest']:.2f} | "
                         f"{cell(old, 'statements', fmt='{:.0f}')} / {r['statements']:.0f} | "
                         f"{cell(old, 'reads', fmt='{:.0f}')} / {r['reads']:.0f} | "
                         f"{cell(old, 'writes', fmt='{:.0f}')} / {r['writes']:.0f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only", choices=["pty", "inproc", "prefetch", "hf", "tree", "pane"], action="append")
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the sessions and logs in this folder")
    ap.add_argument("--size", action="append", help="COLSxROWS for the pty section (default 120x36 and 200x50)")
    ap.add_argument("--report", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                    help="print results.md's section from two --json files")
    ap.add_argument("--bare", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare:
        return bare_main(*args.bare)
    if args.report:
        before, after = (json.loads(p.read_text(encoding="utf-8")) for p in args.report)
        print(report(before, after, "uv run --no-sync python benchmarks/felt.py --json F"), end="")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokentree.lm import bundled
    from tokentree.lm.llama import LlamaBackend

    def log(msg):
        print(msg, flush=True)

    gguf = bundled.require_gguf()
    prompt = ROOT / "prompts" / "gsm8k.txt"
    probe = LlamaBackend(gguf, threads=THREADS)
    ids = probe.encode(prompt.read_text(encoding="utf-8"))
    probe.close()
    want = set(args.only or ["pty", "inproc", "prefetch", "hf", "tree", "pane"])
    out: dict = {"loadavg_start": os.getloadavg()}
    t0 = time.perf_counter()
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.size] if args.size else [(120, 36), (200, 50)]
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="felt-") as tmp:
        work = args.keep or Path(tmp)
        if "pty" in want:
            out["pty"] = [pty_gguf(work, gguf, ids, prompt, size, args.reps, log) for size in sizes]
        if "prefetch" in want:
            out["prefetch"] = pty_prefetch(work, gguf, prompt, (120, 36), args.reps, log)
        if "hf" in want:
            from tokentree.lm.dequantize import ensure_checkpoint

            folder = ensure_checkpoint(gguf, label=bundled.NAME)
            out["hf"] = pty_hf(work, folder, ids, prompt, (120, 36), max(5, args.reps // 2), log)
        if "inproc" in want:
            log("in process (ExplorerApp + InlineWorker, key to canvas):")
            out["inproc"] = inproc_all(work, gguf, ids, args.reps, log)
        if "pane" in want:
            out["pane"] = pane_long_prompt(8000, max(5, args.reps // 2), log)
        if "tree" in want and args.nodes:
            out["tree"] = inproc_tree(work, args.nodes, max(5, args.reps // 2), log)
    out["wall_s"] = time.perf_counter() - t0
    out["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

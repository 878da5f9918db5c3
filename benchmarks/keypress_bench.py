"""Key-to-data latency of cached key presses (pop, append of an explored child): the
command, its store event, the (empty) model work and the next snapshot. No model: a fake
engine for the 1,024-token prompt session, a stub that fails on any model call for the
stored tree. Also counts SQL statements and read transactions per key press, and times the
tree pane (snapshot with_tree=True).

    uv run python benchmarks/keypress_bench.py                 # 1,024-token prompt + 100k-node tree
    uv run python benchmarks/keypress_bench.py --nodes 10000   # a smaller tree
    uv run python benchmarks/keypress_bench.py --json out.json

The stored tree is built once (through benchmarks/trees.py, ~30 s for 100k nodes) and kept
under --work (default: the system temp dir) for later runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


class SqlCounter:
    """Counts SQL statements (BEGIN/COMMIT included) and read/write transactions on the
    store's engine (the write engine is an option view of it: its events fire here too)."""

    def __init__(self, store):
        from sqlalchemy import event

        from tokentree.store.engine import BEGIN_OPTION

        self.statements = self.reads = self.writes = 0
        self._event = event
        engine = store.engine

        def on_exec(*args, **kwargs):
            self.statements += 1

        def on_begin(conn):
            if conn.get_execution_options().get(BEGIN_OPTION) == "IMMEDIATE":
                self.writes += 1
            else:
                self.reads += 1

        event.listen(engine, "before_cursor_execute", on_exec)
        event.listen(engine, "begin", on_begin)
        self._hooks = [(engine, "before_cursor_execute", on_exec), (engine, "begin", on_begin)]

    def take(self) -> tuple[int, int, int]:
        out = (self.statements, self.reads, self.writes)
        self.statements = self.reads = self.writes = 0
        return out

    def close(self) -> None:
        for engine, name, fn in self._hooks:
            self._event.remove(engine, name, fn)


def _press(explorer, action, counter):
    counter.take()
    t0 = time.perf_counter()
    action()
    explorer.run_jobs_inline()
    snap = explorer.snapshot()
    dt = time.perf_counter() - t0
    assert not snap.waiting, "a cached node had no data"
    return dt, counter.take()


def measure(explorer, store, presses: int, engine, *, alternate: bool) -> dict:
    """`presses` pops then as many appends (benchmarks/run.py: back along the path, then
    forward along the top candidates), or pop/append pairs (benchmarks/trees.py)."""
    counter = SqlCounter(store)
    try:
        explorer.run_jobs_inline()
        explorer.snapshot()
        passes = getattr(engine, "forward_passes", 0)
        pops, apps, counts = [], [], []
        order = ["pop", "append"] * presses if alternate else ["pop"] * presses + ["append"] * presses
        for what in order:
            dt, c = _press(explorer, getattr(explorer, what), counter)
            (pops if what == "pop" else apps).append(dt)
            counts.append(c)
        passes = getattr(engine, "forward_passes", 0) - passes
    finally:
        counter.close()
    return {
        "pop_ms": statistics.median(pops) * 1000,
        "append_ms": statistics.median(apps) * 1000,
        "pop_min_ms": min(pops) * 1000,
        "append_min_ms": min(apps) * 1000,
        "statements_per_press": statistics.median(c[0] for c in counts),
        "reads_per_press": statistics.median(c[1] for c in counts),
        "writes_per_press": statistics.median(c[2] for c in counts),
        "forward_passes": passes,
    }


def prompt_session(work: Path, length: int, presses: int) -> dict:
    from fake_engine import FakeEngine, FakeLoaded

    from tokentree.config import Config
    from tokentree.core.explorer import Explorer
    from tokentree.store import Store

    db = work / f"prompt-{length}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    engine = FakeEngine(FakeLoaded(context_length=None), top_k=64)
    store = Store.open(db)
    try:
        loaded = engine.loaded
        sid = store.start_session(model_name=loaded.name, fingerprint=loaded.fingerprint,
                                  vocab_key=loaded.vocab_key, prompt_sources=["bench"])
        tokens = [1 + (i * 7) % 19 for i in range(length)]
        store.create_branch(sid, tokens, source="bench", name="p")
        explorer = Explorer(store, sid, config=Config(), model_name=loaded.name, engine=engine)
        explorer.run_jobs_inline()
        for _ in range(presses):  # an explored path to pop back along
            explorer.append()
            explorer.run_jobs_inline()
        result = measure(explorer, store, presses, engine, alternate=False)
    finally:
        store.close()
    return result


def stored_tree(work: Path, nodes: int, presses: int, tree_reps: int) -> dict:
    from benchmarks.trees import MODEL_NAME, _StubEngine, build_tree, test_tokenizer_pieces

    from tokentree.config import Config
    from tokentree.core.explorer import Explorer
    from tokentree.store import Store

    db = work / f"tree-{nodes}.db"
    meta = work / f"tree-{nodes}.json"
    if not (db.exists() and meta.exists()):
        info = build_tree(db, nodes, vocab=test_tokenizer_pieces(), log=print)
        meta.write_text(json.dumps({"session_id": info.session_id}))
    sid = json.loads(meta.read_text())["session_id"]
    # Work on a copy: the presses append events.
    copy = work / f"tree-{nodes}-run.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(copy) + suffix).unlink(missing_ok=True)
    shutil.copyfile(db, copy)
    store = Store.open(copy)
    try:
        info = store.session(sid)
        engine = _StubEngine(info.vocab_key, info.fingerprint)
        config = Config()
        t0 = time.perf_counter()
        explorer = Explorer(store, sid, config=config, model_name=MODEL_NAME, engine=engine)
        explorer.run_jobs_inline()
        explorer.snapshot()
        first_ms = (time.perf_counter() - t0) * 1000
        result = measure(explorer, store, presses, engine, alternate=True)
        result["first_screen_ms"] = first_ms
        tree = []
        for _ in range(tree_reps):
            t0 = time.perf_counter()
            snap = explorer.snapshot(with_tree=True)
            tree.append(time.perf_counter() - t0)
        result["tree_pane_first_ms"] = tree[0] * 1000
        result["tree_pane_ms"] = statistics.median(tree[1:] or tree) * 1000
        result["tree_lines"] = len(snap.tree)
        # A key press with the tree pane open.
        counter = SqlCounter(store)
        t_pop, t_app = [], []
        try:
            for _ in range(3):
                t0 = time.perf_counter()
                explorer.pop()
                explorer.run_jobs_inline()
                explorer.snapshot(with_tree=True)
                t_pop.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                explorer.append()
                explorer.run_jobs_inline()
                explorer.snapshot(with_tree=True)
                t_app.append(time.perf_counter() - t0)
        finally:
            counter.close()
        result["tree_open_pop_ms"] = statistics.median(t_pop) * 1000
        result["tree_open_append_ms"] = statistics.median(t_app) * 1000
        result["model_calls"] = engine.forward_passes
    finally:
        store.close()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=1024, help="prompt length of the fake-engine session")
    ap.add_argument("--nodes", type=int, default=100_000, help="nodes in the stored tree (0: skip)")
    ap.add_argument("--presses", type=int, default=10)
    ap.add_argument("--tree-reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tokentree-keypress-bench")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    out = {"prompt": prompt_session(args.work, args.length, args.presses)}
    print(f"prompt of {args.length} tokens:", json.dumps(out["prompt"], indent=1))
    if args.nodes:
        out["tree"] = stored_tree(args.work, args.nodes, args.presses, args.tree_reps)
        print(f"stored tree of {args.nodes} nodes:", json.dumps(out["tree"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

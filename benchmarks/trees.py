"""Stored exploration trees of a given size, built through the Store API, and the figures
that need no model: resume to first screen, text export, bytes per cached node.

A tree: one session, a root prompt, then explorations that fork at random points of what has
been explored so far and continue for a while (like a person trying alternatives), until
the session has exactly N nodes; every exploration is recorded with `create_branch` (one
event each: the path's nodes are inserted in one transaction), then all but `branches`
branches are removed with `remove_branch`. Every node gets a cached model output
(`put_outputs`, top-64 like the real engine) so the first screen and the export have data.

The resume/export timings can run in a fresh child process (`isolated=True`), so the figure
and its peak memory are those of a `tokentree --resume` / `tokentree export` process.
"""

from __future__ import annotations

from dataclasses import replace

import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import median, peak_rss_mb, reset_peak_rss  # noqa: E402

FINGERPRINT = "benchmark-model:float32"
MODEL_NAME = "benchmark-model"


@dataclass
class TreeInfo:
    path: str  # database file
    session_id: int
    nodes: int
    branches: int  # live branches
    explorations: int  # create_branch calls
    events: int
    build_s: float  # nodes and events
    outputs_s: float  # put_outputs for every node
    db_bytes: int  # after a checkpoint
    db_bytes_before_outputs: int
    outputs_bytes_per_node: float  # growth of the file from the cached outputs, per node
    db_bytes_per_node: float  # the whole file (events, nodes, branches, outputs) per node
    table_bytes: dict[str, int] | None  # per table and index (sqlite dbstat), where available


def test_tokenizer_pieces() -> tuple[str, dict[int, bytes]]:
    """(vocab_key, id -> bytes) of the tests' tokenizer, computed the way the engine does."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import build_tokenizer

    from tokentree.lm.loader import vocab_key
    from tokentree.lm.tokens import TokenBytes

    tok = build_tokenizer()
    return vocab_key(tok), TokenBytes(tok)(range(len(tok)))


def checkpoint(path: str | Path) -> int:
    """Fold the WAL into the main file; return the file's size in bytes."""
    con = sqlite3.connect(str(path))
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return os.path.getsize(path)


def table_bytes(path: str | Path) -> dict[str, int] | None:
    con = sqlite3.connect(str(path))
    try:
        rows = con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return {name: int(size) for name, size in rows}


def _synthetic_output(rng: random.Random, token_range: int, k: int, first: bool):
    from tokentree.outputs import Distribution, NodeOutput

    ids = rng.sample(range(token_range), k)
    raw = sorted((rng.random() ** 3 for _ in range(k)), reverse=True)
    scale = 0.9 / sum(raw)
    probs = tuple(p * scale for p in raw)
    ent = rng.uniform(0.5, 6.0)
    return NodeOutput(
        token_prob=None if first else rng.random(),
        token_rank=None if first else rng.randint(1, 200),
        next=Distribution(top_ids=tuple(ids), top_probs=probs, entropy=ent, norm_entropy=ent / math.log(151_936)),
    )


def build_tree(
    path: str | Path,
    n_nodes: int,
    *,
    branches: int = 50,
    prompt_len: int = 64,
    seed: int = 0,
    vocab: tuple[str, Mapping[int, bytes]] | None = None,
    chain: tuple[int, int] | None = None,
    max_depth: int = 1500,
    top_k: int = 64,
    log=lambda msg: None,
) -> TreeInfo:
    """Build a session of exactly `n_nodes` nodes and `branches` live branches in a new
    database at `path` (through the Store API) and cache an output for every node."""
    from tokentree.store import Store

    if n_nodes < prompt_len:
        prompt_len = max(1, n_nodes // 2)
    if chain is None:  # explorations of ~100 tokens; shorter in small trees, so they fork too
        hi = min(160, max(8, 2 * (n_nodes - prompt_len) // (branches + 10)))
        chain = (max(2, hi // 4), hi)
    vocab_key, pieces = vocab if vocab is not None else test_tokenizer_pieces()
    token_range = len(pieces)
    rng = random.Random(seed)
    path = Path(path)
    t0 = time.perf_counter()
    store = Store.open(path)
    try:
        sid = store.start_session(model_name=MODEL_NAME, fingerprint=FINGERPRINT, vocab_key=vocab_key,
                                  prompt_sources=["benchmark prompt"])
        store.put_token_bytes(vocab_key, dict(pieces))
        prompt = [rng.randrange(token_range) for _ in range(prompt_len)]
        first_branch = store.create_branch(sid, prompt, source="benchmark prompt", name="prompt")
        # An in-memory trie mirrors the node table, so every exploration adds a known number
        # of new nodes and the total comes out exact.
        children: dict[tuple[int, int], int] = {}
        count = 0
        parent = -1
        for t in prompt:
            count += 1
            children[(parent, t)] = count
            parent = count
        leaves: list[tuple[int, ...]] = [tuple(prompt)]
        created: list[int] = []
        explorations = 1
        while count < n_nodes:
            base = rng.choice(leaves)
            fork = rng.randint(prompt_len, len(base))
            if fork + chain[0] > max_depth:
                fork = rng.randint(prompt_len, max(prompt_len, max_depth - chain[1]))
            want = min(rng.randint(*chain), n_nodes - count)
            new_path = list(base[:fork])
            node = -1
            for t in new_path:
                node = children[(node, t)]
            added = 0
            while added < want:
                t = rng.randrange(token_range)
                key = (node, t)
                if key in children:
                    node = children[key]
                else:
                    count += 1
                    added += 1
                    children[key] = node = count
                new_path.append(t)
            leaves.append(tuple(new_path))
            created.append(store.create_branch(sid, new_path, source=None, name=f"x{explorations}"))
            explorations += 1
        # Keep `branches` live branches: the prompt branch and the most recent explorations.
        keep = set(created[-(branches - 1):]) if branches > 1 else set()
        for bid in created:
            if bid not in keep:
                store.remove_branch(sid, bid)
        store.focus_branch(sid, created[-1] if created else first_branch)
        build_s = time.perf_counter() - t0
        before = checkpoint(path)

        t1 = time.perf_counter()
        nodes = store.session_nodes(sid)
        depth1 = {n.prefix_key for n in nodes if n.depth == 1}
        items = [(n.prefix_key, _synthetic_output(rng, token_range, top_k, n.prefix_key in depth1)) for n in nodes]
        for i in range(0, len(items), 5000):
            store.put_outputs(items[i : i + 5000], FINGERPRINT)
        outputs_s = time.perf_counter() - t1
        n_events = len(store.events(sid))
        n_live = len(store.branches(sid))
        real_nodes = len(nodes)
    finally:
        store.close()
    size = checkpoint(path)
    log(f"tree of {real_nodes} nodes: {explorations} explorations, built in {build_s:.1f} s "
        f"+ outputs {outputs_s:.1f} s")
    return TreeInfo(
        path=str(path), session_id=sid, nodes=real_nodes, branches=n_live, explorations=explorations,
        events=n_events, build_s=build_s, outputs_s=outputs_s, db_bytes=size, db_bytes_before_outputs=before,
        outputs_bytes_per_node=(size - before) / real_nodes, db_bytes_per_node=size / real_nodes,
        table_bytes=table_bytes(path),
    )


# ------------------------------------------------------------------ resume and export


class _StubEngine:
    """Stands in for the model where every node is cached: any model call is an error."""

    def __init__(self, vocab_key: str, fingerprint: str):
        from types import SimpleNamespace

        from tokentree.outputs import Capabilities

        self.loaded = SimpleNamespace(name=MODEL_NAME, vocab_key=vocab_key, fingerprint=fingerprint,
                                      device="none", dtype="float32", context_length=None)
        self.info = self.loaded
        self.capabilities = Capabilities()
        self.forward_passes = 0
        self.special_ids = frozenset

    def _fail(self, *args, **kwargs):
        self.forward_passes += 1
        raise AssertionError("a cached node asked the model")

    prefill = step = analyze = _fail

    def token_bytes(self, ids):
        return {}


def measure_keys(store, session_id: int, config, presses: int) -> dict:
    """Key-to-data latency of pops then re-appends over cached nodes in this session."""
    from tokentree.core.explorer import Explorer

    info = store.session(session_id)
    engine = _StubEngine(info.vocab_key, info.fingerprint)
    # Cached nodes only: no speculative work on the uncached children around them.
    config = replace(config, explore=replace(config.explore, prefetch=0))
    explorer = Explorer(store, session_id, config=config, model_name=MODEL_NAME, engine=engine)
    explorer.run_jobs_inline()
    explorer.snapshot()

    def press(action):
        t0 = time.perf_counter()
        action()
        explorer.run_jobs_inline()
        snap = explorer.snapshot()
        dt = time.perf_counter() - t0
        assert not snap.waiting and engine.forward_passes == 0
        return dt

    pops, appends = [], []
    for _ in range(presses):  # pop, then the popped token (selected) goes right back
        pops.append(press(explorer.pop))
        appends.append(press(explorer.append))
    return {"pop_s": pops, "append_s": appends, "model_calls": engine.forward_passes}


def measure_resume_export(db: str, session_id: int, *, repeats: int = 5, export_repeats: int = 3,
                          export_budget_s: float = 10.0, presses: int = 5) -> dict:
    """Time resume-to-first-screen (open the store, build the explorer, take its first
    snapshot; no model) and the text export, in this process. The first resume is the one a
    fresh `tokentree --resume` pays (lazy imports and first queries included)."""
    t_import = time.perf_counter()
    from tokentree.config import Config
    from tokentree.core.explorer import Explorer
    from tokentree.export import export_session
    from tokentree.store import Store

    import_s = time.perf_counter() - t_import
    reset_peak_rss()
    config = Config()
    resume, snapshot_tree, lines = [], [], 0
    first_screen = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        store = Store.open(db)
        explorer = Explorer(store, session_id, config=config, model_name=MODEL_NAME)
        snap = explorer.snapshot()
        resume.append(time.perf_counter() - t0)
        first_screen = {
            "branches": len(snap.branches), "candidates": len(snap.candidates),
            "prompt_tokens": len(snap.prompt), "waiting": snap.waiting, "origin": snap.status.origin,
        }
        store.close()
    store = Store.open(db)
    try:
        explorer = Explorer(store, session_id, config=config, model_name=MODEL_NAME)
        for _ in range(max(1, repeats // 2)):
            t0 = time.perf_counter()
            snap = explorer.snapshot(with_tree=True)
            snapshot_tree.append(time.perf_counter() - t0)
        export, size = [], 0
        for _ in range(export_repeats):
            t0 = time.perf_counter()
            text = export_session(store, session_id, "text")
            export.append(time.perf_counter() - t0)
            size, lines = len(text.encode("utf-8")), text.count("\n")
            if sum(export) > export_budget_s:
                break
        keys = measure_keys(store, session_id, config, presses) if presses else None
    finally:
        store.close()
    return {
        "import_s": import_s,
        "resume_s": resume,
        "tree_pane_s": snapshot_tree,
        "export_s": export,
        "export_bytes": size,
        "export_lines": lines,
        "first_screen": first_screen,
        "keys": keys,
        "peak_rss_mb": peak_rss_mb(),
    }


_warmed: set[str] = set()


def _child_env(pycache: str | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if pycache:
        # Like an installed package: modules load from bytecode, not from source each time
        # (this environment may set PYTHONDONTWRITEBYTECODE, which makes every import compile).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def _child(db: str, session_id: int, repeats: int, export_repeats: int, env: dict, presses: int = 5) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, %r); from benchmarks.trees import measure_resume_export; "
        "print(json.dumps(measure_resume_export(%r, %d, repeats=%d, export_repeats=%d, presses=%d)))"
        % (str(ROOT), db, session_id, repeats, export_repeats, presses)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"resume/export child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    """Aggregate one or more measure_resume_export results (one per process)."""
    first = [r["resume_s"][0] for r in runs]
    warm = [x for r in runs for x in r["resume_s"][1:]] or first
    export = [x for r in runs for x in r["export_s"]]
    pops = [x for r in runs if r.get("keys") for x in r["keys"]["pop_s"]]
    appends = [x for r in runs if r.get("keys") for x in r["keys"]["append_s"]]
    return {
        "key_pop_s": median(pops) if pops else None,
        "key_append_s": median(appends) if appends else None,
        "key_n": len(pops),
        "key_model_calls": sum(r["keys"]["model_calls"] for r in runs if r.get("keys")),
        "processes": len(runs),
        "resume_first_s": median(first),  # a fresh process's first screen
        "resume_first_all_s": first,
        "resume_warm_s": median(warm),
        "resume_warm_n": len(warm),
        "import_s": median([r["import_s"] for r in runs]),
        "tree_pane_s": median([x for r in runs for x in r["tree_pane_s"]]),
        "export_first_s": median([r["export_s"][0] for r in runs]),
        "export_median_s": median(export),
        "export_n": len(export),
        "export_lines": runs[-1]["export_lines"],
        "export_bytes": runs[-1]["export_bytes"],
        "first_screen": runs[-1]["first_screen"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def measure_isolated(db: str, session_id: int, *, processes: int = 3, repeats: int = 5, export_repeats: int = 3,
                     pycache: str | None = None) -> dict:
    """measure_resume_export in `processes` fresh Python processes (as a real resume or export
    runs), after one untimed process that fills the bytecode cache."""
    env = _child_env(pycache)
    if pycache and pycache not in _warmed:
        _child(db, session_id, 1, 0, env, presses=0)
        _warmed.add(pycache)
    return summarize([_child(db, session_id, repeats, export_repeats, env) for _ in range(processes)])


def tree_info_dict(info: TreeInfo) -> dict:
    return asdict(info)

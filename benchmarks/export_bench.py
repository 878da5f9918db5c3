"""Benchmark: export a session of 100,000 nodes and 50 branches as text (and the other formats).

    uv run python benchmarks/export_bench.py [--nodes 100000] [--branches 50] [--db PATH]

Builds the session in a temporary database through the public Store API (every step is a
real event: start a session, create the first branch from a prompt, then duplicate a branch,
move the copy to a fork point on an existing path and append tokens until the node budget is
spent), fills the model-output cache with a top-64 distribution for every node in one
`put_outputs` call, then times:

- the two big store reads on their own (`session_nodes`, `get_outputs` of every node),
- loading the session into plain data (`load_export_tree`, without and with top lists),
- rendering text, text --ascii, json, dot and markdown,
- the whole `export_session(store, id, "text")` call, as `tokentree export --format text` runs it.

`--db PATH` keeps the database (building 100,000 append events takes minutes) and reuses its
latest session on the next run; `--synthetic` times the renderers alone on the same shape
of tree built in memory. No model is needed. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tokentree.export import (  # noqa: E402
    export_session,
    load_export_tree,
    render_dot,
    render_json,
    render_markdown,
    render_text,
)
from tokentree.outputs import Distribution, NodeOutput  # noqa: E402

VOCAB = 5000
TOP_K = 64
PROMPT_TOKENS = 60
WORDS = ("the", "a", "cat", "sat", "on", "mat", "and", "then", "ran", "away", "to", "far", "hills",
         "é", "😀", "\n", "\t", ",", ".", "42")


def token_pieces(rng: random.Random) -> dict[int, bytes]:
    pieces = {}
    for i in range(VOCAB):
        word = rng.choice(WORDS)
        pieces[i] = ((" " if rng.random() < 0.7 else "") + word).encode() if word.strip() else word.encode()
    pieces[7] = "😀".encode()[:2]  # a token that is half a character
    pieces[8] = "😀".encode()[2:]
    return pieces


def build(store, n_nodes: int, n_branches: int, seed: int = 0) -> tuple[int, dict[str, float]]:
    rng = random.Random(seed)
    times = {}
    t0 = time.perf_counter()
    sid = store.start_session(model_name="bench-model", fingerprint="bench:float32", vocab_key="bench-vocab",
                              prompt_sources=["bench.txt"])
    store.put_token_bytes("bench-vocab", token_pieces(rng))
    prompt = [rng.randrange(VOCAB) for _ in range(PROMPT_TOKENS)]
    first = store.create_branch(sid, prompt, source="bench.txt", name="main")
    made = PROMPT_TOKENS
    per_branch = (n_nodes - PROMPT_TOKENS) // n_branches
    appends = 0
    branch_ids = [first]
    for b in range(n_branches):
        if b == 0:
            bid = first
        else:
            source = rng.choice(branch_ids)
            bid = store.duplicate_branch(sid, source)
            tip = {x.id: x for x in store.branches(sid)}[bid].node_id
            path = store.path_nodes(tip)
            # fork somewhere after the prompt
            fork = path[rng.randrange(PROMPT_TOKENS - 1, len(path))]
            store.move_branch(sid, bid, fork.id)
            branch_ids.append(bid)
        budget = per_branch if b < n_branches - 1 else n_nodes - made
        for _ in range(budget):
            store.append_token(sid, bid, rng.randrange(VOCAB))
            appends += 1
            if appends % 10_000 == 0:
                print(f"  ... {appends} tokens appended, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        made += budget
    times["build: events (1 session, %d branches, %d appends)" % (n_branches, appends)] = time.perf_counter() - t0

    t0 = time.perf_counter()
    nodes = store.session_nodes(sid)
    items = []
    for node in nodes:
        probs = sorted((rng.random() ** 4 for _ in range(TOP_K)), reverse=True)
        total = sum(probs) * 1.25
        probs = tuple(p / total for p in probs)
        ids = tuple(rng.sample(range(VOCAB), TOP_K))
        h = rng.uniform(0.1, 6.0)
        dist = Distribution(ids, probs, h, h / math.log(VOCAB))
        first_token = node.parent_id is None
        items.append((node.prefix_key, NodeOutput(None if first_token else rng.random(),
                                                  None if first_token else rng.randrange(1, 500), dist)))
    store.put_outputs(items, "bench:float32")
    times[f"build: put_outputs ({len(items)} nodes, top {TOP_K})"] = time.perf_counter() - t0
    return sid, times


def synthetic_tree(n_nodes: int, n_branches: int, seed: int = 0):
    """The same shape as `build`, as plain data (no store): times the renderers alone."""
    from tokentree.export import ExportBranch, ExportNode, ExportTree

    rng = random.Random(seed)
    pieces = token_pieces(rng)
    nodes: list = []
    parent_of: dict[int, int | None] = {}

    def add(parent: int | None, depth: int) -> int:
        nid = len(nodes) + 1
        token = rng.randrange(VOCAB)
        prob = None if parent is None else rng.random()
        top_ids = () if parent is None else tuple(rng.randrange(VOCAB) for _ in range(TOP_K))
        top_probs = () if parent is None else tuple(rng.random() for _ in range(TOP_K))
        nodes.append(ExportNode(nid, parent, token, depth, pieces[token], prob, None if prob is None else 1,
                                None if prob is None else 1.0, None if prob is None else 0.1, top_ids, top_probs))
        parent_of[nid] = parent
        return nid

    def path(nid: int) -> list[int]:
        out = []
        while nid is not None:
            out.append(nid)
            nid = parent_of[nid]
        return out[::-1]

    tip = None
    for i in range(PROMPT_TOKENS):
        tip = add(tip, i + 1)
    prompt_end = tip
    tips = []
    per_branch = (n_nodes - PROMPT_TOKENS) // n_branches
    for b in range(n_branches):
        if b:
            src = path(rng.choice(tips))
            tip = src[rng.randrange(PROMPT_TOKENS - 1, len(src))]
        budget = per_branch if b < n_branches - 1 else n_nodes - len(nodes)
        for _ in range(budget):
            tip = add(tip, nodes[tip - 1].depth + 1)
        tips.append(tip)
    branches = []
    for b, t in enumerate(tips):
        p = path(t)
        branches.append(ExportBranch(b + 1, f"b{b + 1}", b, b == 0, t, prompt_end, tuple(p),
                                     tuple(nodes[i - 1].token_id for i in p)))
    return ExportTree({"id": 1, "created_at": None, "last_used_at": None, "model_name": "bench-model",
                       "prompt_sources": []}, {"name": "bench-model", "fingerprint": "bench", "vocab_key": "v"},
                      tuple(branches), tuple(nodes), pieces)


def timed(label: str, fn, figures: dict[str, float]):
    t0 = time.perf_counter()
    result = fn()
    figures[label] = time.perf_counter() - t0
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--branches", type=int, default=50)
    parser.add_argument("--db", help="reuse (or create) this database instead of a temporary one")
    parser.add_argument("--synthetic", action="store_true",
                        help="time the renderers on plain data built in memory (no store)")
    args = parser.parse_args(argv)

    if args.synthetic:
        figures = {}
        tree = timed("build plain data", lambda: synthetic_tree(args.nodes, args.branches), figures)
        text = timed("render_text", lambda: render_text(tree), figures)
        timed("render_text ascii", lambda: render_text(tree, ascii=True), figures)
        js = timed("render_json", lambda: render_json(tree), figures)
        timed("render_dot", lambda: render_dot(tree), figures)
        timed("render_markdown", lambda: render_markdown(tree), figures)
        report(tree, text, js, figures)
        return 0

    from tokentree.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db) if args.db else Path(tmp) / "bench.db"
        reuse = db.exists()
        store = Store.open(db)
        try:
            figures: dict[str, float] = {}
            if reuse and store.latest_session_id() is not None:
                sid = store.latest_session_id()
                print(f"reusing session {sid} in {db}")
            else:
                sid, build_times = build(store, args.nodes, args.branches)
                figures.update(build_times)
            info = store.session(sid)
            nodes = timed("store.session_nodes (alone)", lambda: store.session_nodes(sid), figures)
            timed("store.get_outputs of every node (alone)",
                  lambda: store.get_outputs([n.prefix_key for n in nodes], info.fingerprint), figures)
            del nodes
            timed("load_export_tree (no top lists: text/dot/markdown)",
                  lambda: load_export_tree(store, sid, with_top=False), figures)
            tree = timed("load_export_tree (with top lists: json)", lambda: load_export_tree(store, sid), figures)
            text = timed("render_text", lambda: render_text(tree), figures)
            timed("render_text ascii", lambda: render_text(tree, ascii=True), figures)
            js = timed("render_json", lambda: render_json(tree), figures)
            timed("render_dot", lambda: render_dot(tree), figures)
            timed("render_markdown", lambda: render_markdown(tree), figures)
            full = timed("export_session text (load + render)", lambda: export_session(store, sid, "text"), figures)
            assert full == text
        finally:
            store.close()

    report(tree, text, js, figures)
    return 0


def report(tree, text: str, js: str, figures: dict[str, float]) -> None:
    print(f"session: {len(tree.nodes)} nodes, {len(tree.branches)} branches; "
          f"text {len(text.splitlines())} lines / {len(text) / 1e6:.1f} MB, json {len(js) / 1e6:.1f} MB")
    width = max(len(k) for k in figures)
    for label, seconds in figures.items():
        print(f"{label:<{width}}  {seconds:8.3f} s")


if __name__ == "__main__":
    raise SystemExit(main())

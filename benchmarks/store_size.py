"""Bytes per cached node in a real tokentree database file.

Builds a database in a temporary directory the way a session does (a prompt prefill of N
tokens as one branch, then appended tokens), caches the model output of every node at
K = 64 (plus the token bytes of every id seen), closes it and measures the file.

    uv run python benchmarks/store_size.py [--nodes 2000] [--k 64]
"""

from __future__ import annotations

import argparse
import math
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokentree.outputs import Distribution, NodeOutput  # noqa: E402
from tokentree.store import Store, prefix_key, prefix_keys  # noqa: E402

VOCAB_SIZE = 151_936  # Qwen2.5


def fake_output(rng: random.Random, k: int, first: bool) -> NodeOutput:
    ids = tuple(rng.sample(range(VOCAB_SIZE), k))
    weights = sorted((rng.random() ** 4 for _ in range(k)), reverse=True)
    total = sum(weights) * 1.25
    probs = tuple(w / total for w in weights)
    entropy = -sum(p * math.log(p) for p in probs)
    return NodeOutput(
        token_prob=None if first else rng.random(),
        token_rank=None if first else rng.randint(1, 5000),
        next=Distribution(top_ids=ids, top_probs=probs, entropy=entropy, norm_entropy=entropy / math.log(VOCAB_SIZE)),
    )


def file_size(path: Path) -> int:
    return path.stat().st_size + sum(p.stat().st_size for p in (path.with_name(path.name + "-wal"),) if p.exists())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--k", type=int, default=64)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokentree.db"
        Store.open(path).close()
        empty = file_size(path)

        store = Store.open(path)
        vocab, fp = "bench-vocab", "bench-model@rev:float32"
        sid = store.start_session(model_name="bench", fingerprint=fp, vocab_key=vocab, prompt_sources=["bench"])
        n_prompt = args.nodes // 2
        prompt = [rng.randrange(VOCAB_SIZE) for _ in range(n_prompt)]
        t0 = time.perf_counter()
        branch = store.create_branch(sid, prompt)
        branch_s = time.perf_counter() - t0
        keys = prefix_keys(prompt, vocab)
        outputs = [(key, fake_output(rng, args.k, i == 0)) for i, key in enumerate(keys)]
        t0 = time.perf_counter()
        store.put_outputs(outputs, fp)  # ONE transaction
        prefill_s = time.perf_counter() - t0
        tokens = list(prompt)
        key = keys[-1]
        t0 = time.perf_counter()
        for _ in range(args.nodes - n_prompt):  # appended tokens: one event + one cache row each
            tok = rng.randrange(VOCAB_SIZE)
            store.append_token(sid, branch, tok)
            tokens.append(tok)
            key = prefix_key(key, tok, vocab)
            store.put_outputs([(key, fake_output(rng, args.k, False))], fp)
        append_s = time.perf_counter() - t0
        store.put_token_bytes(vocab, {t: f"tok{t}".encode() for t in set(tokens)})
        store.close()  # checkpoints the WAL into the file

        total = file_size(path)
        per_node = (total - empty) / args.nodes
        raw = sqlite3.connect(path)
        counts = {
            t: raw.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("nodes", "node_outputs", "events")
        }
        try:
            per_table = raw.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
        except sqlite3.OperationalError:  # SQLite built without dbstat
            per_table = []
        raw.close()

    print(f"nodes: {args.nodes} ({n_prompt} from one prefill, {args.nodes - n_prompt} appended), K = {args.k}")
    print(f"rows: {counts}")
    print(f"file: {total} bytes ({empty} bytes empty)")
    print(f"bytes per cached node: {per_node:.0f} (limit 1024) -> {'OK' if per_node < 1024 else 'TOO BIG'}")
    print(
        f"create_branch with a {n_prompt}-token prompt: {branch_s * 1000:.0f} ms; caching its prefill: "
        f"{prefill_s * 1000:.0f} ms; append + cache one token: {append_s / max(1, args.nodes - n_prompt) * 1000:.1f} ms"
    )
    if per_table:
        print("pages by table/index (bytes):")
        for name, size in per_table[:12]:
            print(f"  {name:45s} {size:>10}")


if __name__ == "__main__":
    main()

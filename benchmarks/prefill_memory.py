"""Memory of a long prompt: peak RSS growth of `Engine.prefill` over the loaded model.

    uv run python benchmarks/prefill_memory.py                      # 1k, 8k and 32k tokens
    uv run python benchmarks/prefill_memory.py --lengths 1024 8192  # some lengths only
    uv run python benchmarks/prefill_memory.py --chunk 256          # another prefill_chunk

The model has the vocabulary of Qwen2.5-0.5B, which is what makes long prompts expensive:
151,936 logit rows, and a tokenizer of 151,665 ids (the tests' small BPE tokenizer extended
with byte-level tokens no merge produces, `build_tokenizer(total_size=...)`, so the engine cuts
the 271 padding rows as it does for the real model). The rest is small so that 32k tokens run
in minutes on 2 cores: 2 layers, hidden 896, 14 heads, 2 KV heads, intermediate 4864, tied
embeddings, 32,768 positions, random weights. It is built once into a temporary directory
(or --model-dir) and loaded with `load_model`, like every benchmark model.

Each length runs in a fresh Python process: load the model, make the Engine, warm it up on 16
tokens, then reset the kernel's peak-RSS mark (Linux VmHWM, via /proc/self/clear_refs) and run
one `Engine.prefill` of random ids. "peak growth" is that peak minus the RSS just before the
prefill: everything the prefill needed at once (logits of a chunk and their reduction, the
attention's temporaries, the KV cache, the NodeOutputs). "kept" is what is still resident
afterwards (KV cache line, NodeOutputs, kept logits rows). For comparison, "[n, V] logits" is
what a single pass would hold in float32 logits alone. Target: growth under 1.5 GB at 32k.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402
from benchmarks.models import QWEN25_05B_SHAPE, QWEN25_05B_TOKENS  # noqa: E402

LENGTHS = (1024, 8192, 32768)
SHAPE = dict(QWEN25_05B_SHAPE, num_hidden_layers=2, max_position_embeddings=32_768)
TARGET_MIB = 1.5 * 1024**3 / 2**20


def build(directory: Path) -> Path:
    """Random-weight 2-layer Qwen2 with the Qwen2.5 vocabulary, and a 151,665-id tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    from transformers.utils import logging as hf_logging

    from tiny_model import build_tokenizer

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer(total_size=QWEN25_05B_TOKENS)
    config = Qwen2Config(**SHAPE, bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def measure(model_dir: str, length: int, chunk: int) -> dict:
    """One prefill of `length` tokens in this process; the figures as a dict (MiB, seconds)."""
    import gc

    import torch

    from tokentree.lm import Engine, load_model

    loaded = load_model(model_dir, device="cpu")
    engine = Engine(loaded, top_k=64, cache_size=100, prefill_chunk=chunk)
    tokens = torch.randint(0, engine.vocab_size, (length,), generator=torch.Generator().manual_seed(0)).tolist()
    engine.prefill(tokens[:16])  # warm-up: allocator, kernels
    gc.collect()
    before = rss_mb()
    resettable = reset_peak_rss()
    t0 = time.perf_counter()
    outputs = engine.prefill(tokens)
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    gc.collect()
    assert len(outputs) == length
    return {
        "tokens": length, "chunk": chunk, "model_calls": -(-length // chunk), "seconds": seconds,
        "rss_before_mib": before, "peak_growth_mib": peak - before, "kept_mib": rss_mb() - before,
        "peak_is_per_prefill": resettable, "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    ap.add_argument("--chunk", type=int, default=None, help="prefill_chunk (default: the Engine's)")
    ap.add_argument("--model-dir", type=Path, default=None, help="reuse (or build once into) this directory")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--child", nargs=3, metavar=("DIR", "LENGTH", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), int(args.child[2]))))
        return 0

    from tokentree.lm.engine import PREFILL_CHUNK

    chunk = args.chunk or PREFILL_CHUNK
    work = None
    directory = args.model_dir
    if directory is None:
        work = tempfile.TemporaryDirectory(prefix="tt-prefill-memory-")
        directory = Path(work.name) / "model"
    if not (directory / "config.json").exists():
        print(f"building the model in {directory} ...", file=sys.stderr, flush=True)
        build(directory)
    rows = []
    for length in args.lengths:
        print(f"prefill of {length} tokens in a fresh process ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(directory), str(length), str(chunk)],
            check=True, capture_output=True, text=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if work is not None:
        work.cleanup()

    vocab_rows = SHAPE["vocab_size"]
    print(f"\nEngine.prefill, 2-layer Qwen2 with {vocab_rows:,} logit rows / {QWEN25_05B_TOKENS:,} ids, "
          f"float32, CPU, {rows[0]['threads'] if rows else '-'} threads, prefill_chunk {chunk}\n")
    print("| tokens | model calls | peak growth | kept after | time | [n, V] float32 logits (one pass) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        full = r["tokens"] * vocab_rows * 4 / 2**20
        print(f"| {r['tokens']:,} | {r['model_calls']} | {r['peak_growth_mib']:,.0f} MiB | {r['kept_mib']:,.0f} MiB "
              f"| {r['seconds']:.1f} s | {full:,.0f} MiB |")
    if rows and not all(r["peak_is_per_prefill"] for r in rows):
        print("\n(the peak-RSS mark could not be reset: peaks include loading the model)")
    worst = max(rows, key=lambda r: r["tokens"]) if rows else None
    if worst:
        ok = worst["peak_growth_mib"] < TARGET_MIB
        print(f"\ntarget: growth < 1.5 GB ({TARGET_MIB:,.0f} MiB) at the longest prompt ({worst['tokens']:,} tokens): "
              f"{'met' if ok else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

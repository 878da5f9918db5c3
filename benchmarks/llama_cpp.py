"""The llama.cpp backend (tokentree/lm/llama/) on a CPU: its step against llama.cpp's own
bare decode and against the transformers engine, and the ways to reuse the KV cache.

    uv run python benchmarks/llama_cpp.py                 # Qwen2.5-0.5B-shaped model, F32 + F16 GGUF
    uv run python benchmarks/llama_cpp.py --quick         # the tests' tiny model (checks it runs)
    uv run python benchmarks/llama_cpp.py --work DIR      # keep the model and GGUF files in DIR

The model is built on the spot (benchmarks/models.py, random weights), converted to GGUF by
llama.cpp's own converter (tests/gguf_model.py) into a temporary directory (or --work), and
loaded three ways: `LlamaBackend` (what tokentree runs), a second bare llama.cpp context on the
same weights with the same parameters (the floor: one `llama_decode` of one token and a pointer
to its logits, no tokentree code), and the transformers `Engine` on the source model.

Figures (medians of `--reps` timed repeats after a warm-up, time.perf_counter):
- append @ L: `LlamaBackend.step` on a growing path after an L-token prompt (the right arrow on a
  new candidate: one token fed, the stored numbers computed from the full logits) vs the bare
  decode of one token at the same positions; target <= 1.15x. And vs `Engine.step` on the
  float32 Hugging Face model at the same positions (the speed-up). The three run one after
  another in every repeat, and the ratios are medians of per-repeat ratios, so a burst of
  other work on the machine (2 cores shared) hits them alike.
- step after a pop @ L: a sibling of the tip (pop, then a new candidate): tokens fed must be 1.
- KV reuse @ L: two branches sharing L-32 tokens, each 32 tokens past the fork; switching from
  one to the other and appending a token, by (1) removing the other branch's tail and re-feeding
  this one's (`memory_seq_rm`, one sequence), (2) keeping both as sequences forked with
  `memory_seq_cp` (tokentree's lines: the switch feeds the new token only), (3) saving the
  sequence's state and restoring the other's (`state_seq_get_data` / `state_seq_set_data`).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and this file's name would
# shadow the llama_cpp package: take the folder off (benchmarks.* imports go through ROOT).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TAIL = 32  # tokens of each branch past the fork, in the KV reuse figures


def median_ms(xs) -> float:
    return 1000 * statistics.median(xs)


def corpus(encode, n: int) -> list[int]:
    from tiny_model import CORPUS

    text = "\n".join(dict.fromkeys(CORPUS)) + "\n"
    ids: list[int] = []
    while len(ids) < n:
        ids += encode(text)
    return ids[:n]


class Bare:
    """A second llama.cpp context on the backend's weights, same parameters: the floor."""

    def __init__(self, backend, sequences: int = 3):
        from tokentree.lm.llama import context_params

        lib = self.lib = backend._lib
        params = context_params(lib, backend.info.dtype, n_ctx=backend.n_ctx, chunk=backend.prefill_chunk,
                                threads=backend.threads, sequences=sequences)
        self.ctx = lib.llama_init_from_model(backend._model, params)
        self.mem = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(backend.prefill_chunk, 0, 1)
        self.chunk = backend.prefill_chunk
        self.n_vocab = backend._n_logits

    def decode(self, tokens, pos: int, seq: int = 0, all_logits: bool = False) -> None:
        """Feed `tokens` at pos.. of `seq`, logits of the last only (of every one with
        `all_logits`, as a prompt's prefill needs); touch the last's pointer."""
        lib, batch = self.lib, self.batch
        for lo in range(0, len(tokens), self.chunk):
            part = tokens[lo: lo + self.chunk]
            batch.n_tokens = len(part)
            for i, t in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, pos + lo + i, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = all_logits or i == len(part) - 1
            rc = lib.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        lib.llama_get_logits_ith(self.ctx, len(part) - 1)[0]

    def rm(self, seq: int, p0: int, p1: int = -1) -> None:
        self.lib.llama_memory_seq_rm(self.mem, seq, p0, p1)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_append(backend, bare: Bare, engine, tokens, extra, L: int, reps: int) -> dict:
    """Per repeat, at the same position of a path growing from L tokens: the bare decode, the
    backend's step and (with `engine`) the transformers engine's step, one after another, so a
    burst of other work on the machine hits all three alike. Ratios are medians of the
    per-repeat ratios."""
    bare.rm(0, -1)
    bare.rm(1, -1)
    bare.decode(tokens[:L], 0)
    backend.prefill(tokens[:L])
    if engine is not None:
        engine.prefill(tokens[:L])
    path = list(tokens[:L])
    times = {"step": [], "bare": [], "engine": []}
    for r in range(reps + 1):  # the first is the warm-up
        t = extra[r % len(extra)]
        floor = timed(lambda: bare.decode([t], L + r))
        fed = backend.tokens_fed
        step = timed(lambda: backend.step(path, t))
        assert backend.tokens_fed - fed == 1, "an append must feed one token"
        hf = timed(lambda: engine.step(path, t)) if engine is not None else float("nan")
        path.append(t)
        if r:
            times["bare"].append(floor)
            times["step"].append(step)
            times["engine"].append(hf)
    # Step after a pop: siblings of the tip, each a new candidate after the same parent.
    pops = []
    parent = path[:-1]
    for r in range(reps + 1):
        t = extra[(r + 7) % len(extra)]
        if t == path[-1]:
            t = extra[(r + 8) % len(extra)]
        fed = backend.tokens_fed
        dt = timed(lambda: backend.step(parent, t))
        assert backend.tokens_fed - fed == 1, "a step after a pop must feed one token"
        if r:
            pops.append(dt)
    pairs = list(zip(times["step"], times["bare"], times["engine"]))
    return dict(
        step=median_ms(times["step"]), bare=median_ms(times["bare"]), pop=median_ms(pops),
        engine=median_ms(times["engine"]) if engine is not None else None,
        ratio=statistics.median(s / b for s, b, _ in pairs),
        speedup=statistics.median(e / s for s, _, e in pairs) if engine is not None else None,
        step_min=1000 * min(times["step"]), bare_min=1000 * min(times["bare"]),
    )


def bench_kv(bare: Bare, tokens, extra, L: int, reps: int) -> dict:
    """Switch from branch A to branch B (both L tokens, sharing L - TAIL) and append one token.
    Sequence 0 holds A and sequence 1 B (forked from A); each repeat puts them back untimed."""
    lib, ctx = bare.lib, bare.ctx
    fork = L - TAIL
    a, b = tokens[:L], tokens[:fork] + extra[:TAIL]
    bare.rm(0, -1)
    bare.rm(1, -1)
    bare.decode(a, 0)
    lib.llama_memory_seq_cp(bare.mem, 0, 1, 0, fork)
    bare.decode(b[fork:], fork, seq=1)
    size_b = lib.llama_state_seq_get_size(ctx, 1)
    saved_b = (ctypes.c_uint8 * size_b)()
    lib.llama_state_seq_get_data(ctx, saved_b, size_b, 1)
    size_a = lib.llama_state_seq_get_size(ctx, 0)
    saved_a = (ctypes.c_uint8 * size_a)()

    def set_state(saved, size, seq) -> None:
        bare.rm(seq, -1)
        if not lib.llama_state_seq_set_data(ctx, saved, size, seq):
            raise RuntimeError("state restore failed")

    out = {k: [] for k in ("pop", "fork", "refeed", "lines", "save", "restore")}
    for r in range(reps + 1):
        t = extra[(TAIL + r) % len(extra)]
        times = {}
        # A pop: one position removed (then put back).
        times["pop"] = timed(lambda: bare.rm(0, L - 1))
        bare.decode(a[-1:], L - 1)
        # A fork: a third sequence sharing A's first `fork` cells.
        times["fork"] = timed(lambda: lib.llama_memory_seq_cp(bare.mem, 0, 2, 0, fork))
        bare.rm(2, -1)
        # (2) tokentree's lines: B is its own sequence; the switch feeds the new token only.
        times["lines"] = timed(lambda: bare.decode([t], L, seq=1))
        bare.rm(1, L)
        # (3) state: save A's sequence, restore B's saved state into it, feed the token.
        times["save"] = timed(lambda: lib.llama_state_seq_get_data(ctx, saved_a, size_a, 0))
        times["restore"] = timed(lambda: (set_state(saved_b, size_b, 0), bare.decode([t], L, seq=0)))
        set_state(saved_a, size_a, 0)  # A again
        # (1) one sequence: remove A's tail, feed B's tail and the token.
        times["refeed"] = timed(lambda: (bare.rm(0, fork), bare.decode(b[fork:] + [t], fork)))
        bare.rm(0, fork)
        bare.decode(a[fork:], fork)  # A again
        if r:
            for k, v in times.items():
                out[k].append(v)
    result = {k: median_ms(v) for k, v in out.items()}
    result["state_mib"] = size_a / 2**20
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tests' tiny model")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--work", help="directory for the model and GGUF files (kept; reused if there)")
    parser.add_argument("--no-engine", action="store_true", help="skip the transformers engine figures")
    args = parser.parse_args(argv)
    kind = "tiny" if args.quick else "qwen2.5-0.5b-shape"
    lengths = (48, 64, 96) if args.quick else (64, 256, 1024)  # the tiny model holds 256 cells
    reps = args.reps or (5 if args.quick else 10)
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        return run(work, kind, lengths, reps, not args.no_engine)
    with tempfile.TemporaryDirectory(prefix="tokentree-llama-bench-") as tmp:
        return run(Path(tmp), kind, lengths, reps, not args.no_engine)


def run(work: Path, kind: str, lengths, reps: int, with_engine: bool) -> int:
    import torch

    from benchmarks.common import cores, machine_info
    from benchmarks.models import build_model_dir
    from gguf_model import convert
    from tokentree.lm.llama import LlamaBackend, physical_cores

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    torch.set_num_threads(cores())
    model_dir = work / "model"
    if not (model_dir / "config.json").is_file():
        t0 = time.perf_counter()
        build_model_dir(kind, model_dir)
        log(f"built {kind} in {time.perf_counter() - t0:.0f} s")
    ggufs = {}
    for outtype in ("f32", "f16"):
        path = work / f"{kind}-{outtype}.gguf"
        if not path.is_file():
            t0 = time.perf_counter()
            convert(model_dir, path, outtype)
            log(f"converted to {path.name} in {time.perf_counter() - t0:.0f} s ({path.stat().st_size / 2**20:.0f} MiB)")
        ggufs[outtype.upper()] = path

    threads = physical_cores()
    extra_n = reps + 64
    rows, kv_rows = [], []
    tokens = extra = engine = None
    if with_engine:
        from tokentree.lm.engine import Engine
        from tokentree.lm.loader import load_model

        engine = Engine(load_model(str(model_dir)))
    for quant, path in ggufs.items():
        t0 = time.perf_counter()
        backend = LlamaBackend(path, threads=threads)
        log(f"{quant}: LlamaBackend loaded in {time.perf_counter() - t0:.1f} s, {backend.threads} threads, "
            f"n_ctx {backend.n_ctx}")
        if tokens is None:
            ids = corpus(backend.encode, max(lengths) + extra_n + TAIL)
            tokens, extra = ids[: max(lengths)], ids[max(lengths):]
            if engine is not None:  # warm-up
                engine.prefill(tokens[:16])
                engine.step(tokens[:16], tokens[16])
        bare = Bare(backend)
        backend.prefill(tokens[:16])  # warm-up
        bare.decode(tokens[:16], 0)
        for L in lengths:
            log(f"{quant}: append @ {L}")
            rows.append((quant, L, bench_append(backend, bare, engine, tokens, extra, L, reps)))
            log(f"{quant}: KV reuse @ {L}")
            kv_rows.append((quant, L, bench_kv(bare, tokens, extra, L, reps)))
        bare.close()
        backend.close()

    info = machine_info()
    from importlib.metadata import version

    info["llama-cpp-python"] = version("llama-cpp-python")
    info["loadavg_end"] = os.getloadavg()
    print(f"\n## llama.cpp backend: {kind}, {threads} threads (physical cores), torch {torch.get_num_threads()} "
          f"threads, {reps} repeats\n")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "\n")
    print("| GGUF | L | LlamaBackend.step ms | bare llama_decode ms | step / bare (target <= 1.15x) | "
          "step after pop ms | Engine.step (HF f32) ms | speed-up vs Engine |")
    print("|---|---|---|---|---|---|---|---|")
    for quant, L, r in rows:
        eng = "-" if r["engine"] is None else f"{r['engine']:.1f}"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"| {quant} | {L} | {r['step']:.1f} (min {r['step_min']:.1f}) | {r['bare']:.1f} (min {r['bare_min']:.1f}) "
              f"| {r['ratio']:.3f}x | {r['pop']:.1f} | {eng} | {speed} |")
    print(f"\n### KV reuse: switch to another branch ({TAIL} tokens past the fork) and append one token\n")
    print("| GGUF | L | pop (seq_rm 1 pos) ms | fork (seq_cp) ms | (1) seq_rm + re-feed 33 tokens ms | "
          "(2) forked lines: 1 token ms | (3) state save ms | (3) state restore + 1 token ms | state MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for quant, L, k in kv_rows:
        print(f"| {quant} | {L} | {k['pop']:.3f} | {k['fork']:.3f} | {k['refeed']:.1f} | {k['lines']:.1f} | "
              f"{k['save']:.1f} | {k['restore']:.1f} | {k['state_mib']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

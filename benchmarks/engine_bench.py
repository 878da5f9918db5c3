"""Engine micro-benchmark: the step after a pop (a sibling), step + analysis, and prefill,
each against its bare Hugging Face floor, interleaved rep by rep so machine load hits all alike.

    uv run python benchmarks/engine_bench.py                       # qwen2.5-0.5b-shape, built on the spot
    uv run python benchmarks/engine_bench.py --model-dir /tmp/q05  # reuse (or build once into) a directory
    uv run python benchmarks/engine_bench.py --baseline-src DIR    # also time an older engine.py +
                                                                   # analysis.py from DIR, interleaved

Figures are medians; ratios are to the bare floor measured in the same reps.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_baseline(src: Path) -> types.ModuleType:
    """An older engine.py + analysis.py loaded side by side with the current ones."""
    spec = importlib.util.spec_from_file_location("baseline_analysis", src / "analysis.py")
    old_analysis = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old_analysis)
    sys.modules["baseline_analysis"] = old_analysis
    code = (src / "engine.py").read_text().replace(
        "from tokentree.lm import analysis", "import baseline_analysis as analysis"
    )
    module = types.ModuleType("baseline_engine")
    module.__file__ = str(src / "engine.py")
    sys.modules["baseline_engine"] = module
    exec(compile(code, module.__file__, "exec"), module.__dict__)
    return module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--baseline-src", type=Path, default=None)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prefill-len", type=int, default=1000)
    ap.add_argument("--prefill-reps", type=int, default=2)
    args = ap.parse_args(argv)

    import os

    import torch
    from transformers import DynamicCache

    from benchmarks.models import build_qwen25_05b_shape
    from tokentree.lm import Engine, load_model

    directory = args.model_dir or Path(tempfile.mkdtemp(prefix="tt-engine-bench-"))
    if not (directory / "config.json").exists():
        print(f"building the model in {directory} ...", flush=True)
        build_qwen25_05b_shape(directory)
    loaded = load_model(str(directory), device="cpu")
    model = loaded.model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}", flush=True)

    engines = {"new": Engine(loaded, top_k=64, cache_size=100)}
    if args.baseline_src:
        engines["old"] = load_baseline(args.baseline_src).Engine(loaded, top_k=64, cache_size=100)

    g = torch.Generator().manual_seed(0)
    corpus = torch.randint(1000, 100_000, (max(max(args.lengths), args.prefill_len) + 200,), generator=g).tolist()
    results: dict[str, list[float]] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        results.setdefault(name, []).append(time.perf_counter() - t0)

    def warm():
        for engine in engines.values():
            engine.prefill(corpus[:16])
            engine.step(corpus[:16], 5)
            engine.step(corpus[:15], 6)
            engine.analyze(corpus[:17], influence=True, lens_ids=[1, 2])
            if hasattr(engine, "step_with_analysis"):
                engine.step_with_analysis(corpus[:16], 7, influence=True, lens_count=8)

    with torch.inference_mode():
        warm()
        for L in args.lengths:
            prefix = corpus[:L]
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([prefix]), cache=cache, use_cache=True)
            for engine in engines.values():
                engine.prefill(prefix)
                engine.step(prefix, 11)  # the line now holds prefix + [11]
            for r in range(args.reps):
                t = corpus[L + 10 + r]

                def bare():
                    model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True)
                    cache.crop(-1)

                timed(f"bare step @{L}", bare)
                for name, engine in engines.items():
                    # a pop then another candidate: the line holds prefix + [previous sibling]
                    timed(f"{name} step after pop @{L}", lambda: engine.step(prefix, t))
                for name, engine in engines.items():
                    # a plain append on the sibling just made: the line is extended
                    timed(f"{name} step (extend) @{L}", lambda: engine.step(prefix + [t], 3))
                    engine.step(prefix, t)  # back to the sibling's parent for the next rep
                for name, engine in engines.items():
                    view = prefix + [t, 4 + r]

                    def two_calls():
                        out = engine.step(view[:-1], view[-1])
                        engine.analyze(view, influence=True, lens_ids=out.next.top_ids[:8])

                    timed(f"{name} step + analyze @{L}", two_calls)
                    if hasattr(engine, "step_with_analysis"):
                        view2 = prefix + [t, 40 + r]
                        timed(f"{name} step_with_analysis @{L}",
                              lambda: engine.step_with_analysis(view2[:-1], view2[-1], influence=True, lens_count=8))
            del cache
            print(f"  length {L} done, load {os.getloadavg()}", flush=True)

        prompt = corpus[: args.prefill_len]
        for _ in range(args.prefill_reps):
            timed(f"bare forward {args.prefill_len}", lambda: model(input_ids=torch.tensor([prompt])))
            for name, engine in engines.items():
                timed(f"{name} prefill {args.prefill_len}", lambda: engine.prefill(prompt))
        print(f"  prefill done, load {os.getloadavg()}", flush=True)

    med = {k: statistics.median(v) * 1000 for k, v in results.items()}
    print("\n| figure | median ms | min ms | n | ratio |")
    print("|---|---|---|---|---|")
    for key, value in med.items():
        if key.startswith("bare"):
            base = None
        elif "prefill" in key:
            base = med[f"bare forward {args.prefill_len}"]
        elif "analyze" in key or "with_analysis" in key:
            base = med.get(key.split(" ")[0] + f" step (extend) @{key.rsplit('@', 1)[1]}")
        else:
            base = med[f"bare step @{key.rsplit('@', 1)[1]}"]
        ratio = f"{value / base:.2f}x" if base else "-"
        print(f"| {key} | {value:.0f} | {min(results[key]) * 1000:.0f} | {len(results[key])} | {ratio} |")
    print("\nratios: steps to the bare HF one-token step; analysis figures to that engine's plain "
          "step (extend); prefill to one bare forward over the prompt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

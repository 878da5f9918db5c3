"""tokentree benchmarks: one incremental pass per new token, zero for anything seen before.

    uv run python benchmarks/run.py            # Qwen2.5-0.5B-shaped model + 1k/10k/100k-node trees
    uv run python benchmarks/run.py --quick    # tiny model + small trees, about a minute

Prints a Markdown table and (full run) writes benchmarks/results.md. Every timing is a median
over repeats, measured with time.perf_counter after a warm-up; forward passes are counted
twice, by the engine (`Engine.forward_passes`) and independently by a hook on the model's
first decoder layer. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import (  # noqa: E402
    REAL_MODEL_HEADING,
    Results,
    Target,
    cores,
    figure_row,
    get_section,
    machine_info,
    maxrss_mb,
    median,
    peak_rss_mb,
    put_section,
    reset_peak_rss,
    rss_mb,
)

HERE = Path(__file__).resolve().parent


@dataclass
class Plan:
    model: str  # "tiny" | "qwen2.5-0.5b-shape"
    lengths: tuple[int, ...]  # prefix lengths for the append figures
    prefill_len: int
    tree_sizes: tuple[int, ...]
    step_reps: int = 10  # bare steps and explorer appends per length
    sibling_reps: int = 3
    recompute_reps: tuple[int, ...] = (5, 5, 3)  # per length (last value repeats)
    prefill_reps: int = 3
    cached_reps: int = 10
    analysis_reps: int = 3
    resume_reps: int = 5  # resumes per process (the first is the cold one)
    resume_procs: int = 3  # fresh processes per tree
    export_reps: int = 3
    fill_reps: int = 3  # fills of fill_tokens (Explorer.fill) and bare-step runs, per length
    sample_reps: int = 3  # Engine.sample and sequential greedy fills, per length
    isolated: bool = True  # resume/export in fresh processes
    model_dir: str | None = None  # an existing model directory instead of building one
    feel: bool = True  # launch to first screen, and the prefetch hit rate (as a person feels them)
    first_screen_runs: int = 3
    prefetch_appends: int = 20


FULL = Plan(model="qwen2.5-0.5b-shape", lengths=(64, 256, 1024), prefill_len=1000,
            tree_sizes=(1_000, 10_000, 100_000))
QUICK = Plan(model="tiny", lengths=(64, 128, 192), prefill_len=200, tree_sizes=(1_000, 10_000),
             step_reps=10, recompute_reps=(5,), prefill_reps=5, cached_reps=10, analysis_reps=3,
             resume_procs=2, fill_reps=1, sample_reps=1)


# ------------------------------------------------------------------ model helpers


def decoder_layers(model):
    """The model's list of decoder layers (the ModuleList as long as the layer count)."""
    import torch

    n = model.config.get_text_config().num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise RuntimeError("cannot find the decoder layers to count forward passes")


class PassCounter:
    """Counts forward passes independently of the engine: calls of the first decoder layer."""

    def __init__(self, model):
        self.count = 0
        self._handle = decoder_layers(model)[0].register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1

    def close(self):
        self._handle.remove()


class Probe:
    """Times the engine's own calls (step, prefill, analyze) when the explorer makes them."""

    def __init__(self, engine, sync):
        self.samples: dict[str, list[float]] = {"step": [], "prefill": [], "analyze": [], "step_with_analysis": []}
        for name in self.samples:
            original = getattr(engine, name)
            setattr(engine, name, self._wrap(name, original, sync))

    def _wrap(self, name, fn, sync):
        def wrapped(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                self.samples[name].append(time.perf_counter() - t0)

        return wrapped


def corpus_tokens(tokenizer, n: int) -> list[int]:
    """n token ids of real text (the tests' corpus, repeated), as a prompt would be."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import CORPUS

    text = "\n".join(dict.fromkeys(CORPUS))
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(text + "\n")
    return ids[:n]


# ------------------------------------------------------------------ model benchmarks


def bench_model(res: Results, plan: Plan, work: Path, log) -> None:
    import torch

    from benchmarks.models import build_model_dir, count_parameters
    from tokentree.config import Config
    from tokentree.core.explorer import Explorer
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model
    from tokentree.sampling import describe
    from tokentree.store import Store

    torch.set_num_threads(cores())
    config = Config()
    t0 = time.perf_counter()
    model_dir = plan.model_dir or build_model_dir(plan.model, work / "model")
    build_s = time.perf_counter() - t0
    log(f"built {plan.model} in {build_s:.1f} s")
    reset_peak_rss()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    loaded = load_model(str(model_dir))
    load_s = time.perf_counter() - t0
    engine = Engine(loaded, top_k=config.top_k, cache_size=config.display.cache_size,
                    prefill_chunk=config.model.prefill_chunk)
    model = loaded.model
    counter = PassCounter(model)
    cuda = loaded.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device = torch.device(loaded.device)
    res.meta.update(
        model=plan.model, model_params=count_parameters(model), device=loaded.device, dtype=loaded.dtype,
        torch_threads=torch.get_num_threads(), attn_implementation=model.config._attn_implementation,
        model_build_s=round(build_s, 2), model_load_s=round(load_s, 2),
    )
    res.add("memory", "model loaded (RSS growth)", rss_mb() - rss0, "MiB", note=f"load_model {load_s:.1f} s")
    log(f"loaded through load_model in {load_s:.1f} s: {res.meta['model_params'] / 1e6:.0f}M parameters "
        f"on {loaded.device}, {torch.get_num_threads()} threads")

    ctx = loaded.context_length or 10**9
    fill = config.explore.fill_tokens
    need = max(max(plan.lengths) + plan.step_reps + plan.sibling_reps + plan.analysis_reps + 8
               + fill * (plan.fill_reps + 1), plan.prefill_len + 1)
    if need > ctx:
        raise SystemExit(f"the model's context ({ctx}) is too short for this plan (needs {need})")
    tokens = corpus_tokens(loaded.tokenizer, max(max(plan.lengths), plan.prefill_len) + 64)
    extra = tokens[-64:]  # tokens appended in the bare and recompute baselines

    def tensor(ids):
        return torch.tensor([list(ids)], device=device)

    def forward(ids, **kw):
        return model(input_ids=tensor(ids), **kw)

    # Warm up every code path once on a short input (allocator, attention kernels, eager switch).
    with torch.inference_mode():
        forward(tokens[:16])
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        forward(tokens[:16], cache=cache, use_cache=True)
        forward(tokens[16:17], cache=cache, use_cache=True)
    engine.prefill(tokens[:16])
    engine.step(tokens[:16], tokens[16])
    engine.analyze(tokens[:17], influence=True, lens_ids=tokens[:8])
    engine.step(tokens[:17], tokens[17])

    store = Store.open(work / "model-bench.db")
    sid = store.start_session(model_name=loaded.name, fingerprint=loaded.fingerprint,
                              vocab_key=loaded.vocab_key, prompt_sources=["benchmark"])
    probe = Probe(engine, sync)
    explorer = None
    reset_peak_rss()

    def passes():
        return engine.forward_passes, counter.count

    def key_to_data(action):
        """One key press: the command, the model work it needs (inline), the next screen."""
        before = passes()
        t0 = time.perf_counter()
        action()
        explorer.run_jobs_inline()
        snap = explorer.snapshot()
        dt = time.perf_counter() - t0
        after = passes()
        if snap.waiting or explorer.error:
            raise RuntimeError(f"no data after a key press: {explorer.error or 'still waiting'}")
        return dt, (after[0] - before[0], after[1] - before[1]), snap

    def check_counts(label, got: list[tuple[int, int]], expected: int, calls: int | None = None):
        """`expected` passes as the engine counts them; the hook counts model calls, which are
        `calls` (default: one per pass; a prefill is one pass in ceil(n / chunk) calls)."""
        calls = expected if calls is None else calls
        engine_counts = sorted({g[0] for g in got})
        hook_counts = sorted({g[1] for g in got})
        ok = engine_counts == [expected] and hook_counts == [calls]
        res.raw.setdefault("pass_counts", {})[label] = {
            "engine": [g[0] for g in got], "hook": [g[1] for g in got], "expected": expected, "calls": calls, "ok": ok,
        }
        if not ok:
            log(f"WARNING: {label}: forward passes engine={engine_counts} hook={hook_counts}, "
                f"expected {expected} ({calls} model calls)")
        return got[0][0] if len(engine_counts) == 1 else median([g[0] for g in got])

    def bench_fill(L):
        """A fill of `fill_tokens` through the explorer (f, key to data) vs as many bare HF
        steps growing a cache, at the same lengths, interleaved."""
        log(f"prefix {L}: fill of {fill} tokens (Explorer.fill) vs {fill} bare steps, x{plan.fill_reps}")
        snap = explorer.snapshot()
        path = [t.token_id for t in snap.prompt]
        with torch.inference_mode():  # the bare cache holds the explorer's path (not timed)
            cache = DynamicCache(config=model.config)
            forward(path, cache=cache, use_cache=True)
        bare, k2d, counts = [], [], []
        for r in range(plan.fill_reps):
            with torch.inference_mode():
                sync()
                t0 = time.perf_counter()
                for i in range(fill):
                    model(input_ids=tensor(extra[(r * fill + i) % len(extra):][:1]), cache=cache, use_cache=True)
                sync()
                bare.append(time.perf_counter() - t0)
            before = passes()
            t0 = time.perf_counter()
            explorer.features.fill.start()  # f: the top candidate fill_tokens times, each step as it arrives
            explorer.run_jobs_inline()
            snap = explorer.snapshot()
            k2d.append(time.perf_counter() - t0)
            after = passes()
            counts.append((after[0] - before[0], after[1] - before[1]))
        del cache
        fill_passes = check_counts(f"fill {fill} @ {L}", counts, fill)
        bare_ms, k2d_ms = median(bare) * 1000, median(k2d) * 1000
        res.add("fill", f"{fill} bare HF steps @ {L}", bare_ms, "ms", n=len(bare), low=min(bare) * 1000,
                passes=fill, note="model(input_ids=[[t]], cache=DynamicCache) x fill_tokens, the cache growing")
        res.add("fill", f"fill of {fill} tokens, key to data @ {L}", k2d_ms, "ms", n=len(k2d), low=min(k2d) * 1000,
                baseline=f"{fill} bare HF steps", ratio=k2d_ms / bare_ms, passes=fill_passes,
                note="Explorer.fill (f) to the end, then the screen: every step's command, store and output")
        res.raw.setdefault("samples_ms", {})[f"fill_bare@{L}"] = [x * 1000 for x in bare]
        res.raw["samples_ms"][f"fill_k2d@{L}"] = [x * 1000 for x in k2d]

    def bench_sample(L):
        """Engine.sample of sample_count x fill_tokens (one batched call per step) vs as many
        sequential Engine.step greedy fills from the same node, interleaved."""
        count, settings = config.explore.sample_count, config.sampling
        log(f"prefix {L}: Engine.sample {count} x {fill} vs {count} x {fill} sequential steps, x{plan.sample_reps}")
        path = [t.token_id for t in explorer.snapshot().prompt]
        first = engine.step(path[:-1], path[-1]).next.top_ids[:count]  # also: the prefix's logits are kept
        seq, smp, seq_counts, smp_counts = [], [], [], []
        for r in range(plan.sample_reps):
            before = passes()
            sync()
            t0 = time.perf_counter()
            for j in range(count):  # fill j starts with the j-th candidate, then the top one
                tokens, token = list(path), first[j]
                for _ in range(fill):
                    out = engine.step(tokens, token)
                    tokens.append(token)
                    token = out.next.top_ids[0]
            sync()
            seq.append(time.perf_counter() - t0)
            after = passes()
            seq_counts.append((after[0] - before[0], after[1] - before[1]))
            before = passes()
            sync()
            t0 = time.perf_counter()
            drawn = engine.sample(path, count=count, steps=fill, settings=settings, seed=r, stop_ids=frozenset())
            sync()
            smp.append(time.perf_counter() - t0)
            after = passes()
            smp_counts.append((after[0] - before[0], after[1] - before[1]))
            assert [len(c) for c in drawn] == [fill] * count
        seq_passes = check_counts(f"sequential steps {count}x{fill} @ {L}", seq_counts, count * fill)
        smp_passes = check_counts(f"Engine.sample {count}x{fill} @ {L}", smp_counts, fill)
        seq_ms, smp_ms = median(seq) * 1000, median(smp) * 1000
        res.add("sample", f"{count} x {fill} sequential Engine.step (greedy fills) @ {L}", seq_ms, "ms",
                n=len(seq), low=min(seq) * 1000, passes=seq_passes,
                note=f"{count} fills from the same node, each its own step per token")
        res.add("sample", f"Engine.sample {count} x {fill} @ {L}", smp_ms, "ms", n=len(smp), low=min(smp) * 1000,
                baseline=f"{count} x {fill} sequential Engine.step", ratio=smp_ms / seq_ms, passes=smp_passes,
                note=f"one batched call per step ({count} rows on the prefix's cache); {describe(settings)}, "
                     "no stop ids; NodeOutput for every drawn token")
        res.raw.setdefault("samples_ms", {})[f"sample_seq@{L}"] = [x * 1000 for x in seq]
        res.raw["samples_ms"][f"sample@{L}"] = [x * 1000 for x in smp]

    for li, L in enumerate(plan.lengths):
        rec_reps = plan.recompute_reps[min(li, len(plan.recompute_reps) - 1)]
        prefix = tokens[:L]
        log(f"prefix {L}: opening the prompt through the explorer")
        # --- a new prompt through the explorer: create_branch (store) + prefill (one pass)
        t0 = time.perf_counter()
        store.create_branch(sid, prefix, source=f"prefix-{L}", name=f"p{L}")
        create_s = time.perf_counter() - t0
        if explorer is None:
            explorer = Explorer(store, sid, config=config, layer_prob=True, model_name=loaded.name, engine=engine)
        n_pre = len(probe.samples["prefill"])
        dt, got, _ = key_to_data(lambda: None)
        open_passes = check_counts(f"open prompt {L}", [got], 1, calls=-(-L // engine.prefill_chunk))
        res.add("open prompt", f"new prompt of {L} tokens: create_branch (store)", create_s * 1000, "ms")
        res.add("open prompt", f"new prompt of {L} tokens: prefill + store + screen", dt * 1000, "ms",
                passes=open_passes,
                note=f"engine prefill {probe.samples['prefill'][n_pre] * 1000:.0f} ms of it")

        # --- bare step (HF forward with a DynamicCache, one token, no tokentree code),
        # interleaved with explorer appends along a chain (right arrow on the top candidate),
        # so that both see the same machine load.
        log(f"prefix {L}: bare steps and explorer appends, interleaved")
        bare, k2d, counts = [], [], []
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            forward(prefix, cache=cache, use_cache=True)

        def bare_step(r):
            with torch.inference_mode():
                tok = tensor(extra[r % len(extra):][:1])
                sync()
                t0 = time.perf_counter()
                model(input_ids=tok, cache=cache, use_cache=True)
                sync()
                dt = time.perf_counter() - t0
                cache.crop(-1)
            return dt

        def recompute(r):
            # Token Explorer's way: a full pass over the whole prefix per key press. Only the
            # last position's logits are asked for (logits_to_keep=1), so the LM head runs on
            # one row, not L: the baseline is not inflated by work nobody reads.
            keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
            with torch.inference_mode():
                ids = prefix + [extra[r % len(extra)]]
                sync()
                t0 = time.perf_counter()
                forward(ids, **keep)
                sync()
                return time.perf_counter() - t0

        bare_step(0)  # warm-up at this length
        key_to_data(explorer.append)
        n_step = len(probe.samples["step"])
        rec = []
        log(f"prefix {L}: bare steps, explorer appends and {rec_reps} recomputes, interleaved")
        for r in range(plan.step_reps):
            bare.append(bare_step(r + 1))
            dt, got, snap = key_to_data(explorer.append)
            k2d.append(dt)
            counts.append(got)
            if r < rec_reps:  # interleaved: the same machine load as the step it is compared with
                rec.append(recompute(r))
        del cache
        bare_ms = median(bare) * 1000
        res.add("append (uncached)", f"bare HF step @ {L}", bare_ms, "ms", n=len(bare), passes=1,
                low=min(bare) * 1000, note="model(input_ids=[[t]], cache=DynamicCache)")
        step_passes = check_counts(f"append {L}", counts, 1)
        step_s = probe.samples["step"][n_step:]
        step_ms = median(step_s) * 1000
        res.add("append (uncached)", f"tokentree Engine.step @ {L}", step_ms, "ms", n=len(step_s),
                low=min(step_s) * 1000, baseline="bare HF step", ratio=step_ms / bare_ms, passes=step_passes)
        k2d_ms = median(k2d) * 1000
        res.add("append (uncached)", f"explorer append, key to data @ {L}", k2d_ms, "ms", n=len(k2d),
                low=min(k2d) * 1000, baseline="bare HF step", ratio=k2d_ms / bare_ms, passes=step_passes,
                note="command + store + step + put_outputs + snapshot")
        res.raw.setdefault("samples_ms", {})[f"bare@{L}"] = [x * 1000 for x in bare]
        res.raw["samples_ms"][f"step@{L}"] = [x * 1000 for x in step_s]
        res.raw["samples_ms"][f"append_k2d@{L}"] = [x * 1000 for x in k2d]
        rec_ms = median(rec) * 1000
        res.add("append (uncached)", f"recompute (full pass) @ {L}", rec_ms, "ms", n=len(rec), low=min(rec) * 1000,
                baseline="tokentree Engine.step (speed-up)", ratio=rec_ms / step_ms, passes=1,
                note="Token Explorer: model(input_ids=prefix + [t], logits_to_keep=1), interleaved with the steps")
        res.raw["samples_ms"][f"recompute@{L}"] = [x * 1000 for x in rec]

        # --- after a pop: another candidate at the same node (a sibling)
        sib, sib_counts, pops = [], [], []
        n_step = len(probe.samples["step"])
        for _ in range(plan.sibling_reps):
            dt, got, snap = key_to_data(explorer.pop)
            pops.append(got)
            unexplored = next(i for i, row in enumerate(snap.candidates) if not row.explored)
            explorer.cursor(unexplored - snap.selected)
            dt, got, snap = key_to_data(explorer.append)
            sib.append(dt)
            sib_counts.append(got)
        check_counts(f"pop before sibling {L}", pops, 0)
        sib_passes = check_counts(f"sibling append {L}", sib_counts, 1)
        sib_engine = probe.samples["step"][n_step:]
        res.add("append (uncached)", f"Engine.step after a pop (sibling) @ {L}", median(sib_engine) * 1000, "ms",
                n=len(sib_engine), low=min(sib_engine) * 1000, baseline="bare HF step", ratio=median(sib_engine) * 1000 / bare_ms,
                passes=sib_passes, note="pop, pick another candidate, append: the parent's kept logits let it feed one token")


        # --- cached nodes: pop back and re-append along the explored path
        log(f"prefix {L}: cached pops and appends")
        pop_t, pop_c, app_t, app_c = [], [], [], []
        for _ in range(plan.cached_reps):
            dt, got, snap = key_to_data(explorer.pop)
            pop_t.append(dt)
            pop_c.append(got)
            if snap.status.origin != "cache":
                log(f"WARNING: a popped node did not come from the cache ({snap.status.origin})")
        for _ in range(plan.cached_reps):
            dt, got, snap = key_to_data(explorer.append)  # the popped token is selected: follow it
            app_t.append(dt)
            app_c.append(got)
        pop_passes = check_counts(f"cached pop {L}", pop_c, 0)
        app_passes = check_counts(f"cached append {L}", app_c, 0)
        res.add("cached node", f"pop, key to data @ {L}", median(pop_t) * 1000, "ms", n=len(pop_t),
                low=min(pop_t) * 1000,
                passes=pop_passes)
        res.add("cached node", f"append (explored child), key to data @ {L}", median(app_t) * 1000, "ms",
                n=len(app_t), low=min(app_t) * 1000, passes=app_passes)
        res.raw["samples_ms"][f"cached_pop@{L}"] = [x * 1000 for x in pop_t]
        res.raw["samples_ms"][f"cached_append@{L}"] = [x * 1000 for x in app_t]

        # --- analysis views: --layer_prob (layer view) and the influence view
        log(f"prefix {L}: appends with influence + layer probabilities")
        while explorer.prompt_view != "influence":
            explorer.features.views.cycle_prompt_view()
        while explorer.layer_view != "layer":
            explorer.features.views.cycle_layer_view()
        key_to_data(lambda: None)  # the analysis of the current node (and warm-up of eager attention)
        n_swa, n_an = len(probe.samples["step_with_analysis"]), len(probe.samples["analyze"])
        an_t, an_c = [], []
        for _ in range(plan.analysis_reps):
            dt, got, snap = key_to_data(explorer.append)
            an_t.append(dt)
            an_c.append(got)
            if snap.view_pending:
                log("WARNING: the analysis view is still pending after the jobs ran")
        # The new node's step gives its analysis too: Engine.step_with_analysis, ONE pass.
        an_passes = check_counts(f"append with analysis {L}", an_c, 1)
        an_swa = probe.samples["step_with_analysis"][n_swa:]
        an_extra = len(probe.samples["analyze"]) - n_an
        an_ms = median(an_t) * 1000
        res.add("analysis views", f"append + influence + layer probs, key to data @ {L}", an_ms, "ms",
                n=len(an_t), low=min(an_t) * 1000, baseline="plain explorer append", ratio=an_ms / k2d_ms, passes=an_passes)
        res.add("analysis views", f"Engine.step_with_analysis @ {L}", median(an_swa) * 1000, "ms", n=len(an_swa),
                baseline="Engine.step", ratio=median(an_swa) * 1000 / step_ms, passes=an_passes,
                note=f"step + influence + logit lens in one pass; separate analyze calls: {an_extra}")
        while explorer.prompt_view != "plain":
            explorer.features.views.cycle_prompt_view()
        while explorer.layer_view != "off":
            explorer.features.views.cycle_layer_view()

        bench_fill(L)
        bench_sample(L)

    res.add("memory", "peak RSS during appends and views", peak_rss_mb(), "MiB",
            note="process peak (VmHWM) since the model was loaded")

    # --- prefill of a long prompt vs one bare forward pass over the same tokens
    log(f"prefill {plan.prefill_len} tokens x{plan.prefill_reps}, interleaved with bare passes")
    reset_peak_rss()
    prompt = tokens[: plan.prefill_len]
    bare_pf, tt_pf, counts = [], [], []
    for _ in range(plan.prefill_reps):
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            forward(prompt)
            sync()
            bare_pf.append(time.perf_counter() - t0)
        before = passes()
        t0 = time.perf_counter()
        outs = engine.prefill(prompt)
        tt_pf.append(time.perf_counter() - t0)
        after = passes()
        counts.append((after[0] - before[0], after[1] - before[1]))
        assert len(outs) == len(prompt)
    pf_calls = -(-len(prompt) // engine.prefill_chunk)
    pf_passes = check_counts(f"prefill {plan.prefill_len}", counts, 1, calls=pf_calls)
    bare_pf_s, tt_pf_s = median(bare_pf), median(tt_pf)
    res.add("prefill", f"bare HF forward over {plan.prefill_len} tokens", bare_pf_s * 1000, "ms",
            n=len(bare_pf), low=min(bare_pf) * 1000, passes=1, note="model(input_ids=prompt): logits at every position")
    res.add("prefill", f"tokentree Engine.prefill of {plan.prefill_len} tokens", tt_pf_s * 1000, "ms",
            n=len(tt_pf), low=min(tt_pf) * 1000, baseline="one bare forward pass", ratio=tt_pf_s / bare_pf_s, passes=pf_passes,
            note=f"{len(prompt)} NodeOutputs (top-{config.top_k} per position); one pass in {pf_calls} "
                 f"chunks of {engine.prefill_chunk} tokens")
    res.add("memory", f"peak RSS during the {plan.prefill_len}-token prefill", peak_rss_mb(), "MiB")
    res.raw["samples_ms"]["bare_prefill"] = [x * 1000 for x in bare_pf]
    res.raw["samples_ms"]["tokentree_prefill"] = [x * 1000 for x in tt_pf]
    if cuda:
        res.add("memory", "torch CUDA peak allocated", torch.cuda.max_memory_allocated() / 2**20, "MiB")

    # bytes per cached node, real outputs of this model
    n_out = store.session_nodes(sid)
    store.close()
    from benchmarks.trees import checkpoint, table_bytes

    checkpoint(work / "model-bench.db")
    tb = table_bytes(work / "model-bench.db")
    if tb and n_out:
        out_bytes = sum(v for k, v in tb.items() if "node_outputs" in k)
        res.add("storage", "cached output per node (this model's real outputs)", out_bytes / len(n_out), "B",
                n=len(n_out), note="node_outputs table + its index, sqlite dbstat")
    counter.close()
    res.meta["engine_forward_passes_total"] = engine.forward_passes


# ------------------------------------------------------------------ stored trees


def bench_trees(res: Results, plan: Plan, work: Path, log) -> None:
    from benchmarks.trees import build_tree, measure_isolated, measure_resume_export, summarize, test_tokenizer_pieces

    vocab = test_tokenizer_pieces()
    for n in plan.tree_sizes:
        log(f"tree of {n} nodes: building through the Store API")
        info = build_tree(work / f"tree-{n}.db", n, vocab=vocab, log=log)
        log(f"tree of {n} nodes: resume and export")
        if plan.isolated:
            m = measure_isolated(info.path, info.session_id, processes=plan.resume_procs, repeats=plan.resume_reps,
                                 export_repeats=plan.export_reps, pycache=str(work / "pycache"))
        else:
            m = summarize([measure_resume_export(info.path, info.session_id, repeats=plan.resume_reps,
                                                 export_repeats=plan.export_reps)])
        label = f"{info.nodes:,} nodes, {info.branches} branches"
        where = f"{m['processes']} fresh processes" if plan.isolated else "in-process"
        res.add("stored trees", f"resume to first screen (fresh process), {label}", m["resume_first_s"] * 1000, "ms",
                n=m["processes"], low=min(m["resume_first_all_s"]) * 1000,
                note=f"open + Explorer + snapshot, no model; {where}; imports ({m['import_s']:.2f} s) not included")
        res.add("stored trees", f"resume again in the same process, {label}", m["resume_warm_s"] * 1000, "ms",
                n=m["resume_warm_n"])
        res.add("stored trees", f"tree pane (snapshot with_tree), {label}", m["tree_pane_s"] * 1000, "ms")
        res.add("stored trees", f"text export, {label}", m["export_median_s"] * 1000, "ms",
                n=m["export_n"], note=f"export_session(..., 'text'): {m['export_lines']} lines, "
                f"{m['export_bytes'] / 1024:.0f} KiB; first in a process {m['export_first_s'] * 1000:.0f} ms")
        if m["key_pop_s"] is not None:
            res.add("stored trees", f"cached pop, key to data, {label}", m["key_pop_s"] * 1000, "ms",
                    n=m["key_n"], passes=m["key_model_calls"], note="no model; 50 branches in the branch list")
            res.add("stored trees", f"cached append, key to data, {label}", m["key_append_s"] * 1000, "ms",
                    n=m["key_n"], passes=m["key_model_calls"])
        res.add("stored trees", f"bytes per cached node, {label}", info.db_bytes_per_node, "B",
                note=f"whole file / nodes; the cached outputs alone {info.outputs_bytes_per_node:.0f} B")
        res.add("stored trees", f"peak RSS of resume + export, {label}", m["peak_rss_mb"], "MiB", note=where)
        res.add("stored trees", f"build through the Store API, {label}", info.build_s + info.outputs_s, "s",
                note=f"{info.explorations} create_branch, then removals; put_outputs {info.outputs_s:.1f} s")
        res.raw.setdefault("trees", {})[n] = {"info": asdict(info), "measure": m}


# ------------------------------------------------------------------ targets and output


def _margin(value: float, goal: float, lower_is_better: bool = True) -> str:
    if lower_is_better:
        return f"{goal / value:.1f}x under" if value <= goal else f"{value / goal:.2f}x over"
    return f"{value / goal:.1f}x the goal" if value >= goal else f"{goal / value:.2f}x short"


def evaluate_targets(res: Results, plan: Plan) -> None:
    L = max(plan.lengths)
    step = res.figure("append (uncached)", f"tokentree Engine.step @ {L}")
    rec = res.figure("append (uncached)", f"recompute (full pass) @ {L}")
    if step:
        res.targets.append(Target(f"step @ {L} vs bare step", "<= 1.15x", f"{step.ratio:.2f}x",
                                  step.ratio <= 1.15, _margin(step.ratio, 1.15)))
    if rec:
        res.targets.append(Target(f"step @ {L} vs recompute", ">= 10x faster", f"{rec.ratio:.1f}x faster",
                                  rec.ratio >= 10, _margin(rec.ratio, 10, lower_is_better=False)))

    def at_max(section: str, prefix: str):
        return next((f for f in res.figures if f.section == section and f.name.startswith(prefix)
                     and f.name.endswith(f"@ {L}")), None)

    fill = at_max("fill", "fill of ")
    if fill:
        res.targets.append(Target(f"{fill.name.split(',')[0]} @ {L} vs {fill.baseline}", "<= 1.15x",
                                  f"{fill.ratio:.2f}x (Explorer.fill)", fill.ratio <= 1.15,
                                  _margin(fill.ratio, 1.15)))
    sample = at_max("sample", "Engine.sample ")
    if sample:
        res.targets.append(Target(f"{sample.name} vs {sample.baseline}", "<= 0.5x", f"{sample.ratio:.2f}x",
                                  sample.ratio <= 0.5, _margin(sample.ratio, 0.5)))
    cached = [f for f in res.figures if f.section == "cached node"]
    if cached:
        worst = max(cached, key=lambda f: f.value)
        zero = all(f.passes == 0 for f in cached)
        res.targets.append(Target("cached node shown", "< 5 ms, 0 passes",
                                  f"worst median {worst.value:.1f} ms ({worst.name}); passes "
                                  f"{'0' if zero else 'NOT 0'}", worst.value < 5 and zero,
                                  _margin(worst.value, 5)))
    pf = res.figure("prefill", f"tokentree Engine.prefill of {plan.prefill_len} tokens")
    if pf:
        res.targets.append(Target(f"prefill of {plan.prefill_len} tokens vs one bare pass", "<= 1.2x, 1 pass",
                                  f"{pf.ratio:.2f}x, {pf.passes:g} pass", pf.ratio <= 1.2 and pf.passes == 1,
                                  _margin(pf.ratio, 1.2)))
    if plan.tree_sizes:
        n = max(plan.tree_sizes)
        trees = res.raw.get("trees", {}).get(n)
        if trees:
            m, info = trees["measure"], trees["info"]
            resume = m["resume_first_s"]
            res.targets.append(Target(f"resume of {info['nodes']:,}-node session", "< 1 s",
                                      f"{resume:.2f} s (fresh process; {m['resume_warm_s']:.2f} s warm)",
                                      resume < 1, _margin(resume, 1)))
            export = m["export_median_s"]
            res.targets.append(Target(f"text export of {info['nodes']:,}-node session", "< 3 s",
                                      f"{export:.2f} s", export < 3, _margin(export, 3)))
            if m.get("key_pop_s") is not None:
                worst = max(m["key_pop_s"], m["key_append_s"]) * 1000
                res.targets.append(Target(f"cached node in the {info['nodes']:,}-node, {info['branches']}-branch session",
                                          "< 5 ms, 0 passes", f"worst median {worst:.0f} ms; model calls "
                                          f"{m['key_model_calls']}", worst < 5 and m["key_model_calls"] == 0,
                                          _margin(worst, 5)))
            per = info["db_bytes_per_node"]
            res.targets.append(Target("bytes per cached node", "< 1 KB (1,024 B)",
                                      f"{per:.0f} B whole file ({info['outputs_bytes_per_node']:.0f} B outputs)",
                                      per < 1024, _margin(per, 1024)))


def render(res: Results, plan: Plan, wall_s: float) -> str:
    m = res.meta
    lines = [
        "# tokentree benchmark results",
        "",
        f"- date: {m.get('date')}; run took {wall_s / 60:.1f} min ({'--quick' if plan.model == 'tiny' else 'full'} run)",
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB RAM; {m.get('platform')}",
        f"- load average at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')} "
        "(other work on the machine makes timings noisier)",
        f"- versions: Python {m.get('python')}, torch {m.get('torch')}, transformers {m.get('transformers')}, "
        f"SQLAlchemy {m.get('sqlalchemy')}, SQLite {m.get('sqlite')}, tokentree {m.get('tokentree')}",
    ]
    if "model" in m:
        lines.append(
            f"- model: {m['model']} ({m['model_params'] / 1e6:.0f}M parameters, random weights), {m['device']}, "
            f"{m['dtype']}, {m['torch_threads']} torch threads, attention {m['attn_implementation']}; "
            f"built in {m['model_build_s']} s, load_model {m['model_load_s']} s"
        )
    for err in m.get("errors", []):
        lines.append(f"- **ERROR** (that section is incomplete): {err}")
    lines += ["", "## Targets", "", "| target | goal | measured | met | margin |", "|---|---|---|---|---|"]
    for t in res.targets:
        met = "yes" if t.met else "**NO**" if t.met is not None else "-"
        lines.append(f"| {t.name} | {t.goal} | {t.measured} | {met} | {t.margin} |")
    lines += ["", "## Figures", "",
              "Medians over `n` repeats. `passes`: forward passes per operation, counted by the engine and "
              "by a hook on the first decoder layer.", "",
              "| section | figure | median | min | n | ratio | to | passes | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [figure_row(f) for f in res.figures]
    counts = res.raw.get("pass_counts", {})
    if counts:
        bad = [k for k, v in counts.items() if not v["ok"]]
        lines += ["", f"Forward-pass counts checked for {len(counts)} operations: "
                  + ("all as claimed." if not bad else "MISMATCH in " + ", ".join(bad) + ".")]
    lines.append(f"\nProcess peak RSS (getrusage maxrss) over the whole run: {maxrss_mb():.0f} MiB.")
    return "\n".join(lines) + "\n"


def bench_feel(res: Results, plan: Plan, work: Path, log) -> None:
    """Launch to first screen (the real command in a pty, tiny model: what it measures is
    imports and start-up, not the model) and the prefetch hit rate on the plan's model."""
    from benchmarks.first_screen import _tiny_model, measure
    from benchmarks.models import build_model_dir
    from benchmarks.server_prefetch import scripted_session
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model

    tiny = _tiny_model(work / "feel")
    for quick, label in ((False, "load first (before)"), (True, "prompt first (now)")):
        log(f"first screen: {label} x{plan.first_screen_runs}")
        times = measure(tiny, plan.first_screen_runs, work / f"feel-{quick}", quick=quick)
        res.add("first screen", f"launch to prompt on screen, {label}", median(times["prompt"]), "s",
                n=len(times["prompt"]), low=min(times["prompt"]), note="tiny model, real command in a pty")
        res.add("first screen", f"launch to candidate table, {label}", median(times["table"]), "s",
                n=len(times["table"]), low=min(times["table"]))

    model_dir = plan.model_dir or build_model_dir(plan.model, work / "feel-model")
    engine = Engine(load_model(str(model_dir)), top_k=64)
    prefix = engine.encode("Once upon a time, in a small village by the sea, there lived")
    engine.prefill(prefix)
    steps = []
    for r in range(3):
        t0 = time.perf_counter()
        engine.step(prefix, 10 + r)
        steps.append(time.perf_counter() - t0)
    pause = 2 * median(steps)
    for count in (0, 4):
        log(f"prefetch {count}: {plan.prefetch_appends} appends, {pause * 1000:.0f} ms pause before each")
        got = scripted_session(engine, plan.prefetch_appends, pause, count, work / f"prefetch-{count}.db")
        res.add("prefetch", f"appends shown < 10 ms, prefetch {count}", got["hit_rate"] * 100, "%",
                n=plan.prefetch_appends, note=f"pause {pause * 1000:.0f} ms (2 step times) before each append; "
                f"median key to data {got['median_ms']:.1f} ms; {got['steps_per_append']:.2f} steps per append "
                "(the extra compute)")


def run(plan: Plan, *, work: Path | None = None, log=print, keep_going: bool = False) -> tuple[Results, float]:
    t_start = time.perf_counter()
    res = Results(meta=machine_info())
    with tempfile.TemporaryDirectory(prefix="tokentree-bench-") as tmp:
        work = Path(work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TOKENTREE_HOME", str(work / "home"))
        for name, section, wanted in (("model", bench_model, plan.model), ("trees", bench_trees, plan.tree_sizes),
                                      ("feel", bench_feel, plan.feel and plan.model)):
            if not wanted:
                continue
            try:
                section(res, plan, work, log)
            except Exception as exc:  # keep what was measured; say what failed
                if not keep_going:
                    raise
                import traceback

                log(f"ERROR in the {name} benchmarks: {exc!r}\n{traceback.format_exc()}")
                res.meta.setdefault("errors", []).append(f"{name}: {exc!r}")
    try:
        res.meta["loadavg_end"] = tuple(round(x, 2) for x in os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    evaluate_targets(res, plan)
    return res, time.perf_counter() - t_start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tokentree benchmarks (see benchmarks/README.md)")
    parser.add_argument("--quick", action="store_true", help="tiny model, small trees: about a minute")
    parser.add_argument("--model", choices=("tiny", "qwen2.5-0.5b-shape"), help="override the plan's model")
    parser.add_argument("--lengths", help="comma-separated prefix lengths, e.g. 64,256,1024")
    parser.add_argument("--trees", help="comma-separated tree sizes, e.g. 1000,10000 (0: none)")
    parser.add_argument("--no-model", action="store_true", help="only the stored-tree figures")
    parser.add_argument("--out", help="Markdown file to write (default: benchmarks/results.md for a full run; "
                                      "a --quick run writes none unless given)")
    parser.add_argument("--json", help="also write every figure and sample as JSON here")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    if args.model:
        plan.model = args.model
    if args.no_model:
        plan.model = ""
    if args.lengths:
        plan.lengths = tuple(int(x) for x in args.lengths.split(","))
    if args.trees:
        plan.tree_sizes = tuple(int(x) for x in args.trees.split(",") if int(x) > 0)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    res, wall = run(plan, log=log, keep_going=True)
    text = render(res, plan, wall)
    print(text)
    out = args.out or (None if args.quick else str(HERE / "results.md"))
    if out:
        path = Path(out)
        # The real model's section (benchmarks/real_model.py --write) comes from another run: keep it.
        kept = get_section(path.read_text(encoding="utf-8"), REAL_MODEL_HEADING) if path.is_file() else ""
        path.write_text(put_section(text, kept) if kept else text, encoding="utf-8")
        log(f"wrote {out}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": res.meta, "figures": [asdict(f) for f in res.figures],
                                               "targets": [asdict(t) for t in res.targets], "raw": res.raw},
                                              indent=1, default=str), encoding="utf-8")
    log(f"done in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark script runs end to end on the tiny model and its forward-pass counts are as
tokentree claims (prefill = 1, an uncached step = 1, with its analysis = 1, a cached node = 0). Counts, not timings:
nothing here depends on how fast the machine is."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import Plan, render, run  # noqa: E402


def test_quick_benchmark_structure_and_pass_counts(tiny_model, tmp_path):
    plan = Plan(
        model="tiny", model_dir=str(tiny_model), lengths=(8, 16), prefill_len=24, tree_sizes=(150,),
        step_reps=2, sibling_reps=1, recompute_reps=(1,), prefill_reps=1, cached_reps=2, analysis_reps=1,
        resume_reps=2, resume_procs=1, export_reps=1, isolated=False, feel=False,  # feel: a pty launch each
    )
    res, wall = run(plan, work=tmp_path / "work", log=lambda msg: None)

    counts = res.raw["pass_counts"]
    assert counts, "forward passes were counted"
    bad = {label: c for label, c in counts.items() if not c["ok"]}
    assert not bad, f"forward passes not as claimed: {bad}"

    def fig(section, name):
        f = res.figure(section, name)
        assert f is not None, f"missing figure {section} / {name}"
        return f

    assert fig("prefill", "tokentree Engine.prefill of 24 tokens").passes == 1
    for L in plan.lengths:
        assert fig("open prompt", f"new prompt of {L} tokens: prefill + store + screen").passes == 1
        assert fig("append (uncached)", f"tokentree Engine.step @ {L}").passes == 1
        assert fig("append (uncached)", f"explorer append, key to data @ {L}").passes == 1
        assert fig("append (uncached)", f"Engine.step after a pop (sibling) @ {L}").passes == 1
        assert fig("cached node", f"pop, key to data @ {L}").passes == 0
        assert fig("cached node", f"append (explored child), key to data @ {L}").passes == 0
        assert fig("analysis views", f"append + influence + layer probs, key to data @ {L}").passes == 1
        assert fig("append (uncached)", f"recompute (full pass) @ {L}").ratio > 0

    trees = res.raw["trees"][150]
    assert trees["info"]["nodes"] == 150
    assert trees["measure"]["first_screen"]["waiting"] is False  # the first screen comes from the cache
    assert [f for f in res.figures if f.section == "stored trees" and f.name.startswith("text export")]
    assert all(f.value is not None and f.value >= 0 for f in res.figures)

    names = [t.name for t in res.targets]
    assert any(n.startswith("step @ 16 vs bare") for n in names)
    assert any(n.startswith("prefill of 24 tokens") for n in names)
    assert any(n.startswith("resume of 150-node") for n in names)
    assert "cached node shown" in names and "bytes per cached node" in names

    text = render(res, plan, wall)
    assert "| section | figure | median |" in text and "## Targets" in text
    assert "all as claimed" in text

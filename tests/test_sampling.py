"""`tokentree.sampling.survivors` (from a node's cached top-K) against Hugging Face's own logits
warpers applied to a whole distribution in float64, and its exactness flag against every way
the unknown tail could be shaped; the engine's torch sampler against the same warpers."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tokentree.config import SamplingConfig
from tokentree.lm import analysis
from tokentree.lm.analysis import draw, sampling_probs
from tokentree.sampling import describe, survivors

TEMPERATURES = (0.3, 0.7, 1.0, 1.5, 2.5)
TOP_KS = (0, 1, 3, 7, 100)
TOP_PS = (1.0, 0.95, 0.9, 0.5)
MIN_PS = (0.0, 0.02, 0.1, 0.5)


def hf_sampler(probs: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """The distribution HF's warpers leave, in their order, on the full distribution `probs`
    [V] (float64). Each warper only as HF's generate adds it (T != 1, k > 0, p < 1, min_p > 0)."""
    scores = probs.double().log()[None]
    warpers = []
    if s.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(s.temperature))
    if s.top_k > 0:
        warpers.append(TopKLogitsWarper(s.top_k))
    if s.top_p < 1.0:
        warpers.append(TopPLogitsWarper(s.top_p))
    if s.min_p > 0:
        warpers.append(MinPLogitsWarper(s.min_p))
    ids = torch.zeros((1, 1), dtype=torch.long)
    for warper in warpers:
        scores = warper(ids, scores)
    return scores.softmax(dim=-1)[0]


def as_dict(final: torch.Tensor) -> dict[int, float]:
    return {i: p for i, p in enumerate(final.tolist()) if p > 0}


def random_distribution(rng: random.Random, vocab: int) -> torch.Tensor:
    scale = rng.uniform(0.5, 4.0)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    return torch.softmax(torch.randn(vocab, generator=gen, dtype=torch.float64) * scale, dim=-1)


def random_settings(rng: random.Random) -> SamplingConfig:
    return SamplingConfig(temperature=rng.choice(TEMPERATURES), top_k=rng.choice(TOP_KS),
                          top_p=rng.choice(TOP_PS), min_p=rng.choice(MIN_PS))


def top(probs: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    values, ids = torch.sort(probs, descending=True)
    return ids[:k].tolist(), values[:k].tolist()


def check_same(got: dict[int, float], expected: dict[int, float]) -> None:
    assert list(got) == sorted(expected, key=lambda i: -expected[i])  # most likely first
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- the whole distribution known
def test_survivors_of_a_full_distribution_equal_hf_warpers():
    """With every token cached (tail 0) the answer is exact and is HF's, for every mix of
    settings (including none, top-k beyond the vocabulary, and a single survivor)."""
    rng = random.Random(1)
    cases = [(random_distribution(rng, rng.randrange(2, 40)), random_settings(rng)) for _ in range(400)]
    cases.append((random_distribution(rng, 10), SamplingConfig()))
    for probs, settings in cases:
        ids, values = top(probs, len(probs))
        got, exact = survivors(ids, values, settings, 0.0)
        assert exact
        check_same(got, as_dict(hf_sampler(probs, settings)))


def test_ties_at_the_top_k_boundary_are_all_kept():
    probs = torch.tensor([0.4, 0.2, 0.2, 0.2], dtype=torch.float64)
    settings = SamplingConfig(top_k=2)
    got, exact = survivors([0, 1, 2, 3], probs.tolist(), settings, 0.0)
    assert exact and set(got) == {0, 1, 2, 3}
    check_same(got, as_dict(hf_sampler(probs, settings)))


def test_describe():
    assert describe(SamplingConfig()) == "T 1"
    full = SamplingConfig(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, seed=3)
    assert describe(full) == "T 0.7 \u00b7 top-k 40 \u00b7 top-p 0.9 \u00b7 min-p 0.05"
    assert describe(SamplingConfig(temperature=1.5, top_p=0.95)) == "T 1.5 \u00b7 top-p 0.95"


# ---------------------------------------------------------------- only the top K known
def tail_shapes(tail: float, p_min: float) -> list[list[float]]:
    """Ways the tokens outside the cached top K may share `tail`, each at most `p_min`: as
    concentrated as possible, spread over 2,000 tokens, and a geometric mix."""
    shapes = []
    whole, rest = divmod(tail, p_min)
    shapes.append([p_min] * int(whole) + ([rest] if rest > 0 else []))
    shapes.append([tail / 2000] * 2000)
    mix, left, x = [], tail, p_min
    while left > 1e-15 and len(mix) < 5000:
        x = min(x, left)
        mix.append(x)
        left -= x
        x *= 0.93
    if left > 0:
        mix += [left / 100] * 100
    shapes.append(mix)
    return shapes


def test_exact_answers_hold_for_every_shape_of_the_tail():
    """Whenever survivors says exact from the top K alone, HF's warpers on the full
    distribution agree, for the real tail and for other tails with the same mass (each token
    at most as likely as the least likely cached one)."""
    rng = random.Random(2)
    exact_count = 0
    for _ in range(300):
        vocab = rng.randrange(12, 60)
        probs = random_distribution(rng, vocab)
        k = rng.randrange(2, 10)
        settings = random_settings(rng)
        ids, values = top(probs, k)
        tail = 1.0 - sum(values)
        got, exact = survivors(ids, values, settings, tail)
        assert set(got) <= set(ids) and sum(got.values()) <= 1 + 1e-9
        if not exact:
            continue
        exact_count += 1
        check_same(got, as_dict(hf_sampler(probs, settings)))
        for shape in tail_shapes(tail, values[-1]):
            full = torch.tensor(values + shape, dtype=torch.float64)
            check_same(got, {ids[i]: p for i, p in as_dict(hf_sampler(full, settings)).items()})
    assert exact_count > 100, "the flag is not uselessly conservative"


def hf_on_shape(values: list[float], shape: list[float], settings: SamplingConfig) -> dict[int, float]:
    """HF's result for the cached `values` (ids 0..K-1) plus an outside `shape` (ids K..)."""
    return as_dict(hf_sampler(torch.tensor(values + shape, dtype=torch.float64), settings))


@pytest.mark.parametrize(
    "values, settings, exact",
    [
        # T 1, top-p: the cached mass decides.
        ([0.5, 0.3, 0.1], SamplingConfig(top_p=0.85), True),  # 0.5 + 0.3 < 0.85 <= 0.9: cut at the 3rd
        ([0.5, 0.2, 0.1], SamplingConfig(top_p=0.85), False),  # 0.8 < 0.85: outside tokens take their turn
        # T < 1: the tempered tail is at most tail * p_min ** (1/T - 1): here it moves the cut.
        ([0.4, 0.3, 0.1], SamplingConfig(temperature=0.5, top_p=0.9), False),
        ([0.4, 0.3, 0.1], SamplingConfig(temperature=0.5, top_p=0.5), True),  # the 1st alone is >= 0.5 of any Z
        # T > 1: the tempered tail has no upper bound without top-k...
        ([0.4, 0.3, 0.1], SamplingConfig(temperature=2.0, top_p=0.9), False),
        ([0.4, 0.3, 0.1], SamplingConfig(temperature=2.0, top_k=2), True),  # ...but top-k within K cuts it off
        # k > K bounds nothing: every outside token tied with the k-th stays
        ([0.4, 0.3, 0.1], SamplingConfig(temperature=2.0, top_k=5, top_p=0.5), False),
        ([0.4, 0.3, 0.1], SamplingConfig(temperature=0.5, top_k=5, top_p=0.5), True),  # T < 1 bounds it
        ([0.4, 0.3, 0.1], SamplingConfig(temperature=2.0, min_p=0.6), True),  # (0.1/0.4) ** 0.5 = 0.5 < 0.6
        ([0.4, 0.3, 0.1], SamplingConfig(temperature=2.0, min_p=0.5), False),  # an outside 0.1 would pass
        # No filter: every token may be drawn.
        ([0.4, 0.3, 0.1], SamplingConfig(), False),
        ([0.4, 0.3, 0.1], SamplingConfig(top_k=2), True),
        ([0.4, 0.3, 0.1], SamplingConfig(top_k=3), False),  # the 3rd is the last cached: an outside 0.1 ties
        ([0.4, 0.1, 0.1], SamplingConfig(top_k=2), False),  # an outside 0.1 ties with the 2nd: kept too
        # min-p rescues top-p: (0.1 / 0.5) < 0.3, so no outside token survives.
        ([0.5, 0.2, 0.1], SamplingConfig(top_p=0.95, min_p=0.3), True),
    ],
)
def test_exactness_flag_when_the_tail_matters(values, settings, exact):
    tail = 1.0 - sum(values)
    got, flag = survivors(list(range(len(values))), values, settings, tail)
    assert flag is exact
    results = [hf_on_shape(values, shape, settings) for shape in tail_shapes(tail, values[-1])]
    if exact:
        for result in results:
            check_same(got, result)
    else:  # the shapes of the tail give different answers, or outside tokens survive
        assert any(set(r) - set(range(len(values))) for r in results) or any(r != results[0] for r in results)
        assert set(got) <= set(range(len(values))) and 0 < sum(got.values()) <= 1 + 1e-12


def test_inexact_top_p_at_t1_estimates_the_outside_share():
    """T 1, top-p 0.9 beyond the cached mass 0.8: the cached candidates' probabilities are
    theirs over a kept mass of about 0.9 (the outside tokens fill the rest of the nucleus)."""
    values = [0.5, 0.2, 0.1]
    got, exact = survivors([7, 8, 9], values, SamplingConfig(top_p=0.9), 0.2)
    assert not exact
    assert got[7] == pytest.approx(0.5 / 0.9, rel=0.02) and list(got) == [7, 8, 9]


def test_tiny_temperature_leaves_the_top_candidate():
    got, exact = survivors([3, 1, 2], [0.5, 0.3, 0.1], SamplingConfig(temperature=1e-4), 0.1)
    assert exact and got == {3: 1.0}


def test_sampling_module_does_not_import_torch():
    code = "import sys, tokentree.sampling; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- the engine's torch sampler
def test_engine_sampler_equals_hf_warpers_on_full_logits():
    """analysis.sampling_probs (float32, batched rows) = HF's warpers (float64), and its
    support is what survivors says from the whole distribution."""
    rng = random.Random(3)
    for _ in range(150):
        vocab = rng.randrange(2, 80)
        rows = torch.stack([random_distribution(rng, vocab) for _ in range(3)])
        settings = random_settings(rng)
        got = sampling_probs(rows.log().float(), temperature=settings.temperature, top_k=settings.top_k,
                             top_p=settings.top_p, min_p=settings.min_p)
        assert got.dtype == torch.float32
        for row, probs in zip(got, rows):
            expected = hf_sampler(probs, settings)
            assert torch.allclose(row.double(), expected, atol=1e-6)
            ids, values = top(probs, vocab)
            kept, _ = survivors(ids, values, settings, 0.0)
            assert set(as_dict(row)) == set(kept)


@pytest.mark.parametrize("candidates", [4, 16, 1024])
def test_top_p_from_the_top_candidates_equals_a_full_sort(monkeypatch, candidates):
    """Top-p looks at the TOP_P_CANDIDATES likeliest tokens first and sorts everything only
    when the nucleus reaches beyond them: both ways give HF's answer."""
    monkeypatch.setattr(analysis, "TOP_P_CANDIDATES", candidates)
    rng = random.Random(4)
    for _ in range(100):
        rows = torch.stack([random_distribution(rng, 60) for _ in range(2)])
        settings = SamplingConfig(temperature=rng.choice(TEMPERATURES), top_p=rng.choice((0.3, 0.5, 0.9, 0.99)))
        got = sampling_probs(rows.log().float(), temperature=settings.temperature, top_p=settings.top_p)
        for row, probs in zip(got, rows):
            assert torch.allclose(row.double(), hf_sampler(probs, settings), atol=1e-6)


def test_draw_follows_the_distribution_and_the_seed():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]] * 20000)
    drawn = draw(probs, torch.Generator().manual_seed(1)).view(-1)
    counts = torch.bincount(drawn, minlength=5).double() / len(drawn)
    assert counts[1] == 0 and counts[4] == 0  # never a zero-probability token
    assert torch.allclose(counts, probs[0].double(), atol=0.015)
    assert torch.equal(draw(probs[:50], torch.Generator().manual_seed(2)), draw(probs[:50], torch.Generator().manual_seed(2)))
    assert not torch.equal(draw(probs[:50], torch.Generator().manual_seed(2)), draw(probs[:50], torch.Generator().manual_seed(3)))

"""Analysis math: pure functions on hand-made tensors, then the engine's influence and logit
lens against independent computations from a plain eager forward pass."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tokentree.lm import Engine, load_model
from tokentree.lm import analysis
from tokentree.lm.engine import final_norm
from tokentree.outputs import Analysis

ARCHES = ("qwen2", "gpt2", "llama")
PROMPT = "The quick brown fox jumps over the lazy dog."


# ---------------------------------------------------------------- pure functions
def test_entropy_of_uniform_one_hot_and_minus_inf():
    uniform, one_hot, masked = torch.zeros(10), torch.tensor([0.0, -1e4, -1e4]), torch.tensor([0.0, 0.0, -math.inf])
    assert analysis.distributions(uniform[None], k=1)[0].entropy == pytest.approx(math.log(10))
    assert analysis.distributions(one_hot[None], k=1)[0].entropy == pytest.approx(0.0, abs=1e-6)
    # A -inf logit (0 * -inf) must count as 0, not turn the entropy into nan.
    assert analysis.distributions(masked[None], k=1)[0].entropy == pytest.approx(math.log(2))


def test_distributions_top_k_and_normalized_entropy():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]]))
    d0, d1 = analysis.distributions(logits.to(torch.bfloat16), k=2)
    assert d0.top_ids == (0, 1) and d0.top_probs == pytest.approx((0.5, 0.25), rel=1e-2)  # bf16 logits
    assert isinstance(d0.top_probs[0], float)
    h = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))
    assert d0.entropy == pytest.approx(h, rel=1e-3)
    assert d0.norm_entropy == pytest.approx(h / math.log(4), rel=1e-3)
    assert d1.norm_entropy == pytest.approx(1.0)
    assert len(analysis.distributions(logits, k=99)[0].top_ids) == 4  # k capped at |V|


def test_token_rank_counts_strictly_greater():
    logits = torch.log(torch.tensor([0.4, 0.2, 0.2, 0.1, 0.1]))
    assert analysis.token_prob_rank(logits, 0) == (pytest.approx(0.4), 1)
    assert analysis.token_prob_rank(logits, 2)[1] == 2  # a tie shares the better rank
    assert analysis.token_prob_rank(logits, 4)[1] == 4
    _, probs, ranks = analysis.summarize(torch.stack([logits, logits]), 2, torch.tensor([1, 3]))
    assert ranks == [2, 4] and probs == pytest.approx([0.2, 0.1])


def test_influence_keeps_the_most_varying_heads():
    torch.manual_seed(0)
    rows = torch.softmax(torch.randn(40, 7) * torch.linspace(0.1, 4, 40)[:, None], dim=-1)
    got = analysis.influence(rows, k=5)
    # Independent: rank heads by variance with a sort, average the chosen rows by hand.
    var = ((rows - rows.mean(dim=1, keepdim=True)) ** 2).mean(dim=1)
    chosen = sorted(range(40), key=lambda h: -var[h].item())[:5]
    mean = sum(rows[h] for h in chosen) / 5
    assert torch.allclose(got, mean / mean.max(), atol=1e-6)
    assert got.max().item() == pytest.approx(1.0)
    # Fewer heads than k: all of them.
    assert torch.allclose(analysis.influence(rows[:3], k=32), rows[:3].mean(0) / rows[:3].mean(0).max())
    # One position: influence is 1, not nan.
    assert analysis.influence(torch.ones(4, 1)).tolist() == [1.0]


def test_logit_lens_normalizes_all_but_the_last_state():
    hidden = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([3.0, 1.0])]
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    double = lambda x: 2 * x  # noqa: E731 -- a stand-in "norm" whose effect is visible
    got = analysis.logit_lens(hidden, double, head, [2, 0])
    states = [2 * hidden[0], 2 * hidden[1], hidden[2]]
    expected = torch.stack([torch.softmax(head(h), -1) for h in states])[:, [2, 0]]
    assert torch.allclose(got, expected.detach(), atol=1e-6)


# ---------------------------------------------------------------- engine vs plain forward
@pytest.fixture(scope="module")
def engines(tiny_models):
    return {arch: Engine(load_model(str(tiny_models[arch]), device="cpu"), top_k=8) for arch in ARCHES}


@pytest.fixture(scope="module")
def eager_models(tiny_models):
    """Independent copies of the models, loaded with eager attention from the start."""
    models = {}
    for arch in ARCHES:
        models[arch] = AutoModelForCausalLM.from_pretrained(tiny_models[arch], attn_implementation="eager").eval()
    return models


def expected_influence(model, tokens, k=32) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens]), output_attentions=True)
    rows = [a[0, h, -1, :] for a in out.attentions for h in range(a.shape[1])]
    var = [((r - r.mean()) ** 2).mean().item() for r in rows]
    chosen = sorted(range(len(rows)), key=lambda i: -var[i])[:k]
    mean = torch.stack([rows[i] for i in chosen]).mean(dim=0)
    return mean / mean.max()


def rms_norm(x, module):
    eps = getattr(module, "variance_epsilon", None) or module.eps
    return module.weight * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def expected_lens(model, arch, tokens, ids) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
        if arch == "gpt2":
            ln = model.transformer.ln_f
            norm = lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps)  # noqa: E731
        else:
            norm = lambda x: rms_norm(x, model.model.norm)  # noqa: E731
        weight = model.lm_head.weight
        states = [h[0, -1] for h in out.hidden_states[1:]]
        rows = [norm(h) for h in states[:-1]] + [states[-1]]  # the last state is already normed
        probs = torch.stack([torch.softmax(r @ weight.T, dim=-1) for r in rows])
        # The last layer's lens is exactly the model's own prediction.
        assert torch.allclose(probs[-1], torch.softmax(out.logits[0, -1], -1), atol=1e-5)
    return probs[:, ids]


@pytest.mark.parametrize("arch", ARCHES)
def test_influence_and_lens_match_a_plain_eager_forward(engines, eager_models, arch):
    engine, reference = engines[arch], eager_models[arch]
    tokens = engine.encode(PROMPT)
    engine.prefill(tokens)
    ids = [5, 40, 283, 17]
    passes = engine.forward_passes
    result = engine.analyze(tokens, influence=True, lens_ids=ids)
    assert engine.forward_passes == passes + 1
    assert engine.model.config._attn_implementation == "sdpa", "eager is switched back afterwards"
    assert len(result.influence) == len(tokens)
    assert torch.allclose(torch.tensor(result.influence), expected_influence(reference, tokens), atol=1e-5)
    assert result.lens_ids == tuple(ids)
    assert len(result.lens_probs) == engine.loaded.num_layers
    lens = torch.tensor(result.lens_probs)
    assert torch.allclose(lens, expected_lens(reference, arch, tokens, ids), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHES)
def test_analysis_after_steps_and_pops(engines, eager_models, arch):
    engine, reference = engines[arch], eager_models[arch]
    tokens = engine.encode(PROMPT)
    engine.prefill(tokens)
    engine.step(tokens, 12)
    path = tokens[:-3] + [40]  # a branch that diverges inside the prompt
    engine.step(tokens[:-3], 40)
    only_influence = engine.analyze(path, influence=True)
    assert only_influence.lens_probs is None
    assert torch.allclose(torch.tensor(only_influence.influence), expected_influence(reference, path), atol=1e-5)
    only_lens = engine.analyze(tokens + [12], lens_ids=[12])
    assert only_lens.influence is None
    assert torch.allclose(
        torch.tensor(only_lens.lens_probs), expected_lens(reference, arch, tokens + [12], [12]), atol=1e-6, rtol=1e-4
    )
    # A step after the analysis still matches a fresh pass (the cache line stayed consistent).
    out = engine.step(path, 7)
    with torch.no_grad():
        probs = torch.softmax(reference(input_ids=torch.tensor([path + [7]])).logits[0].double(), -1)
    assert out.token_prob == pytest.approx(probs[-2, 7].item(), rel=1e-4)
    assert out.next.top_probs[0] == pytest.approx(probs[-1].max().item(), abs=1e-5)


def test_nothing_asked_means_no_forward_pass(engines):
    engine = engines["qwen2"]
    passes = engine.forward_passes
    assert engine.analyze([1, 2, 3]) == engine.analyze([1, 2, 3], influence=False, lens_ids=[])
    assert engine.analyze([1, 2, 3]).influence is None
    assert engine.forward_passes == passes


def test_final_norm_is_found_per_architecture(engines):
    assert final_norm(engines["qwen2"].model) is engines["qwen2"].model.model.norm
    assert final_norm(engines["llama"].model) is engines["llama"].model.model.norm
    assert final_norm(engines["gpt2"].model) is engines["gpt2"].model.transformer.ln_f


def full_probs(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(input_ids=torch.tensor([tokens])).logits[0].double(), -1)


def same_output(got, ref) -> None:
    assert got.token_prob == pytest.approx(ref.token_prob, rel=1e-4, abs=1e-7)
    assert got.token_rank == ref.token_rank
    assert got.next.top_probs == pytest.approx(ref.next.top_probs, abs=1e-5)
    assert got.next.entropy == pytest.approx(ref.next.entropy, abs=1e-4)


@pytest.mark.parametrize("cache_size", [1, 100])
@pytest.mark.parametrize("arch", ARCHES)
def test_step_with_analysis_is_one_pass_equal_to_step_then_analyze(tiny_models, eager_models, arch, cache_size):
    loaded = load_model(str(tiny_models[arch]), device="cpu")
    combined = Engine(loaded, top_k=8, cache_size=cache_size)
    separate = Engine(loaded, top_k=8, cache_size=cache_size)
    reference = eager_models[arch]
    tokens = combined.encode(PROMPT)
    for engine in (combined, separate):
        engine.prefill(tokens)
        engine.step(tokens, 12)
    fed: list[int] = []
    hook = combined.model.register_forward_pre_hook(
        lambda m, args, kwargs: fed.append(kwargs["input_ids"].shape[-1]), with_kwargs=True
    )
    try:
        # A sibling after a pop (parent logits kept unless cache_size=1), then a deeper node.
        for prefix, token, lens_count in [(tokens, 40, 4), (tokens + [40], 7, 3), (tokens[:-2], 9, 10)]:
            fed.clear()
            passes = combined.forward_passes
            out, result = combined.step_with_analysis(prefix, token, influence=True, lens_count=lens_count)
            assert combined.forward_passes == passes + 1 and len(fed) == 1
            assert combined.model.config._attn_implementation == "sdpa", "eager is switched back afterwards"
            path = prefix + [token]
            # == step + analyze on another engine (two passes there)
            ref_out = separate.step(prefix, token)
            probs = full_probs(reference, path)
            ids = torch.topk(probs[-1], lens_count).indices.tolist()
            ref = separate.analyze(path, influence=True, lens_ids=ids)
            same_output(out, ref_out)
            assert result.lens_ids == tuple(ids) == tuple(ref.lens_ids)
            if lens_count <= 8:
                assert result.lens_ids == out.next.top_ids[:lens_count]
            assert torch.allclose(torch.tensor(result.influence), torch.tensor(ref.influence), atol=1e-5)
            assert torch.allclose(torch.tensor(result.lens_probs), torch.tensor(ref.lens_probs), atol=1e-6, rtol=1e-4)
            # == a plain eager forward pass over the whole path
            assert out.token_prob == pytest.approx(probs[-2, token].item(), rel=1e-4)
            assert out.next.top_probs[0] == pytest.approx(probs[-1].max().item(), abs=1e-5)
            assert torch.allclose(torch.tensor(result.influence), expected_influence(reference, path), atol=1e-5)
            lens = torch.tensor(result.lens_probs)
            assert torch.allclose(lens, expected_lens(reference, arch, path, ids), atol=1e-6, rtol=1e-4)
        # The combined engine's cache stays consistent: a plain step afterwards is still exact.
        fed.clear()
        out = combined.step(tokens + [40, 7], 3)
        probs = full_probs(reference, tokens + [40, 7, 3])
        assert out.token_prob == pytest.approx(probs[-2, 3].item(), rel=1e-4)
        assert out.next.top_probs[0] == pytest.approx(probs[-1].max().item(), abs=1e-5)
        if cache_size > 1:
            assert fed == [1]
    finally:
        hook.remove()


def test_step_with_analysis_without_views_is_a_plain_step(tiny_models):
    loaded = load_model(str(tiny_models["qwen2"]), device="cpu")
    engine, plain = Engine(loaded, top_k=8), Engine(loaded, top_k=8)
    tokens = engine.encode(PROMPT)
    out, result = engine.step_with_analysis(tokens, 12, influence=False, lens_count=0)
    assert result == Analysis() and engine.forward_passes == 1
    same_output(out, plain.step(tokens, 12))
    only_influence = engine.step_with_analysis(tokens, 13, influence=True, lens_count=0)[1]
    assert only_influence.lens_ids is None and len(only_influence.influence) == len(tokens) + 1
    only_lens = engine.step_with_analysis(tokens, 14, influence=False, lens_count=2)[1]
    assert only_lens.influence is None and len(only_lens.lens_ids) == 2

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


@pytest.mark.parametrize("targets", ["inside", "outside", "mixed"])
def test_summarize_ranks_inside_and_outside_the_top_k_match_a_full_count(targets):
    """Ranks of targets within the top k are counted there, the others over the whole row:
    both agree with a brute-force count, ties included (rounded logits make many)."""
    torch.manual_seed(1)
    logits = (torch.randn(6, 500) * 3).round()
    order = torch.argsort(logits, dim=-1, descending=True)
    pick = {"inside": [2, 0, 4, 1, 3, 2], "outside": [50, 499, 10, 300, 7, 100], "mixed": [0, 300, 3, 10, 4, 499]}
    t = order[torch.arange(6), torch.tensor(pick[targets])]
    _, probs, ranks = analysis.summarize(logits, 5, t)
    expected = [int((logits[i] > logits[i, t[i]]).sum()) + 1 for i in range(6)]
    assert ranks == expected
    assert probs == pytest.approx(torch.softmax(logits.double(), -1)[torch.arange(6), t].tolist(), rel=1e-5)


def test_summarize_works_on_a_column_slice():
    """The engine passes a view cut to the real vocabulary: same numbers as a contiguous copy."""
    logits = torch.randn(4, 40)
    view, copy = analysis.summarize(logits[:, :30], 5, torch.tensor([1, 2, 3])), analysis.summarize(
        logits[:, :30].contiguous(), 5, torch.tensor([1, 2, 3]))
    assert view == copy and all(max(d.top_ids) < 30 for d in view[0])
    assert view[0][0].norm_entropy == pytest.approx(view[0][0].entropy / math.log(30))


def nan_none(values) -> torch.Tensor:
    """Influence values with None (no value) as NaN, to compare with equal_nan."""
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)


def sinky_rows(n: int = 9, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """40 hand-made heads over n positions: 24 sink heads (0.95 on position 0, the rest
    nearly flat), 8 "self" heads (0.9 on the query's own position), 8 informative heads
    (peaked on the positions in between). Returns the rows and the informative heads."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(24):
        rest = torch.rand(n - 1, generator=gen) + 1.0
        rows.append(torch.cat([torch.tensor([0.95]), 0.05 * rest / rest.sum()]))
    for _ in range(8):
        rest = torch.rand(n - 1, generator=gen) + 1.0
        rows.append(torch.cat([0.1 * rest / rest.sum(), torch.tensor([0.9])]))
    for _ in range(8):
        rows.append(torch.softmax(torch.randn(n, generator=gen) * 2.5, dim=0))
    return torch.stack(rows), list(range(32, 40))


def test_influence_leaves_out_the_sink_and_the_query():
    rows, informative = sinky_rows()
    n = rows.shape[1]
    values, sink = analysis.influence(rows, k=8)
    assert values.dtype == torch.float32 and values.shape == (n,)
    assert math.isnan(values[0]) and math.isnan(values[-1])  # no value: the sink, the query itself
    assert sink == pytest.approx(rows[:, 0].mean().item())  # over ALL heads, not just the chosen
    assert sink > 0.5
    # Independent: rank heads by the variance of positions 1 .. n-2 only, average those there.
    middle = rows[:, 1:-1]
    var = ((middle - middle.mean(dim=1, keepdim=True)) ** 2).mean(dim=1)
    chosen = sorted(range(len(rows)), key=lambda h: -var[h].item())[:8]
    assert sorted(chosen) == informative  # neither the sink heads nor the self heads
    mean = sum(middle[h] for h in chosen) / 8
    assert torch.allclose(values[1:-1], mean / mean.max(), atol=1e-6)
    assert values[1:-1].max().item() == pytest.approx(1.0)  # normalised without the sink column
    # With the sink column in the ranking (the old definition) the sink heads win instead.
    var_all = ((rows - rows.mean(dim=1, keepdim=True)) ** 2).mean(dim=1)
    assert set(sorted(range(len(rows)), key=lambda h: -var_all[h].item())[:8]) <= set(range(32))
    # And with the query's own column, the heads that look at themselves.
    with_self = rows[:, 1:]
    var_self = ((with_self - with_self.mean(dim=1, keepdim=True)) ** 2).mean(dim=1)
    assert set(sorted(range(len(rows)), key=lambda h: -var_self[h].item())[:8]) == set(range(24, 32))
    # Fewer heads than k: all of them; bfloat16 rows give float32 values.
    values, _ = analysis.influence(rows[32:].to(torch.bfloat16), k=32)
    mean = rows[32:].to(torch.bfloat16).float()[:, 1:-1].mean(0)
    assert values.dtype == torch.float32 and torch.allclose(values[1:-1], mean / mean.max())
    assert analysis.optional_values(torch.tensor([math.nan, 0.5, math.nan])) == (None, 0.5, None)


def test_influence_of_short_prefixes_and_of_pure_sinks():
    values, sink = analysis.influence(torch.ones(4, 1))  # one token: it is the query and the sink
    assert analysis.optional_values(values) == (None,) and sink is None
    two = torch.tensor([[0.9, 0.1], [0.5, 0.5]])  # two tokens: no position in between
    values, sink = analysis.influence(two)
    assert analysis.optional_values(values) == (None, None) and sink == pytest.approx(0.7)
    values, sink = analysis.influence(torch.tensor([[0.9, 0.06, 0.04], [0.2, 0.3, 0.5]]))
    assert analysis.optional_values(values) == (None, pytest.approx(1.0), None)  # one position: 1
    assert sink == pytest.approx(0.55)
    # Every head entirely on the sink and the query: zeros in between, not nan.
    values, sink = analysis.influence(torch.tensor([[0.5, 0.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.0]]))
    assert analysis.optional_values(values) == (None, 0.0, 0.0, None) and sink == 0.75


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


def expected_influence(model, tokens, k=32) -> tuple[list[float | None], float | None]:
    """The definition written out plainly, from an eager forward pass: the last position's
    row of every (layer, head); positions 1 .. n-2 only (not the sink, not the query); the k
    heads with the highest variance there; their mean there, divided by its max. The sink
    share: the mean over every row of the weight on position 0."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens]), output_attentions=True)
    rows = [a[0, h, -1, :].tolist() for a in out.attentions for h in range(a.shape[1])]
    n = len(tokens)
    sink = sum(r[0] for r in rows) / len(rows) if n >= 2 else None
    values: list[float | None] = [None] * n
    middle = [r[1 : n - 1] for r in rows]
    if n > 2:
        def variance(xs):
            mu = sum(xs) / len(xs)
            return sum((x - mu) ** 2 for x in xs) / len(xs)

        chosen = sorted(range(len(rows)), key=lambda i: -variance(middle[i]))[:k]
        mean = [sum(middle[i][j] for i in chosen) / len(chosen) for j in range(n - 2)]
        values[1 : n - 1] = [m / max(mean) for m in mean]
    return values, sink


def same_influence(result: Analysis, expected, atol=1e-5) -> None:
    values, sink = expected
    assert len(result.influence) == len(values)
    assert [v is None for v in result.influence] == [v is None for v in values]
    assert torch.allclose(nan_none(result.influence), nan_none(values), atol=atol, equal_nan=True)
    assert (result.sink_share is None) == (sink is None)
    if sink is not None:
        assert result.sink_share == pytest.approx(sink, abs=atol)


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
    same_influence(result, expected_influence(reference, tokens))
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
    same_influence(only_influence, expected_influence(reference, path))
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
            assert torch.allclose(nan_none(result.influence), nan_none(ref.influence), atol=1e-5, equal_nan=True)
            assert result.sink_share == pytest.approx(ref.sink_share, abs=1e-6)
            assert torch.allclose(torch.tensor(result.lens_probs), torch.tensor(ref.lens_probs), atol=1e-6, rtol=1e-4)
            # == a plain eager forward pass over the whole path
            assert out.token_prob == pytest.approx(probs[-2, token].item(), rel=1e-4)
            assert out.next.top_probs[0] == pytest.approx(probs[-1].max().item(), abs=1e-5)
            same_influence(result, expected_influence(reference, path))
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


# ---------------------------------------------------------------- a model with attention sinks
SINK_LAYERS, SINK_HEADS_PER_LAYER, HEADS, KV_HEADS, HEAD_DIM = 5, 6, 8, 4, 8


def build_sink_model(directory) -> int:
    """A tiny Qwen2 whose heads 0-5 of every layer are attention sinks (30 of 40 heads), like
    a real model's; heads 6 and 7 are sharpened random heads. Returns the sink token's id.

    The sink token (<|im_start|>, put first) is the only one with a component along hidden
    dimension 0 (no layer writes there). Every k_proj maps that dimension to a large key along
    the lowest-frequency RoPE pair (nearly position independent), and the sink heads' q_proj
    bias is a constant query along the same pair; the other heads' queries ignore it.
    """
    from tiny_model import build_tokenizer
    from transformers import Qwen2Config

    tok = build_tokenizer()
    sink_id = tok.convert_tokens_to_ids("<|im_start|>")
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=HEADS * HEAD_DIM, intermediate_size=128, num_hidden_layers=SINK_LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
        eos_token_id=tok.eos_token_id, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    low, half = HEAD_DIM // 2 - 1, HEAD_DIM // 2  # the pair (low, low + half) turns slowest
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 0
        emb[sink_id] = 0
        emb[sink_id, 0] = 1.0
        for layer in model.model.layers:
            attn = layer.self_attn
            attn.o_proj.weight[0] = 0  # nothing writes to the sink's dimension
            layer.mlp.down_proj.weight[0] = 0
            for g in range(KV_HEADS):
                for r in (g * HEAD_DIM + low, g * HEAD_DIM + low + half):
                    attn.k_proj.weight[r] = 0
                    attn.k_proj.bias[r] = 0
                attn.k_proj.weight[g * HEAD_DIM + low, 0] = 2.0
            for h in range(HEADS):
                for r in (h * HEAD_DIM + low, h * HEAD_DIM + low + half):
                    attn.q_proj.weight[r] = 0
                    attn.q_proj.bias[r] = 0
                if h < SINK_HEADS_PER_LAYER:
                    attn.q_proj.bias[h * HEAD_DIM + low] = 1.2
                else:  # sharper than random init: they attend to particular tokens
                    attn.q_proj.weight[h * HEAD_DIM : (h + 1) * HEAD_DIM] *= 10.0
            last = KV_HEADS - 1  # the key/value group of heads 6 and 7
            attn.k_proj.weight[last * HEAD_DIM : (last + 1) * HEAD_DIM, 1:] *= 10.0
        model.lm_head.weight.mul_(25.0)
    model.eval()
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return sink_id


@pytest.fixture(scope="module")
def sink_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sink_model")
    sink_id = build_sink_model(directory)
    engine = Engine(load_model(str(directory), device="cpu"), top_k=8)
    reference = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    return engine, reference, [sink_id] + engine.encode(PROMPT)


def old_influence(model, tokens, k=32) -> list[float]:
    """The definition before sinks were left out: every position, heads ranked with them."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens]), output_attentions=True)
    rows = torch.cat([a[0, :, -1, :] for a in out.attentions])
    chosen = rows[torch.topk(rows.var(dim=-1, correction=0), k).indices]
    mean = chosen.mean(dim=0)
    return (mean / mean.max()).tolist()


def test_sink_heads_do_not_dominate_the_influence(sink_model):
    engine, reference, tokens = sink_model
    # The model's own eager attentions: 30 of the 40 heads put > 0.9 on position 0.
    with torch.no_grad():
        out = reference(input_ids=torch.tensor([tokens]), output_attentions=True)
    on_sink = torch.cat([a[0, :, -1, 0] for a in out.attentions])
    assert len(on_sink) == SINK_LAYERS * HEADS
    assert int((on_sink > 0.9).sum()) == SINK_LAYERS * SINK_HEADS_PER_LAYER
    # Before: position 0 at 1.0 and every other position near 0.
    old = old_influence(reference, tokens)
    assert old[0] == 1.0 and max(old[1:]) < 0.1
    # Now: no value at position 0 or at the query, a real spread in between.
    result = engine.analyze(tokens, influence=True)
    same_influence(result, expected_influence(reference, tokens))
    assert result.influence[0] is None and result.influence[-1] is None
    middle = sorted(result.influence[1:-1])
    assert middle[-1] == pytest.approx(1.0) and middle[len(middle) // 2] > 0.1
    assert sum(v > 0.3 for v in middle) >= 4
    assert result.sink_share == pytest.approx(on_sink.mean().item(), abs=1e-5)
    assert 0.6 < result.sink_share < 0.8  # 30 heads at ~0.96, 10 near 0
    # A step that computes its analysis in the same pass gives the same numbers.
    out, step = engine.step_with_analysis(tokens, 40, influence=True, lens_count=0)
    same_influence(step, expected_influence(reference, tokens + [40]))
    # Short prefixes: nothing in between, no crash.
    assert engine.analyze(tokens[:1], influence=True) == Analysis(influence=(None,), sink_share=None)
    two = engine.analyze(tokens[:2], influence=True)
    assert two.influence == (None, None) and two.sink_share > 0.6
    same_influence(two, expected_influence(reference, tokens[:2]))

"""Engine results against fresh, cache-free forward passes computed here with plain tensor ops:
a plain Hugging Face forward, softmax in float64 over the tokenizer's real vocabulary."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from tokentree.config import SamplingConfig
from tokentree.lm import Engine, load_model
from tokentree.outputs import Analysis
from tokentree.sampling import survivors

ARCHES = ("qwen2", "gpt2", "llama")
PROMPT = "Natalia sold 48 clips in April."
TOP_K = 8


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {arch: load_model(str(tiny_models[arch]), device="cpu") for arch in ARCHES}


def full_probs(engine, tokens) -> torch.Tensor:
    """Next-token probabilities at every position from one plain forward pass of the engine's
    model, no cache, softmax in float64 over the real vocabulary: the len(tokenizer) ids."""
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([list(tokens)])).logits[0]
    return torch.softmax(logits[:, : len(engine.loaded.tokenizer)].double(), dim=-1)


def check_distribution(dist, probs: torch.Tensor, k: int = TOP_K) -> None:
    expected = torch.sort(probs, descending=True).values[:k]
    assert len(dist.top_ids) == k
    assert max(dist.top_ids) < probs.numel(), "only real token ids"
    # Probabilities within 1e-4 relative (abs only for float32 underflow of tiny values).
    assert dist.top_probs == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-12)
    # The ids are the ones carrying those probabilities (robust to near-ties in order).
    assert probs[list(dist.top_ids)].tolist() == pytest.approx(list(dist.top_probs), rel=1e-4, abs=1e-12)
    entropy = -torch.special.xlogy(probs, probs).sum().item()
    assert dist.entropy == pytest.approx(entropy, rel=1e-4, abs=1e-5)
    assert dist.norm_entropy == pytest.approx(entropy / math.log(probs.numel()), rel=1e-4, abs=1e-6)


def check_token(prob, rank, probs: torch.Tensor, token: int) -> None:
    p = probs[token].item()
    assert prob == pytest.approx(p, rel=1e-4, abs=1e-12)
    # rank = 1 + tokens strictly more likely; allow for float noise among near-equal values.
    lo = int((probs > p + 1e-6).sum()) + 1
    hi = int((probs > p - 1e-6).sum())
    assert lo <= rank <= max(lo, hi)


def check_step(engine, prefix, token) -> None:
    before = engine.forward_passes
    out = engine.step(prefix, token)
    assert engine.forward_passes == before + 1, "a step is exactly one forward call"
    probs = full_probs(engine, list(prefix) + [token])
    check_distribution(out.next, probs[-1])
    if prefix:
        check_token(out.token_prob, out.token_rank, probs[-2], token)
    else:
        assert out.token_prob is None and out.token_rank is None
    return out


@pytest.mark.parametrize("chunk", [3, 512])
@pytest.mark.parametrize("arch", ARCHES)
def test_prefill_is_one_pass_and_matches_a_full_pass(loaded, arch, chunk):
    engine = Engine(loaded[arch], top_k=TOP_K, prefill_chunk=chunk)
    tokens = engine.encode(PROMPT)
    spy = FedTokens(engine.model)
    try:
        outputs = engine.prefill(tokens)
    finally:
        spy.close()
    # One pass: every position fed exactly once, in chunks through the KV cache.
    n = len(tokens)
    assert engine.forward_passes == 1
    assert engine.model_calls == len(spy.calls) == math.ceil(n / chunk)
    assert spy.calls == [min(chunk, n - lo) for lo in range(0, n, chunk)] and sum(spy.calls) == n
    assert len(outputs) == len(tokens)
    probs = full_probs(engine, tokens)
    assert outputs[0].token_prob is None and outputs[0].token_rank is None
    for i, out in enumerate(outputs):
        check_distribution(out.next, probs[i])
        if i:
            check_token(out.token_prob, out.token_rank, probs[i - 1], tokens[i])


@pytest.mark.parametrize("cache_size", [1, 100])
@pytest.mark.parametrize("arch", ARCHES)
def test_steps_pops_and_branch_switches_match_fresh_passes(loaded, arch, cache_size):
    engine = Engine(loaded[arch], top_k=TOP_K, cache_size=cache_size)
    prompt = engine.encode(PROMPT)
    engine.prefill(prompt)
    a = list(prompt)
    for token in (12, 40, 7):  # branch A grows by extension
        check_step(engine, a, token)
        a.append(token)
    check_step(engine, a[:-2], 99)  # pop two, take another token: a crop
    b = a[:-2] + [99]
    check_step(engine, b, 5)  # continue branch B
    b.append(5)
    check_step(engine, a, 3)  # back to branch A's tip
    check_step(engine, prompt[:-1], 21)  # pop into the prompt and branch there
    check_step(engine, b, 5)  # branch B again: the same node twice
    check_step(engine, a[:1], 250)  # almost the root
    assert len(engine._lines) <= cache_size


@pytest.mark.parametrize("arch", ARCHES)
def test_token_outside_top_k_gets_its_own_prob_and_rank(loaded, arch):
    engine = Engine(loaded[arch], top_k=TOP_K)
    prompt = engine.encode(PROMPT)
    last = engine.prefill(prompt)[-1]
    probs = full_probs(engine, prompt)[-1]
    unlikely = int(torch.argmin(probs))
    assert unlikely not in last.next.top_ids
    out = check_step(engine, prompt, unlikely)
    assert out.token_rank > TOP_K
    # ...also when the parent's logits are no longer held (after a crop).
    check_step(engine, prompt[:-1], int(torch.argmin(full_probs(engine, prompt[:-1])[-1])))


def test_first_token_has_no_predicting_distribution(loaded):
    engine = Engine(loaded["qwen2"], top_k=TOP_K)
    out = check_step(engine, [], 283)
    assert out.token_prob is None
    check_step(engine, [283], 297)  # and the next step reuses it


def test_llama_encode_adds_bos_and_its_bytes_are_its_name(loaded):
    llama = Engine(loaded["llama"])
    tok = llama.loaded.tokenizer
    ids = llama.encode("Natalia")
    assert ids[0] == tok.bos_token_id
    pieces = llama.token_bytes(ids)
    assert pieces[ids[0]] == b"<|im_start|>"
    assert b"".join(pieces[i] for i in ids[1:]) == b"Natalia"
    assert Engine(loaded["qwen2"]).encode("Natalia")[0] != tok.bos_token_id


def test_lru_is_bounded(loaded):
    engine = Engine(loaded["gpt2"], top_k=TOP_K, cache_size=3)
    prompt = engine.encode(PROMPT)
    engine.prefill(prompt)
    for t in range(10, 16):  # six sibling branches
        engine.step(prompt, t)
    assert len(engine._lines) == 3
    check_step(engine, prompt + [10], 4)  # an evicted branch is recomputed correctly


def test_bf16_outputs_are_float32_and_close_to_float32(tiny_models, loaded):
    fp32 = Engine(loaded["qwen2"], top_k=TOP_K)
    bf16_model = load_model(str(tiny_models["qwen2"]), device="cpu", bf16=True)
    assert bf16_model.dtype == "bfloat16" and bf16_model.fingerprint.endswith(":bfloat16")
    assert next(bf16_model.model.parameters()).dtype == torch.bfloat16
    bf16 = Engine(bf16_model, top_k=TOP_K)
    prompt = fp32.encode(PROMPT)
    for ref, out in zip(fp32.prefill(prompt), bf16.prefill(prompt)):
        assert isinstance(out.next.entropy, float) and isinstance(out.next.top_probs[0], float)
        assert sum(out.next.top_probs) <= 1.0 + 1e-6
        assert out.next.entropy == pytest.approx(ref.next.entropy, abs=0.15)
        assert out.next.top_probs[0] == pytest.approx(ref.next.top_probs[0], abs=0.05)
    ref, out = fp32.step(prompt, 12), bf16.step(prompt, 12)
    assert out.token_prob == pytest.approx(ref.token_prob, rel=0.2)
    assert out.next.entropy == pytest.approx(ref.next.entropy, abs=0.15)
    assert all(row.dtype == torch.float32 for row in bf16._logits._rows.values())
    lens = bf16.analyze(prompt + [12], influence=True, lens_ids=ref.next.top_ids[:3])
    lens_ref = fp32.analyze(prompt + [12], influence=True, lens_ids=ref.next.top_ids[:3])
    assert torch.allclose(torch.tensor(lens.lens_probs), torch.tensor(lens_ref.lens_probs), atol=0.05)
    nan_none = lambda values: torch.tensor([float("nan") if v is None else v for v in values])  # noqa: E731
    assert torch.allclose(nan_none(lens.influence), nan_none(lens_ref.influence), atol=0.05, equal_nan=True)
    assert lens.sink_share == pytest.approx(lens_ref.sink_share, abs=0.05)


class FedTokens:
    """Spy on the model: how many input ids each forward call feeds."""

    def __init__(self, model):
        self.calls: list[int] = []
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(ids.shape[-1])

    def close(self):
        self._handle.remove()


@pytest.mark.parametrize("chunk", [4, 512])  # 4: the kept last rows span several chunks
@pytest.mark.parametrize("arch", ARCHES)
def test_step_after_a_pop_feeds_exactly_one_token(loaded, arch, chunk):
    engine = Engine(loaded[arch], top_k=TOP_K, prefill_chunk=chunk)
    prompt = engine.encode(PROMPT)
    engine.prefill(prompt)
    spy = FedTokens(engine.model)
    try:

        def fed(prefix, token) -> int:
            """Tokens the engine's one call fed (check_step's own reference pass comes second)."""
            spy.calls.clear()
            check_step(engine, prefix, token)
            assert len(spy.calls) == 2
            return spy.calls[0]

        a = list(prompt)
        for token in (12, 40, 7):
            assert fed(a, token) == 1
            a.append(token)
        # Pop, then another candidate (a sibling): crop by one, feed ONE token.
        for prefix, token in [
            (a[:-1], 99),  # pop one
            (a[:-1], 98),  # and another sibling there
            (a[:-3], 5),  # pop three: the parent is the prompt's tip
            (prompt[:-1], 21),  # pop into the prompt (the prefill kept its last rows)
        ]:
            assert fed(prefix, token) == 1, f"{prefix[-2:]} + {token}"
        # An unexplored parent whose logits nobody computed: still ONE call (two tokens).
        assert fed(prompt[:-4] + [77], 6) == 2
    finally:
        spy.close()


@pytest.mark.parametrize("arch", ARCHES)
def test_kept_logits_are_bounded_by_cache_size(loaded, arch):
    engine = Engine(loaded[arch], top_k=TOP_K, cache_size=3)
    prompt = engine.encode(PROMPT)
    engine.prefill(prompt)
    assert len(engine._logits) == 3
    for t in range(10, 16):
        engine.step(prompt, t)
        assert len(engine._logits) <= 3 and len(engine._lines) <= 3
    check_step(engine, prompt, 30)  # the parent stays recent: its logits are still kept


# ---------------------------------------------------------------- the KV cache is really used
@pytest.mark.parametrize("arch", ARCHES)
def test_cache_argument_is_not_silently_ignored(loaded, arch):
    """transformers before 5.24 took no `cache=` argument and would drop it into **kwargs
    silently: the step would then see the token alone. It must see the cached prefix."""
    from transformers import DynamicCache

    engine = Engine(loaded[arch], top_k=TOP_K)
    model, prompt, token = engine.model, engine.encode(PROMPT), 12
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
        stepped = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True).logits[0, -1]
        alone = model(input_ids=torch.tensor([[token]])).logits[0, -1]
        full = model(input_ids=torch.tensor([prompt + [token]])).logits[0, -1]
    assert cache.get_seq_length() == len(prompt) + 1
    assert torch.allclose(stepped, full, atol=1e-4)
    assert not torch.allclose(stepped, alone, atol=1e-2)
    # The engine's own step after its prefill: equal to the full pass, not to the token alone.
    engine.prefill(prompt)
    out = engine.step(prompt, token)
    check_distribution(out.next, full_probs(engine, prompt + [token])[-1])
    lone = full_probs(engine, [token])[-1]
    assert list(out.next.top_ids) != torch.argsort(lone, descending=True)[:TOP_K].tolist()


# ---------------------------------------------------------------- only real tokens
def test_padding_rows_of_the_head_never_show(tiny_models):
    """Qwen2.5 has 151,936 logit rows for 151,665 ids; here 16 padding rows with large weights
    that would take the top ranks and most of the mass if the engine did not cut them off."""
    loaded = load_model(str(tiny_models["qwen2-padded"]), device="cpu")
    real = len(loaded.tokenizer)
    engine = Engine(loaded, top_k=TOP_K, prefill_chunk=4)
    assert loaded.vocab_size == real + 16 and engine.vocab_size == real
    prompt = engine.encode(PROMPT)
    with torch.no_grad():
        raw = engine.model(input_ids=torch.tensor([prompt])).logits[0]
    assert bool((raw.argmax(-1) >= real).all()), "the padding rows would win without the cut"
    probs = full_probs(engine, prompt)  # float64 over the real ids only
    for i, out in enumerate(engine.prefill(prompt)):
        check_distribution(out.next, probs[i])
        if i:
            check_token(out.token_prob, out.token_rank, probs[i - 1], prompt[i])
    a = list(prompt)
    for token in (12, 40):
        check_step(engine, a, token)
        a.append(token)
    check_step(engine, prompt[:-2], 99)  # a crop: the parent's logits re-run in the same call
    # The logit lens: its last layer is the model's own distribution over the real ids.
    assert engine.capabilities.layer_lens
    ids = engine.step(a, 7).next.top_ids[:4]
    lens = engine.analyze(a + [7], lens_ids=ids)
    expected = full_probs(engine, a + [7])[-1][list(ids)]
    assert lens.lens_probs[-1] == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-9)


# ---------------------------------------------------------------- a logit lens that fails closed
@pytest.mark.parametrize("arch", ARCHES)
def test_plain_heads_pass_the_lens_check(loaded, arch):
    caps = Engine(loaded[arch], top_k=TOP_K).capabilities
    assert caps.layer_lens and caps.layer_lens_note is None


def test_soft_capped_logits_turn_the_lens_off(tiny_models):
    """Gemma 2 soft-caps its logits after the head: a lens of its last layer would not be the
    distribution the model gives, so the engine offers no lens numbers at all for it."""
    loaded = load_model(str(tiny_models["gemma2"]), device="cpu")
    engine = Engine(loaded, top_k=TOP_K)
    caps = engine.capabilities
    assert not caps.layer_lens and caps.influence
    assert "not available" in caps.layer_lens_note and "\n" not in caps.layer_lens_note
    prompt = engine.encode(PROMPT)
    out, result = engine.step_with_analysis(prompt, 12, influence=False, lens_count=5)
    assert result.lens_ids is None and result.lens_probs is None
    assert engine.analyze(prompt + [12], lens_ids=out.next.top_ids[:3]) == Analysis()
    assert engine.forward_passes == 1, "a lens-only analysis needs no model call"
    # The distributions themselves are the model's (soft-capped) output.
    check_distribution(out.next, full_probs(engine, prompt + [12])[-1])


# ---------------------------------------------------------------- sampling: batched continuations
GREEDY = {"tiny temperature": SamplingConfig(temperature=1e-4), "top-k 1": SamplingConfig(top_k=1)}


def tokens_of(drawn) -> list[list[int]]:
    return [[t for t, _ in c] for c in drawn]


def check_same_output(got, expected) -> None:
    """`got` (from Engine.sample) equals `expected` (Engine.step) within 1e-5."""
    assert got.token_prob == pytest.approx(expected.token_prob, abs=1e-5, rel=1e-5)
    assert got.token_rank == expected.token_rank or abs(got.token_prob - expected.token_prob) < 1e-6
    dist, ref = got.next, expected.next
    assert len(dist.top_ids) == len(ref.top_ids)
    assert dist.top_probs == pytest.approx(ref.top_probs, abs=1e-5)
    probs = dist.top_probs
    for i, (a, b) in enumerate(zip(dist.top_ids, ref.top_ids)):  # equal, up to a swap of near-ties
        assert a == b or any(abs(probs[i] - probs[j]) < 1e-6 for j in (i - 1, i + 1) if 0 <= j < len(probs))
    assert dist.entropy == pytest.approx(ref.entropy, abs=1e-5)
    assert dist.norm_entropy == pytest.approx(ref.norm_entropy, abs=1e-5)


class FedShapes:
    """Spy on the model: the shape of the input ids of each forward call."""

    def __init__(self, model):
        self.shapes: list[tuple[int, ...]] = []
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.shapes.append(tuple(ids.shape))

    def close(self):
        self._handle.remove()


def greedy_by_steps(engine, prompt, n) -> list[int]:
    """n tokens of greedy decoding: the top candidate of each Engine.step, one after another."""
    tokens, out = list(prompt), engine.prefill(prompt)[-1]
    for _ in range(n):
        token = out.next.top_ids[0]
        out = engine.step(tokens, token)
        tokens.append(token)
    return tokens[len(prompt):]


@pytest.mark.parametrize("name", GREEDY)
@pytest.mark.parametrize("arch", ARCHES)
def test_sample_at_tiny_temperature_or_top_k_1_is_greedy(loaded, arch, name):
    engine = Engine(loaded[arch], top_k=TOP_K)
    prompt = engine.encode(PROMPT)
    engine.prefill(prompt)
    drawn = engine.sample(prompt, count=3, steps=8, settings=GREEDY[name], seed=5, stop_ids=frozenset())
    greedy = greedy_by_steps(Engine(loaded[arch], top_k=TOP_K), prompt, 8)
    assert tokens_of(drawn) == [greedy] * 3


@pytest.mark.parametrize("arch", ARCHES)
def test_sampled_outputs_equal_engine_step(loaded, arch):
    """Every (token, NodeOutput) a sample returns is what Engine.step gives for that node."""
    engine = Engine(loaded[arch], top_k=TOP_K)
    prompt = engine.encode(PROMPT)
    engine.prefill(prompt)
    drawn = engine.sample(prompt, count=4, steps=6, settings=SamplingConfig(temperature=1.5, top_p=0.95),
                          seed=7, stop_ids=frozenset())
    assert [len(c) for c in drawn] == [6] * 4
    ref = Engine(loaded[arch], top_k=TOP_K)
    for continuation in drawn:
        tokens = list(prompt)
        for token, out in continuation:
            check_same_output(out, ref.step(tokens, token))
            tokens.append(token)
    # ...and against a plain float64 forward pass, for one continuation.
    tokens = prompt + tokens_of(drawn)[0]
    probs = full_probs(engine, tokens)
    for i, (token, out) in enumerate(drawn[0]):
        at = len(prompt) + i
        check_distribution(out.next, probs[at])
        check_token(out.token_prob, out.token_rank, probs[at - 1], token)


@pytest.mark.parametrize("model", ["qwen2-padded", "gemma2"])
def test_sample_on_padded_and_sliding_window_models(tiny_models, model):
    """Padding rows of the head are never drawn nor shown; gemma2's sliding-window cache
    layers (forked by deep copy) batch as well."""
    engine = Engine(load_model(str(tiny_models[model]), device="cpu"), top_k=TOP_K)
    prompt = engine.encode(PROMPT)
    engine.prefill(prompt)
    drawn = engine.sample(prompt, count=3, steps=4, settings=SamplingConfig(temperature=2.0), seed=1,
                          stop_ids=frozenset())
    ref = Engine(engine.loaded, top_k=TOP_K)
    for continuation in drawn:
        tokens = list(prompt)
        for token, out in continuation:
            assert token < engine.vocab_size and max(out.next.top_ids) < engine.vocab_size
            check_same_output(out, ref.step(tokens, token))
            tokens.append(token)


def test_same_seed_same_samples_another_seed_differs(loaded):
    engine = Engine(loaded["qwen2"], top_k=TOP_K)
    prompt = engine.encode(PROMPT)
    engine.prefill(prompt)
    settings = SamplingConfig(temperature=1.5)

    def draw(eng, seed):
        return tokens_of(eng.sample(prompt, count=4, steps=8, settings=settings, seed=seed, stop_ids=frozenset()))

    first = draw(engine, 11)
    assert draw(engine, 11) == first
    assert draw(Engine(loaded["qwen2"], top_k=TOP_K), 11) == first  # a fresh engine, nothing cached
    assert draw(engine, 12) != first
    assert len({tuple(c) for c in first}) > 1, "the rows of one batch draw independently"


def bitmask(ids, size: int) -> bytes:
    """One bit per id, little-endian, as a regex constraint's matcher gives them."""
    mask = bytearray((size + 7) // 8)
    for i in ids:
        mask[i >> 3] |= 1 << (i & 7)
    return bytes(mask)


def test_sample_draws_only_what_allowed_lets_through(loaded):
    """`allowed` (a regex constraint, in the worker): only its ids are drawn, their numbers
    stay the model's own (unmasked), and a row where nothing may follow ends there."""
    engine = Engine(loaded["qwen2"], top_k=TOP_K)
    prompt = engine.encode(PROMPT)
    top = engine.prefill(prompt)[-1].next.top_ids
    odd = [i for i in range(engine.vocab_size) if i % 2 and i not in top[:5]]
    asked = []

    def allowed(drawn):
        asked.append(tuple(drawn))
        return b"" if len(drawn) >= 3 else bitmask(odd, engine.vocab_size)

    drawn = engine.sample(prompt, count=4, steps=6, settings=SamplingConfig(temperature=1.0), seed=2,
                          allowed=allowed)
    assert [len(c) for c in drawn] == [3] * 4  # nothing allowed after three: each row ends
    for row in drawn:
        tokens = [t for t, _ in row]
        assert all(t % 2 and t not in top[:5] for t in tokens), tokens
        for k, (token, out) in enumerate(row):
            own = engine.step(prompt + tokens[:k], token)  # the model's own, unmasked numbers
            assert out.token_prob == pytest.approx(own.token_prob, rel=1e-4)
            assert out.token_rank == own.token_rank
    assert () in asked and len(asked) == 4 * 4  # each row asked at each of its steps, and once more
    free = tokens_of(engine.sample(prompt, count=4, steps=3, settings=SamplingConfig(temperature=1.0), seed=2))
    assert any(t % 2 == 0 or t in top[:5] for c in free for t in c)  # the check can fail


@pytest.mark.parametrize("arch", ARCHES)
def test_a_stop_id_ends_a_continuation(loaded, arch):
    engine = Engine(loaded[arch], top_k=TOP_K)
    prompt = engine.encode(PROMPT)
    greedy = greedy_by_steps(engine, prompt, 6)
    stop = greedy[2]
    drawn = engine.sample(prompt, count=2, steps=6, settings=SamplingConfig(top_k=1), seed=0,
                          stop_ids=frozenset({stop}))
    assert tokens_of(drawn) == [greedy[: greedy.index(stop) + 1]] * 2  # the stop token included
    # Drawn freely: a continuation ends exactly after its first stop token; the batch shrinks
    # as rows end, still one call per step.
    stops = frozenset(engine.prefill(prompt)[-1].next.top_ids[:3])
    calls = engine.model_calls
    drawn = engine.sample(prompt, count=8, steps=6, settings=SamplingConfig(temperature=1.5), seed=3,
                          stop_ids=stops)
    lengths = [len(c) for c in drawn]
    assert engine.model_calls - calls == max(lengths)
    assert min(lengths) < 6, "some continuation stopped early"
    for c in tokens_of(drawn):
        assert not set(c[:-1]) & stops
        assert len(c) == 6 or c[-1] in stops


@pytest.mark.parametrize("arch", ARCHES)
def test_sample_is_one_batched_model_call_per_step(loaded, arch):
    engine = Engine(loaded[arch], top_k=TOP_K)
    prompt = engine.encode(PROMPT)
    engine.prefill(prompt)
    engine.step(prompt, 12)
    lines = [line.tokens for line in engine._lines]
    kept = list(engine._logits)
    passes, calls = engine.forward_passes, engine.model_calls
    spy = FedShapes(engine.model)
    try:
        engine.sample(prompt, count=4, steps=5, settings=SamplingConfig(), seed=0, stop_ids=frozenset())
        assert spy.shapes == [(4, 1)] * 5, "one call per step, the 4 continuations in one batch"
    finally:
        spy.close()
    assert engine.forward_passes - passes == 5 and engine.model_calls - calls == 5
    # The engine's LRU of single-sequence lines and kept logits holds what it held (the
    # prefix's logits were used: they are the most recent), no sampled node.
    assert [line.tokens for line in engine._lines] == lines
    assert set(engine._logits) == set(kept) and list(engine._logits)[-1] == tuple(prompt)
    check_step(engine, prompt + [12], 40)  # the lines' caches are intact
    check_step(engine, prompt, 7)


def test_sample_from_an_uncached_prefix_makes_it_first(loaded):
    engine = Engine(loaded["llama"], top_k=TOP_K)
    prompt = engine.encode(PROMPT)
    spy = FedShapes(engine.model)
    try:
        drawn = engine.sample(prompt, count=2, steps=3, settings=SamplingConfig(top_k=1), seed=0,
                              stop_ids=frozenset())
    finally:
        spy.close()
    assert spy.shapes == [(1, len(prompt))] + [(2, 1)] * 3
    assert engine.forward_passes == engine.model_calls == 4
    assert tokens_of(drawn)[0] == greedy_by_steps(Engine(loaded["llama"], top_k=TOP_K), prompt, 3)
    with pytest.raises(ValueError):
        engine.sample([], count=1, steps=1, settings=SamplingConfig(), seed=0, stop_ids=frozenset())
    assert engine.sample(prompt, count=2, steps=0, settings=SamplingConfig(), seed=0) == [[], []]


def test_drawn_tokens_follow_the_sampler(loaded):
    """4,000 one-token draws: only the survivors of the sampler (computed from the cached
    top-64 by tokentree.sampling, exact here) are drawn, at their probabilities."""
    engine = Engine(loaded["qwen2"], top_k=64)
    prompt = engine.encode(PROMPT)
    last = engine.prefill(prompt)[-1].next
    settings = SamplingConfig(temperature=2.0, top_k=6, min_p=0.05)
    kept, exact = survivors(last.top_ids, last.top_probs, settings, 1 - sum(last.top_probs))
    assert exact and len(kept) >= 3
    n = 4000
    drawn = engine.sample(prompt, count=n, steps=1, settings=settings, seed=9, stop_ids=frozenset())
    counts = Counter(c[0][0] for c in drawn)
    assert set(counts) <= set(kept)
    for token, p in kept.items():
        assert counts[token] / n == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n) + 1e-3)


def test_stop_ids(loaded):
    engine = Engine(loaded["qwen2"], top_k=TOP_K)
    tok = engine.loaded.tokenizer
    eos = engine.stop_ids("eos")
    assert eos == {tok.eos_token_id}
    newline = {i for i in range(len(tok)) if "\n" in tok.decode([i])}
    assert newline and engine.stop_ids("line") == eos | newline
    assert engine.stop_ids("line") is engine.stop_ids("line")  # computed once
    with pytest.raises(ValueError, match="fill_stop"):
        engine.stop_ids("eol")

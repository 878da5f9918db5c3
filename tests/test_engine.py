"""Engine results against fresh, cache-free forward passes computed here with plain tensor ops:
a plain Hugging Face forward, softmax in float64 over the tokenizer's real vocabulary."""

from __future__ import annotations

import math

import pytest
import torch

from tokentree.lm import Engine, load_model
from tokentree.outputs import Analysis

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
    assert all(row.dtype == torch.float32 for row in bf16._logits.values())
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

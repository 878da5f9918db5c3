"""Engine results against fresh, cache-free forward passes computed here with plain tensor ops."""

from __future__ import annotations

import math

import pytest
import torch

from tokentree.lm import Engine, load_model

ARCHES = ("qwen2", "gpt2", "llama")
PROMPT = "Natalia sold 48 clips in April."
TOP_K = 8


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {arch: load_model(str(tiny_models[arch]), device="cpu") for arch in ARCHES}


def full_probs(model, tokens) -> torch.Tensor:
    """Next-token probabilities at every position from one plain forward pass, no cache."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(tokens)])).logits[0]
    return torch.softmax(logits.double(), dim=-1)


def check_distribution(dist, probs: torch.Tensor, k: int = TOP_K) -> None:
    expected = torch.sort(probs, descending=True).values[:k]
    assert len(dist.top_ids) == k
    assert dist.top_probs == pytest.approx(expected.tolist(), abs=1e-5)
    # The ids are the ones carrying those probabilities (robust to near-ties in order).
    assert probs[list(dist.top_ids)].tolist() == pytest.approx(list(dist.top_probs), abs=1e-5)
    entropy = -(probs * probs.log()).sum().item()
    assert dist.entropy == pytest.approx(entropy, abs=1e-4)
    assert dist.norm_entropy == pytest.approx(entropy / math.log(probs.numel()), abs=1e-5)


def check_token(prob, rank, probs: torch.Tensor, token: int) -> None:
    p = probs[token].item()
    assert prob == pytest.approx(p, rel=1e-4, abs=1e-7)
    # rank = 1 + tokens strictly more likely; allow for float noise among near-equal values.
    lo = int((probs > p + 1e-6).sum()) + 1
    hi = int((probs > p - 1e-6).sum())
    assert lo <= rank <= max(lo, hi)


def check_step(engine, prefix, token) -> None:
    before = engine.forward_passes
    out = engine.step(prefix, token)
    assert engine.forward_passes == before + 1, "a step is exactly one forward call"
    probs = full_probs(engine.model, list(prefix) + [token])
    check_distribution(out.next, probs[-1])
    if prefix:
        check_token(out.token_prob, out.token_rank, probs[-2], token)
    else:
        assert out.token_prob is None and out.token_rank is None
    return out


@pytest.mark.parametrize("arch", ARCHES)
def test_prefill_is_one_pass_and_matches_a_full_pass(loaded, arch):
    engine = Engine(loaded[arch], top_k=TOP_K)
    tokens = engine.encode(PROMPT)
    outputs = engine.prefill(tokens)
    assert engine.forward_passes == 1
    assert len(outputs) == len(tokens)
    probs = full_probs(engine.model, tokens)
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
    probs = full_probs(engine.model, prompt)[-1]
    unlikely = int(torch.argmin(probs))
    assert unlikely not in last.next.top_ids
    out = check_step(engine, prompt, unlikely)
    assert out.token_rank > TOP_K
    # ...also when the parent's logits are no longer held (after a crop).
    check_step(engine, prompt[:-1], int(torch.argmin(full_probs(engine.model, prompt[:-1])[-1])))


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
    assert torch.allclose(torch.tensor(lens.influence), torch.tensor(lens_ref.influence), atol=0.05)


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


@pytest.mark.parametrize("arch", ARCHES)
def test_step_after_a_pop_feeds_exactly_one_token(loaded, arch):
    engine = Engine(loaded[arch], top_k=TOP_K)
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

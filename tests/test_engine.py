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


def test_llama_encode_adds_bos_and_specials_are_known(loaded):
    llama = Engine(loaded["llama"])
    tok = llama.loaded.tokenizer
    ids = llama.encode("Natalia")
    assert ids[0] == tok.bos_token_id
    assert tok.bos_token_id in llama.special_ids and tok.eos_token_id in llama.special_ids
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
    assert bf16._lines[-1].logits.dtype == torch.float32
    lens = bf16.analyze(prompt + [12], influence=True, lens_ids=ref.next.top_ids[:3])
    lens_ref = fp32.analyze(prompt + [12], influence=True, lens_ids=ref.next.top_ids[:3])
    assert torch.allclose(torch.tensor(lens.lens_probs), torch.tensor(lens_ref.lens_probs), atol=0.05)
    assert torch.allclose(torch.tensor(lens.influence), torch.tensor(lens_ref.influence), atol=0.05)

"""The server backend against a REAL OpenAI-compatible server: llama-cpp-python's, serving an
F32 GGUF conversion of the tiny Qwen2 model on loopback. Numbers are checked against a plain
forward pass of the Hugging Face model the GGUF was converted from."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fake_engine import new_session
from fault_server import FaultServer
from llama_server import LlamaServer, free_port
from tokentree.config import Config, ExploreConfig, SamplingConfig
from tokentree.core.explorer import Explorer
from tokentree.lm.server import NotScorable, ServerError, connect
from tokentree.store import Store
from tokentree.store.maintenance import check

PROMPT = "Once upon a time, the cat"


@pytest.fixture(scope="module")
def reference(tiny_model):
    """A plain forward pass of the source model: prefix -> float64 next-token probabilities."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def probs(ids):
        with torch.no_grad():
            logits = model(torch.tensor([list(ids)])).logits[0, -1, : len(tokenizer)]
        return torch.softmax(logits.double(), -1)

    return tokenizer, probs


@pytest.fixture
def backend(llama_server, tiny_model):
    b = connect(llama_server.url, model=llama_server.model, tokenizer=str(tiny_model), top_logprobs=20)
    yield b
    b.close()


def _agree(dist, exact, *, rel=1e-3):
    assert dist.top_ids, "the server sent no candidates"
    for token, p in zip(dist.top_ids, dist.top_probs):
        assert p == pytest.approx(exact[token].item(), rel=rel), token
    true_entropy = float(-(exact * exact.clamp_min(1e-300).log()).sum())
    assert not dist.exact
    assert dist.entropy <= true_entropy + 1e-6  # a lower bound, never more


def test_connect_reads_the_server(backend, llama_server):
    assert backend.dialect.ids_prompt is False  # llama-cpp-python takes text prompts only
    assert backend.dialect.tokenize == "extras"
    assert backend.dialect.prompt_logprobs is False
    caps = backend.capabilities
    assert not caps.influence and not caps.layer_lens and not caps.exact_entropy
    assert "needs a local model" in caps.influence_note
    assert backend.info.fingerprint.startswith(f"server:127.0.0.1:{llama_server.port}/")


def test_a_branch_agrees_with_the_local_model(backend, reference):
    tokenizer, probs = reference
    ids = backend.encode(PROMPT)
    assert ids == tokenizer.encode(PROMPT)
    outputs = backend.prefill(ids)
    assert all(o is None for o in outputs[:-1])  # the prompt's tokens: n/a until visited
    _agree(outputs[-1].next, probs(ids))
    prefix = list(ids)
    for _ in range(4):  # greedy steps: the same token ids, each scored as the model scores it
        exact = probs(prefix)
        token = int(exact.argmax())
        out = backend.step(prefix, token)
        assert out.token_prob == pytest.approx(exact[token].item(), rel=1e-3)
        assert out.token_rank == 1
        prefix.append(token)
        _agree(out.next, probs(prefix))


def test_a_step_after_a_pop_asks_for_the_parent_it_lacks(backend, reference):
    tokenizer, probs = reference
    ids = backend.encode(PROMPT)
    exact = probs(ids[:-1])
    out = backend.step(ids[:-1], ids[-1])  # the parent was never asked for: asked in parallel
    rank = int((exact > exact[ids[-1]]).sum()) + 1
    if rank <= len(out.next.top_ids):
        assert out.token_prob == pytest.approx(exact[ids[-1]].item(), rel=1e-3)
        assert out.token_rank == rank


def test_text_that_reads_as_other_tokens_is_not_scored(backend, reference):
    tokenizer, _ = reference
    # Two tokens whose joined text the tokenizer reads as ONE token: a text-only server would
    # score another sequence, so the node is refused rather than shown with wrong numbers.
    vocab = tokenizer.get_vocab()
    pair = None
    for text in sorted(vocab, key=len):
        word = tokenizer.convert_tokens_to_string([text])
        if len(word) >= 3 and len(tokenizer.encode(word)) == 1:
            a, b = tokenizer.encode(word[:1]), tokenizer.encode(word[1:])
            if len(a) == 1 and len(b) == 1:
                pair = a + b
                break
    assert pair is not None
    with pytest.raises(NotScorable, match="not scorable on this server"):
        backend.step(pair[:1], pair[1])


def test_wrong_model_name_is_one_line(llama_server):
    with pytest.raises(ServerError, match="does not serve model 'nope'; it serves: ") as info:
        connect(llama_server.url, model="nope")
    assert "\n" not in str(info.value)


def test_nothing_listening_is_one_line():
    with pytest.raises(ServerError, match=r"cannot reach server 127\.0\.0\.1:\d+") as info:
        connect(f"http://127.0.0.1:{free_port()}", timeout=2)
    assert info.value.transient and "\n" not in str(info.value)


@pytest.mark.parametrize("mode, message", [
    ("garbage", "answered with something that is not JSON"),
    ("no-logprobs", "returned no log-probabilities"),
])
def test_bad_answers_are_one_line(mode, message):
    server = FaultServer(mode)
    try:
        with pytest.raises(ServerError, match=message) as info:
            connect(server.url, timeout=5)
        assert "\n" not in str(info.value)
    finally:
        server.close()


def test_the_api_key_never_shows(monkeypatch):
    server = FaultServer("echo-auth")
    monkeypatch.setenv("TT_TEST_KEY", "sk-secret-123")
    try:
        with pytest.raises(ServerError) as info:
            connect(server.url, api_key_env="TT_TEST_KEY", timeout=5)
        assert "sk-secret-123" not in str(info.value) and "***" in str(info.value)
    finally:
        server.close()
    monkeypatch.delenv("TT_TEST_KEY")
    with pytest.raises(ServerError, match="TT_TEST_KEY"):
        connect(server.url, api_key_env="TT_TEST_KEY")


def test_sampling_draws_from_the_top_k_deterministically(backend):
    ids = backend.encode(PROMPT)
    settings = SamplingConfig(temperature=0.8)
    a = backend.sample(ids, count=2, steps=3, settings=settings, seed=7)
    b = backend.sample(ids, count=2, steps=3, settings=settings, seed=7)
    assert [[t for t, _ in c] for c in a] == [[t for t, _ in c] for c in b]
    assert all(len(c) == 3 for c in a)
    for c in a:  # each drawn token is one the server listed at its parent
        prefix = tuple(ids)
        for token, out in c:
            assert token in backend._next(prefix).top_ids
            assert out.token_prob is not None
            prefix += (token,)


def _drive(explorer, until, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not until():
        explorer.run_jobs_inline()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: error={explorer.error!r} message={explorer.message!r}")
        time.sleep(0.05)


def test_a_server_killed_mid_session_comes_back(tiny_gguf, tiny_model, tmp_path):
    server = LlamaServer(tiny_gguf, tmp_path / "server.log").start()
    store = Store.open(tmp_path / "s.db")
    try:
        b = connect(server.url, model=server.model, tokenizer=str(tiny_model), top_logprobs=10, timeout=5)
        sid = new_session(store, b, {"story": PROMPT})
        config = Config(explore=ExploreConfig(prefetch=0))
        ex = Explorer(store, sid, config=config, engine=b)
        _drive(ex, lambda: ex.snapshot().candidates)
        ex.append()
        _drive(ex, lambda: not ex.snapshot().waiting)
        recorded = store.events(sid) if hasattr(store, "events") else None

        server.kill()  # SIGKILL in the middle of the session
        ex.append()
        ex.run_jobs_inline()
        assert ex.error and "retrying in" in ex.error and "cannot reach server" in ex.error
        snap = ex.snapshot()
        assert snap.waiting and len(snap.prompt) > 0  # the tree stays browsable
        ex.pop()  # and navigable, from the cache
        assert not ex.snapshot().waiting

        server.start()  # back on the same port
        ex.append()
        _drive(ex, lambda: not ex.snapshot().waiting and ex.error is None)
        assert ex.message == "the server answers again" or ex.error is None
        if recorded is not None:
            assert store.events(sid)[: len(recorded)] == recorded  # nothing recorded is lost
        assert check(store) == []
    finally:
        store.close()
        server.stop()


def test_the_real_command_explores_resumes_and_exports_through_the_server(llama_server, tiny_model, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from test_tui_pty import CTRL_Q, RIGHT, Terminal

    prompt = tmp_path / "story.txt"
    prompt.write_text(PROMPT, encoding="utf-8")
    args = ["--server", llama_server.url, "--model", llama_server.model, "--tokenizer", str(tiny_model)]
    term = Terminal([*args, "--input", str(prompt)], tmp_path)
    # An entropy from the top-k is shown as a bound (\u2265); the status bar says where the
    # numbers come from, once idle (while the model works the busy message takes that room).
    term.wait_for(PROMPT, "next token", "\u2265 ", " idle ", f"127.0.0.1:{llama_server.port}")
    term.keys(RIGHT, settle="+1 ")
    # Probability view, entropy view; the influence view is skipped with its reason.
    term.keys("e", "e", "e", settle="needs a local model")
    term.keys(CTRL_Q)
    assert term.finish() == 0

    again = Terminal([*args, "--resume", "last"], tmp_path)
    again.wait_for(PROMPT, "+1 ", "\u2265 ")
    again.keys(CTRL_Q)
    assert again.finish() == 0

    exe = Path(sys.executable).with_name("tokentree")
    out = subprocess.run([str(exe), "export", "--format", "json"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    flags = [n["next"]["entropy_exact"] for n in doc["nodes"] if n.get("next")]
    assert flags and not any(flags)

"""Comparisons: a branch diff and a second model, checked against independent computations
(the fake model's own probabilities, two tiny real models run directly through torch), the
export --diff through the real CLI, and the refusals (unknown branch, another vocabulary)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from fake_engine import FakeEngine, FakeLoaded, new_session
from pty_signals import as_from_a_terminal

from tokentree.config import Config, DisplayConfig
from tokentree.core.explorer import Explorer
from tokentree.errors import ModelLoadError
from tokentree.features.compare.diff import (
    DiffToken,
    Totals,
    branch_diff,
    diff_table,
    fork_depth,
)
from tokentree.features.compare.divergence import (
    REST_EPSILON,
    compare_prob,
    disagreement,
    divergence,
)
from tokentree.paths import default_db_path
from tokentree.store import Store

CONFIG = Config(display=DisplayConfig(tokens_to_show=5))


class OtherFake(FakeEngine):
    """A second fake model with the same vocabulary and other distributions."""

    def __init__(self, **kw) -> None:
        super().__init__(FakeLoaded(name="fake-other", fingerprint="fake-other|float32"), **kw)

    def _probs(self, prefix) -> list[float]:
        return super()._probs(("other", *prefix))


@pytest.fixture
def store():
    s = Store.open(default_db_path())
    yield s
    s.close()


def forked_session(store, engine):
    """Branch "cat" (+3 tokens), "cat (2)" forked from it after one appended token (+2 of
    its own), and "dog" (another root). Returns (session id, {name: branch})."""
    sid = new_session(store, engine, {"cat": " the cat sat", "dog": " a dog and"})
    branches = {b.name: b for b in store.branches(sid)}
    cat = branches["cat"].id
    for token in (4, 5, 6):  # " on", " mat", "\n"
        store.append_token(sid, cat, token)
    dup = store.duplicate_branch(sid, cat)
    store.rename_branch(sid, dup, "cat (2)")
    store.pop_token(sid, dup)
    store.pop_token(sid, dup)
    for token in (9, 10):  # " dog", "ran"
        store.append_token(sid, dup, token)
    return sid, {b.name: b for b in store.branches(sid)}


def explorer(store, sid, engine, **kw) -> Explorer:
    ex = Explorer(store, sid, config=CONFIG, model_name=engine.loaded.name, **kw)
    ex.attach_engine(engine)
    ex.run_jobs_inline()
    return ex


def plain_logps(engine: FakeEngine, tokens: list[int]) -> list[float | None]:
    """Each token's log-probability straight from the fake model (no cache, no tokentree)."""
    return [None] + [math.log(engine._probs(tokens[:k])[tokens[k]]) for k in range(1, len(tokens))]


# --------------------------------------------------------------------------- branch diff


def test_diff_from_the_fork_point_against_a_plain_computation(store):
    engine = FakeEngine()
    sid, branches = forked_session(store, engine)
    ex = explorer(store, sid, engine)
    a, b = branches["cat"], branches["cat (2)"]
    diff = ex.features.compare.branch_diff(a.id, b.id)

    ta = [n.token_id for n in store.path_nodes(a.node_id)]
    tb = [n.token_id for n in store.path_nodes(b.node_id)]
    shared = next(k for k in range(min(len(ta), len(tb))) if ta[k] != tb[k])
    assert diff.shared == shared == 4  # the prompt's 3 tokens and " on"
    assert [t.token_id for t in diff.a.tokens] == ta[shared:] == [5, 6]
    assert [t.token_id for t in diff.b.tokens] == tb[shared:] == [9, 10]
    la, lb = plain_logps(engine, ta)[shared:], plain_logps(engine, tb)[shared:]
    for row, x, y in zip(diff.rows, la, lb):
        assert row.a.logprob == pytest.approx(x, abs=1e-5) and row.b.logprob == pytest.approx(y, abs=1e-5)
        assert row.delta == pytest.approx(x - y, abs=1e-5)
    assert diff.a.totals.logprob == pytest.approx(sum(la), abs=1e-5)
    assert diff.a.totals.perplexity == pytest.approx(math.exp(-sum(la) / len(la)), rel=1e-5)
    assert diff.b.totals.perplexity == pytest.approx(math.exp(-sum(lb) / len(lb)), rel=1e-5)
    table = diff_table(diff)
    assert table.totals[0][5] == f"{sum(la) - sum(lb):+.3f}"
    assert [r[1] for r in table.rows] == ["\u00b7mat", "\u23ce"] and [r[3] for r in table.rows] == ["\u00b7dog", "ran"]


def test_diff_with_unequal_lengths_another_root_and_the_same_node(store):
    engine = FakeEngine()
    sid, branches = forked_session(store, engine)
    ex = explorer(store, sid, engine)
    cat, dog = branches["cat"], branches["dog"]
    diff = ex.features.compare.branch_diff(cat.id, dog.id)
    assert diff.shared == 0 and diff.context == ""
    assert len(diff.rows) == 6 and diff.rows[-1].b is None and diff.rows[-1].delta is None
    # A first token has no distribution before it: n/a, not pending, not in the totals.
    assert diff.a.tokens[0].logprob is None and not diff.a.tokens[0].pending
    assert diff.a.totals.known == 5 and diff.a.totals.missing == 1
    tokens = [n.token_id for n in store.path_nodes(cat.node_id)]
    assert diff.a.totals.logprob == pytest.approx(sum(plain_logps(engine, tokens)[1:]), abs=1e-5)

    dup = store.duplicate_branch(sid, cat.id)
    same = ex.features.compare.branch_diff(cat.id, dup)
    assert same.same and not same.rows and "nothing differs" in diff_table(same).note
    assert ex.features.compare.branch_diff(cat.id, 10**6) is None  # a branch that is gone


def test_diff_math_on_plain_values():
    class N:
        def __init__(self, i, t):
            self.id, self.token_id, self.prefix_key = i, t, bytes([i])

    a = [N(1, 1), N(2, 2), N(3, 3), N(4, 4)]
    b = [N(1, 1), N(2, 2), N(5, 7)]
    probs = {bytes([2]): 0.5, bytes([3]): 0.25, bytes([5]): 0.125}  # node 4 not computed yet
    diff = branch_diff("a", 1, a, "b", 2, b, probs=probs, text=str)
    assert fork_depth([1, 2, 3], [1, 2, 5]) == 2 and diff.shared == 2
    first, second = diff.rows
    assert first.a.logprob == math.log(0.25) and first.b.logprob == math.log(0.125)
    assert first.delta == pytest.approx(math.log(2))
    assert second.a.pending and second.a.logprob is None and second.b is None
    assert diff.a.totals == Totals(tokens=2, known=1, logprob=math.log(0.25))
    assert diff.b.totals.perplexity == pytest.approx(8.0)
    cells = diff_table(diff).rows
    assert cells[1][2] == "\u2026" and cells[1][5] == ""  # still computing; no difference yet
    assert DiffToken(0, "x", None).logprob is None


# --------------------------------------------------------------------------- KL and TV


def kl(p, q):
    return sum(x * math.log(x / y) for x, y in zip(p, q) if x > 0)


def tv(p, q):
    return 0.5 * sum(abs(x - y) for x, y in zip(p, q))


def test_divergence_is_exact_with_the_whole_vocabulary_and_a_bound_with_top_k():
    p = [0.5, 0.2, 0.15, 0.1, 0.05]
    q = [0.3, 0.3, 0.1, 0.2, 0.1]
    ids = list(range(5))
    full = divergence(ids, p, ids, q)
    assert full.exact and full.kl == pytest.approx(kl(p, q)) and full.tv_low == pytest.approx(tv(p, q))
    # Top 3 of each: shared {0, 1}; every other id merged into "rest".
    d = divergence([0, 1, 2], p[:3], [0, 1, 3], [0.3, 0.3, 0.2])
    assert not d.exact and d.shared == 2
    coarse_p, coarse_q = [0.5, 0.2, 0.3], [0.3, 0.3, 0.4]
    assert d.kl == pytest.approx(kl(coarse_p, coarse_q)) and d.kl <= kl(p, q)
    assert d.tv_low == pytest.approx(tv(coarse_p, coarse_q)) and d.tv_low <= tv(p, q) <= d.tv_high
    assert d.tv_high == pytest.approx(0.5 * (0.2 + 0.1 + 0.3 + 0.4))
    # The second model's probability of a token outside its top K: an upper bound.
    assert compare_prob(2, [0, 1, 3], [0.3, 0.3, 0.2]) == (pytest.approx(0.2), True)
    assert compare_prob(1, [0, 1, 3], [0.3, 0.3, 0.2]) == (0.3, False)
    assert disagreement(0.5, 0.5) == 0 and disagreement(None, 0.5) is None
    assert disagreement(0.5, 0.5 * math.exp(-1.5)) == pytest.approx(0.5)
    assert REST_EPSILON < 1e-4


@pytest.fixture(scope="module")
def twin_models(tiny_models, tmp_path_factory):
    """The tiny Qwen2 model and a second one with other weights (seed 1), same tokenizer."""
    from tiny_model import build_tiny_model

    return tiny_models["qwen2"], build_tiny_model(tmp_path_factory.mktemp("twin") / "qwen2-seed1", "qwen2", seed=1)


def direct_distribution(path: Path, ids: list[int]):
    """The next-token distribution after `ids`, full vocabulary, by a plain forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    real = len(AutoTokenizer.from_pretrained(path))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1, :real].double()
    return torch.softmax(logits, -1).tolist()


@pytest.mark.parametrize("top_k", [64, 100_000])
def test_kl_and_tv_of_two_tiny_models_against_a_direct_computation(store, twin_models, top_k):
    """Two real models, same tokenizer: the explorer's KL and TV at a node (from the cached
    top K of each) against KL and TV computed here from full-vocabulary softmaxes. With
    K >= the vocabulary they are exact; with K = 64 they are the stated bounds, equal to the
    divergence of the coarse partition {shared ids, rest} computed from the full vectors."""
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model

    main = Engine(load_model(str(twin_models[0]), device="cpu", progress=False), top_k=top_k)
    second = Engine(load_model(str(twin_models[1]), device="cpu", progress=False), top_k=top_k)
    assert main.info.vocab_key == second.info.vocab_key and main.info.fingerprint != second.info.fingerprint
    sid = new_session(store, main, {"story": "Once upon a time there was"})
    ex = Explorer(store, sid, config=CONFIG, model_name=main.info.name, engine=main)
    ex.features.compare.set_model(second.info.name, second.info.fingerprint, engine=second)
    ex.run_jobs_inline()
    snap = ex.snapshot()
    got = snap.compare.divergence
    assert got is not None and not snap.compare.waiting

    ids = main.encode("Once upon a time there was")
    p, q = direct_distribution(twin_models[0], ids), direct_distribution(twin_models[1], ids)
    true_kl, true_tv = kl(p, q), tv(p, q)
    if top_k >= len(p):
        assert got.exact
        assert got.kl == pytest.approx(true_kl, rel=1e-4, abs=1e-6)
        assert got.tv_low == pytest.approx(true_tv, abs=1e-5) and got.tv_high == got.tv_low
    else:
        assert not got.exact
        top_p = set(sorted(range(len(p)), key=lambda i: -p[i])[:top_k])
        top_q = set(sorted(range(len(q)), key=lambda i: -q[i])[:top_k])
        shared = sorted(top_p & top_q)
        assert got.shared == len(shared)
        cp = [p[i] for i in shared] + [1 - sum(p[i] for i in shared)]
        cq = [q[i] for i in shared] + [1 - sum(q[i] for i in shared)]
        assert got.kl == pytest.approx(kl(cp, cq), rel=1e-3, abs=1e-5)
        assert got.kl <= true_kl + 1e-5
        assert got.tv_low - 1e-5 <= true_tv <= got.tv_high + 1e-5
    # The column: each candidate's probability under the second model.
    for row in snap.candidates:
        if not row.compare_bound:
            assert row.compare == pytest.approx(q[row.token_id], abs=1e-6)
        else:
            assert q[row.token_id] <= row.compare + 1e-6
    # The disagreement view: |Δ log p| per token, from each model's own token probability.
    while ex.prompt_view != "disagreement":
        ex.features.views.cycle_prompt_view()
    values = [t.value for t in ex.snapshot().prompt]
    assert values[0] is None
    for k in range(1, len(ids)):
        pk, qk = direct_distribution(twin_models[0], ids[:k]), direct_distribution(twin_models[1], ids[:k])
        gap = abs(math.log(pk[ids[k]]) - math.log(qk[ids[k]]))
        assert values[k] == pytest.approx(min(1.0, gap / 3.0), abs=1e-4)


# --------------------------------------------------------------------------- the second model


def test_compare_model_outputs_are_cached_under_its_fingerprint_and_resume_reads_them(store):
    engine, other = FakeEngine(), OtherFake()
    sid, branches = forked_session(store, engine)
    ex = explorer(store, sid, engine)
    ex.features.compare.set_model("fake-other", other.info.fingerprint, engine=other)
    ex.run_jobs_inline()
    before = ex.snapshot()
    assert before.compare.divergence is not None and other.forward_passes == 1  # one pass: the path
    path = store.path_nodes(next(b for b in store.branches(sid) if b.focused).node_id)
    key = path[-1].prefix_key
    stored = store.get_outputs([key], "fake-other|float32")[key]  # its own rows, beside the main model's
    direct = other._output([n.token_id for n in path])
    assert stored.next.top_ids == direct.next.top_ids and stored.token_prob == pytest.approx(direct.token_prob)
    assert store.get_outputs([key], engine.info.fingerprint)[key].next.top_ids == engine._output(
        [n.token_id for n in path]).next.top_ids

    # Resumed with the same compare model: both models' numbers come from the cache, before
    # either model is attached, and attaching them costs no pass.
    again = Explorer(store, sid, config=CONFIG, model_name=engine.loaded.name)
    fresh_main, fresh_other = FakeEngine(), OtherFake()
    again.features.compare.set_model("fake-other", other.info.fingerprint, load=lambda: fresh_other)
    snap = again.snapshot()
    assert snap.compare.loading and snap.compare.divergence == before.compare.divergence
    assert [r.compare for r in snap.candidates] == [r.compare for r in before.candidates]
    again.attach_engine(fresh_main)
    again.run_jobs_inline()
    assert again.features.compare.slot.engine is fresh_other and not again.snapshot().compare.loading
    assert fresh_main.forward_passes == 0 and fresh_other.forward_passes == 0


def test_compare_model_with_another_vocabulary_is_refused(store):
    engine = FakeEngine()
    sid, _ = forked_session(store, engine)
    ex = explorer(store, sid, engine)
    stranger = FakeEngine(FakeLoaded(name="stranger", fingerprint="stranger|f32", vocab_key="othervocab"))
    with pytest.raises(ModelLoadError, match="different vocabulary"):
        ex.features.compare.set_model("stranger", "stranger|f32", engine=stranger)
    # Loading in the worker: the refusal is the status line's error; the model is dropped.
    ex.features.compare.set_model("stranger", "stranger|f32", load=lambda: stranger)
    ex.run_jobs_inline()
    assert ex.features.compare.slot.engine is None and "different vocabulary" in ex.snapshot().status.error
    assert ex.snapshot().compare.failed


def test_disagreement_view_only_with_a_compare_model(store):
    engine = FakeEngine()
    sid, _ = forked_session(store, engine)
    ex = explorer(store, sid, engine)
    seen = []
    for _ in range(6):
        ex.features.views.cycle_prompt_view()
        seen.append(ex.prompt_view)
    assert "disagreement" not in seen and seen[:4] == ["probability", "entropy", "influence", "plain"]
    ex.features.compare.set_model("fake-other", "fake-other|float32", engine=OtherFake())
    while ex.prompt_view != "disagreement":
        ex.features.views.cycle_prompt_view()
    assert ex.snapshot().view_pending  # the compare model has not run yet
    ex.run_jobs_inline()
    snap = ex.snapshot()
    assert not snap.view_pending and snap.prompt[0].value is None
    assert all(t.value is not None and 0 <= t.value <= 1 for t in snap.prompt[1:])


# --------------------------------------------------------------------------- export --diff


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("tokentree")  # the installed console script
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_export_diff_through_the_real_cli(store, tmp_path):
    engine = FakeEngine()
    sid, branches = forked_session(store, engine)
    ex = explorer(store, sid, engine)
    a, b = branches["cat"], branches["cat (2)"]
    done = cli("export", "last", "--diff", "cat", str(b.id), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    ta = [n.token_id for n in store.path_nodes(a.node_id)]
    tb = [n.token_id for n in store.path_nodes(b.node_id)]
    la, lb = plain_logps(engine, ta)[4:], plain_logps(engine, tb)[4:]
    assert out.startswith(f"session {sid}, fake-model: branch diff\n"
                          "cat (A) vs cat (2) (B): fork after 4 shared tokens\n")
    assert "after:  the cat sat on\n" in out
    lines = out.splitlines()
    rows = [line for line in lines if line.lstrip().startswith(("1 ", "2 "))]
    assert len(rows) == 2
    for line, x, y in zip(rows, la, lb):
        assert f"{x:.3f}" in line and f"{y:.3f}" in line and f"{x - y:+.3f}" in line
    total = next(line for line in lines if line.startswith("total"))
    assert f"{sum(la):.3f}" in total and f"{sum(lb):.3f}" in total and f"{sum(la) - sum(lb):+.3f}" in total
    ppl = next(line for line in lines if line.lstrip().startswith("ppl"))
    assert f"{math.exp(-sum(la) / 2):.3f}" in ppl and f"{math.exp(-sum(lb) / 2):.3f}" in ppl
    # The same table as the diff view's.
    table = diff_table(ex.features.compare.branch_diff(a.id, b.id))
    for cells in table.rows:
        assert all(c in out for c in cells)


@pytest.mark.parametrize("args, message", [
    (["--diff", "cat", "nope"], "no branch 'nope' in session"),
    (["--diff", "cat", "cat"], "two different branches"),
    (["--diff", "cat", "dog", "--format", "json"], "--diff prints a text table"),
])
def test_export_diff_bad_input_is_one_line(store, tmp_path, args, message):
    from tokentree.cli import main

    engine = FakeEngine()
    forked_session(store, engine)
    done = cli("export", "last", *args, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr
    assert main(["export", "last", *args]) == 2


# --------------------------------------------------------------------------- --compare-model, launched


@pytest.fixture(scope="module")
def stranger_model(tmp_path_factory):
    """A tiny Qwen2 model whose tokenizer has another vocabulary (300 ids, not 384)."""
    import torch
    from tiny_model import build_config, build_tokenizer
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("stranger") / "qwen2-300"
    tokenizer = build_tokenizer(vocab_size=300)
    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_config(build_config("qwen2", len(tokenizer), tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("quick", ["1", "0"])
def test_compare_model_with_another_vocabulary_exits_with_one_line(tmp_path, tiny_model, stranger_model, quick):
    """Refused before anything is written: from the tokenizer files (quick start) or after
    loading it (TOKENTREE_QUICK_START=0); one line, exit code 2, no session."""
    import os

    import pexpect

    prompt = tmp_path / "p.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    exe = Path(sys.executable).with_name("tokentree")
    env = dict(os.environ, TOKENTREE_QUICK_START=quick)
    child = pexpect.spawn(str(exe), ["--model", str(tiny_model), "--compare-model", str(stranger_model),
                                     "-i", str(prompt)], env=env, cwd=str(tmp_path), dimensions=(24, 80), preexec_fn=as_from_a_terminal)
    child.expect(pexpect.EOF, timeout=120)
    out = child.before.decode()
    child.close()
    assert child.exitstatus == 2, out
    errors = [line for line in out.splitlines() if line.startswith("tokentree: ") and "loading" not in line]
    assert len(errors) == 1 and "different vocabulary" in errors[0], out
    assert "Traceback" not in out
    store = Store.open(default_db_path())
    try:
        assert store.latest_session_id() is None
    finally:
        store.close()


def test_compare_source_picks_how_the_second_model_loads(tmp_path, tiny_model):
    """A URL is a server's only model; with --server, a name that is not a local path is
    another model of that server; a local path or GGUF file loads in process."""
    from tokentree.cli import build_app_parser
    from tokentree.compare_model import compare_source
    from tokentree.config import load_config

    config = load_config(None)
    args = build_app_parser().parse_args(["--model", str(tiny_model), "--compare-model", "http://h:8000/v1"])
    cargs, cconfig, name = compare_source(args, config, args.compare_model)
    assert cargs.server == "http://h:8000/v1" and name == "" and args.server is None
    served = build_app_parser().parse_args(["--server", "http://h:8000/v1", "--model", "big"])
    cargs, _, name = compare_source(served, config, "small")
    assert cargs.server == "http://h:8000/v1" and name == "small"
    cargs, cconfig, name = compare_source(served, config, str(tiny_model))
    assert cargs.server is None and cconfig.server.url is None and name == str(tiny_model)

"""The llama.cpp backend (lm/llama/) on the tiny Qwen2 model converted to GGUF by llama.cpp's
own converter: the same numbers as the transformers engine on the model it was converted from,
the same token ids as its Hugging Face tokenizer, one token fed per step, and a whole session
(explore, resume from the cache, export) through the real llama.cpp. No mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pty_signals import as_from_a_terminal

from tokentree.config import (
    Config,
    DisplayConfig,
    ExploreConfig,
    SamplingConfig,
    parse_config,
)
from tokentree.errors import ConfigError, ModelLoadError
from tokentree.lm import gguf
from tokentree.lm.open import GgufSource, gguf_source, open_gguf, pick_quant

pytest.importorskip("llama_cpp")

from tokentree.lm.llama import ContextFull, LlamaBackend, physical_cores  # noqa: E402

REL = 1e-3  # the agreement bound: probabilities relative, entropy absolute (nats)
TEXT = "Once upon a time there was a small village by the sea where everyone knew"
CONFIG = Config(display=DisplayConfig(tokens_to_show=8))


@pytest.fixture(scope="module")
def hf(tiny_models):
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model

    return Engine(load_model(str(tiny_models["qwen2"])), top_k=64)


@pytest.fixture
def llama(tiny_gguf):
    backend = LlamaBackend(tiny_gguf, threads=1, top_k=64)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def tiny_gguf_f16(tiny_models, tmp_path_factory) -> Path:
    from gguf_model import convert

    return convert(tiny_models["qwen2"], tmp_path_factory.mktemp("gguf16") / "tiny-qwen2-f16.gguf", "f16")


def agreement(a, b) -> tuple[float, float]:
    """(max relative probability error, entropy error) of two NodeOutputs, after checking
    they rank the same tokens the same way."""
    assert a.next.top_ids[:10] == b.next.top_ids[:10]
    assert a.token_rank == b.token_rank
    theirs = dict(zip(b.next.top_ids, b.next.top_probs))
    common = [(p, theirs[i]) for i, p in zip(a.next.top_ids, a.next.top_probs) if i in theirs]
    assert len(common) >= len(a.next.top_ids) - 2  # the top-64 may differ only at its edge
    errors = [abs(p - q) / q for p, q in common]
    if a.token_prob is not None or b.token_prob is not None:
        errors.append(abs(a.token_prob - b.token_prob) / b.token_prob)
    return max(errors), abs(a.next.entropy - b.next.entropy)


def check(outputs, references) -> tuple[float, float]:
    worst = (0.0, 0.0)
    for a, b in zip(outputs, references, strict=True):
        rel, ent = agreement(a, b)
        assert abs(a.next.norm_entropy - b.next.norm_entropy) < REL
        worst = (max(worst[0], rel), max(worst[1], ent))
    assert worst[0] < REL and worst[1] < REL, worst
    return worst


# ------------------------------------------------------------------ tokens and identity


TEXTS = ["Once upon a time", "Café crème brûlée, naïve résumé.", "日本語の文章です。 😀 ½",
         "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))\n", "\tIndented\r\nwindows line",
         "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", "  two  spaces   ", " ", "", "#### 72"]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_the_hugging_face_tokenizer(llama, hf, text):
    assert llama.encode(text) == hf.encode(text)


def test_vocabulary_bytes_and_key_equal_the_hugging_face_model(llama, hf):
    assert llama.vocab_size == hf.vocab_size
    ids = range(llama.vocab_size)
    assert llama.token_bytes(ids) == hf.token_bytes(ids)  # special tokens: their names
    assert llama.info.vocab_key == hf.info.vocab_key  # a session moves between the two


def test_info_and_capabilities(llama, tiny_gguf):
    info = llama.info
    assert info.name == str(tiny_gguf) and info.dtype == "F32" and info.num_layers == 3
    assert info.device == "cpu (llama.cpp, 1 thread)" and info.context_length == 256
    assert info.fingerprint.startswith("gguf:tiny-qwen2-f32.gguf@content-") and info.fingerprint.endswith(":F32")
    caps = llama.capabilities
    assert not caps.influence and not caps.layer_lens and caps.prompt_logprobs and caps.exact_entropy
    assert "needs the transformers backend" in caps.influence_note
    assert "needs the transformers backend" in caps.layer_lens_note
    out, analysis = llama.step_with_analysis(llama.encode("Once"), 5, influence=True, lens_count=4)
    assert analysis.influence is None and analysis.lens_probs is None
    assert llama.analyze(llama.encode("Once upon"), influence=True, lens_ids=[1, 2]).influence is None
    llama.close()
    with pytest.raises(RuntimeError, match="closed"):  # never a read of freed memory
        llama.step([5], 6)


def test_fingerprint_is_the_file_content_and_its_quantization(tiny_gguf, tiny_gguf_f16, tmp_path):
    f32 = LlamaBackend(tiny_gguf, threads=1)
    f16 = LlamaBackend(tiny_gguf_f16, threads=1)
    again = LlamaBackend(tiny_gguf, threads=2)
    try:
        assert f16.info.dtype == "F16" and f16.info.fingerprint.endswith(":F16")
        assert f32.info.fingerprint != f16.info.fingerprint  # Q4/F16/F32 numbers never mix
        assert again.info.fingerprint == f32.info.fingerprint  # threads do not change the numbers
        assert f16.info.vocab_key == f32.info.vocab_key
    finally:
        for b in (f32, f16, again):
            b.close()
    # The same name with other content (re-converted, replaced in place) is another model.
    copy = tmp_path / tiny_gguf.name
    copy.write_bytes(tiny_gguf_f16.read_bytes())
    assert gguf.fingerprint(copy, "F32") != gguf.fingerprint(tiny_gguf, "F32")


def test_header_end_is_where_the_tensor_data_begins(tiny_gguf):
    from gguf import GGUFReader

    reader = GGUFReader(tiny_gguf)
    with open(tiny_gguf, "rb") as f:
        end = gguf.header_end(f.read())
    alignment = 32
    assert end <= reader.data_offset < end + alignment


def test_threads_default_to_physical_cores_and_config_overrides(tiny_gguf):
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    backend = LlamaBackend(tiny_gguf)
    try:
        assert backend.threads == physical_cores()
    finally:
        backend.close()
    config = parse_config({"llama": {"threads": 3, "n_ctx": 0}})
    assert config.llama.threads == 3 and config.llama.n_ctx == 0
    opened = open_gguf(str(tiny_gguf), config)  # as launch opens a .gguf --model
    try:
        assert opened.threads == 3 and opened.info.context_length == 256  # 0: the trained context
        assert isinstance(opened, LlamaBackend) and opened.info.name == str(tiny_gguf)
    finally:
        opened.close()
    with pytest.raises(ConfigError, match="llama.threads"):
        parse_config({"llama": {"threads": -1}})
    with pytest.raises(ConfigError, match="unknown key llama.gpu"):
        parse_config({"llama": {"gpu": True}})


# ------------------------------------------------------------------ the numbers


def test_prefill_agrees_with_the_transformers_engine_at_every_position(llama, hf):
    ids = hf.encode(TEXT)
    outputs = llama.prefill(ids)
    assert len(outputs) == len(ids) and outputs[0].token_prob is None
    rel, ent = check(outputs, hf.prefill(ids))
    print(f"prefill of {len(ids)} tokens: max relative probability error {rel:.2e}, entropy error {ent:.2e}")
    assert llama.forward_passes == 1 and llama.tokens_fed == len(ids)


def test_steps_pops_and_branch_switches_agree_and_feed_one_token(llama, hf):
    ids = hf.encode(TEXT)
    llama.prefill(ids)
    path, mine, theirs = list(ids), [], []

    def step(prefix, token, fed=1):
        before = (llama.tokens_fed, llama.forward_passes)
        mine.append(llama.step(prefix, token))
        theirs.append(hf.step(prefix, token))
        assert (llama.tokens_fed - before[0], llama.forward_passes - before[1]) == (fed, 1)

    for token in (5, 77, 300, 12):  # appends: one token each
        step(path, token)
        path.append(token)
    step(path[:-1], 99)  # a pop, then another candidate: one token
    step(path[:-3], 42)  # three pops, another candidate: still one token (the parent's logits are kept)
    branch_b = path[:-3] + [42]
    step(path, 8)  # back to the first branch's tip: its line is still cached
    step(branch_b, 8)  # and to the other: the same
    step(ids[:5], 250, fed=2)  # deep in the prompt, beyond the kept logits: the parent re-runs in the same call
    rel, ent = check(mine, theirs)
    print(f"steps: max relative probability error {rel:.2e}, entropy error {ent:.2e}")


def test_sample_draws_as_the_engine_does_and_is_deterministic(llama, hf, tiny_gguf):
    ids = hf.encode(TEXT)
    settings = SamplingConfig(temperature=0.9, top_k=50, top_p=0.95, min_p=0.01)
    stops = frozenset({0, 2})
    ours = llama.sample(ids, count=3, steps=8, settings=settings, seed=11, stop_ids=stops)
    engine = hf.sample(ids, count=3, steps=8, settings=settings, seed=11, stop_ids=stops)
    assert [[t for t, _ in row] for row in ours] == [[t for t, _ in row] for row in engine]
    check([o for row in ours for _, o in row], [o for row in engine for _, o in row])
    fresh = LlamaBackend(tiny_gguf, threads=1, top_k=64)
    try:
        again = fresh.sample(ids, count=3, steps=8, settings=settings, seed=11, stop_ids=stops)
        assert again == ours
        assert fresh.forward_passes == 1 + max(len(r) for r in ours)  # the prefix, then one per step
    finally:
        fresh.close()
    # Under a regex constraint (`allowed`): the same tokens as the engine draws, all allowed.
    odd = bytearray((llama.vocab_size + 7) // 8)
    for i in range(1, llama.vocab_size, 2):
        odd[i >> 3] |= 1 << (i & 7)

    def allowed(drawn):
        return b"" if len(drawn) >= 4 else bytes(odd)

    ours = llama.sample(ids, count=3, steps=8, settings=settings, seed=11, allowed=allowed)
    engine = hf.sample(ids, count=3, steps=8, settings=settings, seed=11, allowed=allowed)
    assert [[t for t, _ in row] for row in ours] == [[t for t, _ in row] for row in engine]
    assert all(len(row) == 4 and all(t % 2 for t, _ in row) for row in ours)
    check([o for row in ours for _, o in row], [o for row in engine for _, o in row])
    many = llama.sample(ids, count=20, steps=3, settings=settings, seed=5)  # more rows than one batch
    assert len(many) == 20 and all(len(r) == 3 for r in many)
    with pytest.raises(ValueError, match="temperature"):
        llama.sample(ids, count=1, steps=1, settings=SamplingConfig(temperature=0.0), seed=1)


def test_stop_ids(llama, hf):
    eos = llama.stop_ids("eos")
    assert hf.stop_ids("eos") <= eos and eos == {0, 2}  # llama.cpp also ends a turn at <|im_end|>
    pieces = llama.token_bytes(range(llama.vocab_size))
    assert llama.stop_ids("line") == eos | {i for i, p in pieces.items() if b"\n" in p}
    with pytest.raises(ValueError, match="fill_stop"):
        llama.stop_ids("never")


def test_a_full_cache_drops_old_lines_and_a_long_branch_is_refused(llama, hf):
    ids = hf.encode(TEXT)
    llama.prefill(ids)
    mine, theirs = [], []
    for k in range(10):  # ten branches of 30 tokens from position 5: more than 256 cells in all
        path = list(ids[:5])
        for j in range(30):
            token = 3 + (k * 31 + j * 7) % 300
            mine.append(llama.step(path, token))
            theirs.append(hf.step(path, token))
            path.append(token)
    check(mine, theirs)
    with pytest.raises(ContextFull, match=r"llama.cpp's context holds 256 \(raise \[llama\] n_ctx"):
        llama.step(list(range(3, 259)), 5)
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        llama.step(ids, llama.vocab_size)


# ------------------------------------------------------------------ a whole session


def _session(store, backend, prompts: dict[str, str]) -> int:
    info = backend.info
    sid = store.start_session(model_name=info.name, fingerprint=info.fingerprint, vocab_key=info.vocab_key,
                              prompt_sources=list(prompts))
    for name, text in prompts.items():
        store.create_branch(sid, backend.encode(text), source=name, name=name)
    return sid


def test_a_session_explores_resumes_from_the_cache_and_exports(tiny_gguf, hf):
    from dataclasses import replace

    from tokentree.core.explorer import Explorer
    from tokentree.export import export_session
    from tokentree.paths import default_db_path
    from tokentree.store import Store

    config = replace(CONFIG, explore=ExploreConfig(fill_tokens=5, sample_count=2, prefetch=2),
                     sampling=SamplingConfig(seed=3))
    store = Store.open(default_db_path())
    backend = LlamaBackend(tiny_gguf, threads=1, top_k=config.top_k)
    try:
        sid = _session(store, backend, {"story": "Once upon a time"})
        ex = Explorer(store, sid, config=config, model_name=backend.info.name, layer_prob=True)
        ex.attach_engine(backend)
        ex.run_jobs_inline()
        assert backend.forward_passes == 1  # the prompt: one pass
        ex.cursor(1)
        ex.append()
        ex.run_jobs_inline()
        ex.pop()  # the popped token is the selected row
        ex.append()  # the same child again: from the cache
        assert ex.run_jobs_inline() == 0 and backend.forward_passes == 2
        ex.pop()
        fed = backend.tokens_fed
        ex.cursor(1)
        ex.append()  # a sibling: one token
        ex.run_jobs_inline()
        assert backend.tokens_fed - fed == 1
        task = ex.take_prefetch()  # the selected candidate's child, ahead of the key
        task.finish(task.run())
        passes = backend.forward_passes
        ex.append()
        assert ex.run_jobs_inline() == 0 and backend.forward_passes == passes
        ex.features.fill.start()
        ex.run_jobs_inline()
        ex.features.sample.start()
        ex.run_jobs_inline()
        for _ in range(3):
            ex.features.views.cycle_prompt_view()
        assert ex.prompt_view == "plain" and "needs the transformers backend" in ex.message  # no influence
        ex.features.views.cycle_layer_view()
        assert ex.layer_view == "off" and "needs the transformers backend" in ex.message
        snap = ex.snapshot()
        assert [b.name for b in snap.branches][-2:] == ["sample 1", "sample 2"]
        assert not snap.waiting and ex.error is None
        tips = [t.token_id for t in snap.prompt]
        before = snap.candidates
        text_export = export_session(store, sid, "text")
        json_export = json.loads(export_session(store, sid, "json"))
    finally:
        backend.close()

    # Resume on a freshly loaded backend: everything from the cache, nothing fed to llama.cpp.
    fresh = LlamaBackend(tiny_gguf, threads=1, top_k=config.top_k)
    try:
        again = Explorer(store, sid, config=config)
        again.attach_engine(fresh)
        assert again.run_jobs_inline() == 0
        assert again.snapshot().candidates == before
        again.features.branches.switch_branch(-1)
        again.features.branches.switch_branch(1)
        assert again.run_jobs_inline() == 0 and fresh.forward_passes == fresh.tokens_fed == 0
    finally:
        fresh.close()

    # The numbers are the Hugging Face model's: the session opens on it (same vocabulary).
    reference = hf.prefill(tips)
    cached = Explorer(store, sid, config=config).snapshot().candidates
    top = reference[-1].next
    for row in cached[:5]:
        p = dict(zip(top.top_ids, top.top_probs))[row.token_id]
        assert abs(row.prob - p) / p < REL
    moved = Explorer(store, sid, config=config)
    moved.attach_engine(hf)  # allowed: vocab_key equal; its own fingerprint keeps its numbers apart
    assert moved.fingerprint == hf.info.fingerprint
    store.close()
    assert "Once upon a time" in text_export
    assert json_export and "sample 1" in json.dumps(json_export)


# ------------------------------------------------------------------ names and errors


def test_model_names_that_select_llama_cpp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = gguf_source("models/qwen.Q4_K_M.gguf")
    assert local == GgufSource(path=(tmp_path / "models/qwen.Q4_K_M.gguf").resolve())
    assert local.name == str(tmp_path / "models/qwen.Q4_K_M.gguf")
    assert gguf_source("Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf") == GgufSource(
        repo="Qwen/Qwen2.5-0.5B-Instruct-GGUF", spec="qwen2.5-0.5b-instruct-q4_k_m.gguf")
    assert gguf_source("bartowski/Qwen2.5-0.5B-GGUF:Q4_K_M").spec == "Q4_K_M"
    for name in ("Qwen/Qwen2.5-0.5B", "./my-model", "gpt2", "", "C:/models/x"):
        assert gguf_source(name) is None
    files = ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "big-Q5_K_M-00001-of-00002.gguf",
             "big-Q5_K_M-00002-of-00002.gguf"]
    assert pick_quant(files, "q4_k_m") == "m-Q4_K_M.gguf"
    assert pick_quant(files, "Q5_K_M") == "big-Q5_K_M-00001-of-00002.gguf"
    with pytest.raises(ModelLoadError, match="no GGUF file"):
        pick_quant(files, "IQ2_XS")
    with pytest.raises(ModelLoadError, match="several GGUF files"):
        pick_quant(files, "m-q")


def test_bad_files_are_one_line_errors(tmp_path, tiny_gguf):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        LlamaBackend(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all\x00\x01" * 10)
    with pytest.raises(ModelLoadError, match=r"cannot load .*bad.gguf as a GGUF model: invalid magic") as exc:
        LlamaBackend(bad)
    assert "\n" not in str(exc.value) and str(exc.value).isprintable()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:300_000])
    with pytest.raises(ModelLoadError, match="corrupted or incomplete"):
        LlamaBackend(cut)


def _cli(args: list[str], cwd: Path, *, hide_llama: bool = False) -> tuple[int, str]:
    """The real CLI in a pseudo-terminal (the explorer checks for one before loading)."""
    import pexpect

    code = "import sys\n"
    if hide_llama:
        code += "sys.modules['llama_cpp'] = None  # as if the llama extra were not installed\n"
    code += "from tokentree.cli import main\nsys.exit(main())\n"
    child = pexpect.spawn(sys.executable, ["-c", code, *args], cwd=str(cwd), env=dict(os.environ, TERM="xterm"),
                          dimensions=(24, 100), preexec_fn=as_from_a_terminal)
    child.expect(pexpect.EOF, timeout=120)
    output = child.before.decode("utf-8", "replace")
    child.close()
    return child.exitstatus, output


@pytest.mark.parametrize("case", ["corrupt", "missing", "no-extra", "hub-offline"])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, case):
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    model, expected = {
        "corrupt": ("bad.gguf", "as a GGUF model: invalid magic characters"),
        "missing": ("nowhere.gguf", "GGUF file not found"),
        "no-extra": ("nowhere.gguf", "install the llama extra (uv run --extra llama tokentree"),
        "hub-offline": ("someone/some-repo-GGUF:model.gguf",
                        "cannot fetch someone/some-repo-GGUF:model.gguf from the hub"),
    }[case]
    (tmp_path / "bad.gguf").write_bytes(b"GARBAGE" * 100)
    status, output = _cli(["--model", model, "--input", str(prompt)], tmp_path, hide_llama=case == "no-extra")
    errors = [line for line in output.splitlines() if line.startswith("tokentree:") and "loading" not in line]
    assert status == 2, output
    assert len(errors) == 1 and expected in errors[0], output
    assert "Traceback" not in output


def test_the_command_explores_resumes_and_exports_a_gguf_session(tmp_path, tiny_gguf):
    """The acceptance path through the real `tokentree` command in a terminal."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_tui_pty import CTRL_Q, DOWN, RIGHT, Terminal

    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    term = Terminal(["--model", str(tiny_gguf), "--input", str(prompt)], tmp_path)
    term.wait_for("Once upon a time", " idle ", tiny_gguf.name)
    term.keys(DOWN, RIGHT, settle="+1 ")
    term.keys(CTRL_Q)
    assert term.finish() == 0
    term = Terminal(["--resume", "last"], tmp_path)
    term.wait_for(" idle ", "Once upon a time")
    term.keys(CTRL_Q)
    assert term.finish() == 0
    exe = Path(sys.executable).with_name("tokentree")
    result = subprocess.run([str(exe), "export", "last", "--format", "text"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "Once upon a time" in result.stdout

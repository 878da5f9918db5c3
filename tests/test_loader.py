"""Model loading: what a LoadedModel says, device choice, and one-sentence errors."""

from __future__ import annotations

import pytest
import torch

from tokentree.errors import ModelLoadError
from tokentree.lm import load_model, pick_device


def test_loads_a_local_model_quietly(tiny_models, capfd):
    loaded = load_model(str(tiny_models["llama"]), device="cpu")
    out, err = capfd.readouterr()
    assert out == "" and err == "", "no progress bars or warnings on the terminal"
    assert loaded.name == str(tiny_models["llama"])
    assert loaded.device == "cpu" and loaded.dtype == "float32"
    assert loaded.fingerprint == f"{tiny_models['llama'].resolve()}:float32"
    assert loaded.num_layers == 3 and loaded.vocab_size == 384 and loaded.context_length == 256
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_vocab_key_is_stable_and_follows_the_vocabulary(tiny_models):
    a = load_model(str(tiny_models["qwen2"]), device="cpu").vocab_key
    b = load_model(str(tiny_models["qwen2"]), device="cpu").vocab_key
    assert a == b and len(a) == 16
    # Same trained vocabulary, same ids: the key is shared across these architectures.
    assert load_model(str(tiny_models["gpt2"]), device="cpu").vocab_key == a


def test_bad_path(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError) as info:
        load_model(missing)
    message = str(info.value)
    assert missing in message and "--model PATH" in message and "\n" not in message


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model directory") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "--model PATH" in str(info.value)


def test_offline_hub_name_not_cached():
    name = "tokentree-tests/not-a-cached-model"
    with pytest.raises(ModelLoadError) as info:
        load_model(name)
    message = str(info.value)
    assert name in message and "HF_HUB_OFFLINE" in message and "--model PATH" in message
    assert "\n" not in message


def test_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_custom_code_needs_the_flag(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "tt-custom", "auto_map": {"AutoConfig": "conf.C", "AutoModelForCausalLM": "mod.M"}}'
    )
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        load_model(str(tmp_path))


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device(None) == "cpu"
    assert pick_device("cpu") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device(None) == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None) == "cuda"  # CUDA first
    assert pick_device("cpu") == "cpu"  # an explicit choice wins
    assert pick_device("cuda:0") == "cuda:0"


def test_pick_device_refuses_what_is_not_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(ModelLoadError, match="MPS is not available"):
        pick_device("mps")
    with pytest.raises(ModelLoadError, match="unknown device"):
        pick_device("tpu-of-dreams")

"""Model loading: what a LoadedModel says, device choice, and one-sentence errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tokentree.errors import ModelLoadError
from tokentree.lm import load_model, pick_device


def test_loads_a_local_model_quietly(tiny_models, capfd):
    path = tiny_models["llama"]  # built first: writing it is not loading it
    capfd.readouterr()
    loaded = load_model(str(path), device="cpu")
    out, err = capfd.readouterr()
    assert out == "" and err == "", "no progress bars or warnings on the terminal"
    assert loaded.name == str(tiny_models["llama"])
    assert loaded.device == "cpu" and loaded.dtype == "float32"
    assert loaded.fingerprint.startswith(f"{tiny_models['llama'].resolve()}@content-")
    assert loaded.fingerprint.endswith(":float32")
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


def _copy_model(tiny_models, tmp_path, arch="qwen2"):
    return Path(shutil.copytree(tiny_models[arch], tmp_path / arch))


def test_a_model_changed_in_place_gets_a_new_fingerprint(tiny_models, tmp_path):
    """The path stays, the weights change: cached numbers must not be reused."""
    import torch
    from transformers import AutoModelForCausalLM

    path = _copy_model(tiny_models, tmp_path)
    first = load_model(str(path), device="cpu").fingerprint
    assert load_model(str(path), device="cpu").fingerprint == first  # stable while unchanged
    assert load_model(str(path), device="cpu", bf16=True).fingerprint != first  # dtype is part of it

    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.get_output_embeddings().weight.add_(0.5)  # "retrained": same shapes, same header
    model.save_pretrained(path)
    retrained = load_model(str(path), device="cpu").fingerprint
    assert retrained != first

    config = json.loads((path / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (path / "config.json").write_text(json.dumps(config))
    assert load_model(str(path), device="cpu").fingerprint not in (first, retrained)


def test_resuming_after_the_model_changed_recomputes_every_number(tiny_models, tmp_path, tokentree_home):
    import torch
    from transformers import AutoModelForCausalLM

    from fake_engine import new_session
    from tokentree.config import Config
    from tokentree.core.explorer import Explorer
    from tokentree.lm.engine import Engine
    from tokentree.paths import default_db_path
    from tokentree.store import Store

    path = _copy_model(tiny_models, tmp_path)
    store = Store.open(default_db_path())
    try:
        old = Engine(load_model(str(path), device="cpu"))
        sid = new_session(store, old, {"p": "The quick brown fox"})
        ex = Explorer(store, sid, config=Config())
        ex.attach_engine(old)
        ex.run_jobs_inline()
        before = ex.snapshot()

        model = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            weight = model.get_output_embeddings().weight  # a different model at the same path
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
        model.save_pretrained(path)

        new = Engine(load_model(str(path), device="cpu"))
        resumed = Explorer(store, sid, config=Config())
        resumed.attach_engine(new)
        resumed.run_jobs_inline()
        after = resumed.snapshot()
        assert new.forward_passes >= 1  # recomputed, not read from the old model's cache
        ids = [t.token_id for t in after.prompt]
        with torch.no_grad():
            expected = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)
        for row in after.candidates[:5]:  # the new model's numbers ...
            assert row.prob == pytest.approx(float(expected[row.token_id]), rel=1e-4)
        old = {row.token_id: row.prob for row in before.candidates}  # ... not the old ones
        assert any(old.get(row.token_id) != pytest.approx(row.prob, rel=1e-2) for row in after.candidates[:5])
    finally:
        store.close()

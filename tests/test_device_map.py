"""--device-map and --dtype: a model split by accelerate gives the numbers of the whole model,
and bad values are one line.

No machine here has two GPUs, so the split is the one a CPU allows: `max_memory` caps CPU
memory below the model's size and accelerate puts the rest on disk (weights read from the
safetensors file at each forward). The engine's KV cache, crops, forks and batched sampling
then run through accelerate's hooks, as on a model split over GPUs.
"""

from __future__ import annotations

import pytest
import torch

from tokentree.config import Config, ModelConfig, SamplingConfig
from tokentree.errors import InputError
from tokentree.lm import load_model
from tokentree.lm.engine import Engine
from tokentree.lm.options import model_options

PROMPT = "The quick brown fox jumps over the lazy dog."
TIGHT = dict(rtol=0.0, atol=1e-7)  # same kernels, same weights: equal up to rounding, in fact exact


def _weights_size(path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def _numbers(outputs) -> dict[str, list]:
    """Every number a NodeOutput holds, by kind (None -> nan, so prompts' first rows compare)."""
    nan = float("nan")
    return {
        "probs": [p for o in outputs for p in o.next.top_probs],
        "entropy": [o.next.entropy for o in outputs] + [o.next.norm_entropy for o in outputs],
        "token_prob": [nan if o.token_prob is None else o.token_prob for o in outputs],
        "ids": [list(o.next.top_ids) for o in outputs],
        "ranks": [o.token_rank for o in outputs],
    }


def assert_same_outputs(split, whole) -> None:
    a, b = _numbers(split), _numbers(whole)
    for kind in ("probs", "entropy", "token_prob"):
        torch.testing.assert_close(torch.tensor(a[kind], dtype=torch.float64),
                                   torch.tensor(b[kind], dtype=torch.float64), equal_nan=True, **TIGHT)
    assert a["ids"] == b["ids"] and a["ranks"] == b["ranks"]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # tied head (Qwen2) and a separate one (Llama)
@pytest.mark.parametrize("share", [0.7, 0.0])  # part of the model in CPU memory, or none of it
def test_a_split_model_gives_the_numbers_of_the_whole_one(tiny_models, arch, share, capfd, tokentree_home):
    path = tiny_models[arch]
    whole = load_model(str(path), device="cpu")
    capfd.readouterr()
    split = load_model(str(path), device_map="auto", max_memory={"cpu": max(1, int(_weights_size(path) * share))})
    out, err = capfd.readouterr()
    assert out == "" and err == "", "accelerate's offload warning stays off the terminal"

    placed = split.model.hf_device_map
    assert "disk" in placed.values(), placed  # the split really happened ...
    if share:
        assert "cpu" in placed.values(), placed  # ... between memory and disk
        assert split.device == "auto (cpu, disk)"
    else:
        assert placed == {"": "disk"}
        assert split.device == "auto (disk)"
    assert split.input_device == "cpu"  # where the embeddings run, even when they are offloaded
    assert split.dtype == "float32"
    assert split.fingerprint == whole.fingerprint  # where the layers sit does not change the numbers
    assert list((tokentree_home / "offload").iterdir()), "a temporary offload folder in the data dir"

    a, b = Engine(split), Engine(whole)
    assert a.capabilities == b.capabilities  # the lens probe agrees through the hooks too
    assert a.info.device == ("auto (cpu, disk)" if share else "auto (disk)")  # what the status bar shows
    tokens = a.encode(PROMPT)
    assert_same_outputs(a.prefill(tokens), b.prefill(tokens))
    # A step extends the prompt's KV cache; a sibling crops it by one; a grandchild extends again.
    for prefix, token in ((tokens, 5), (tokens, 7), (tokens + [7], 9)):
        assert_same_outputs([a.step(prefix, token)], [b.step(prefix, token)])
    out_a, an_a = a.step_with_analysis(tokens + [7, 9], 11, influence=True, lens_count=5)
    out_b, an_b = b.step_with_analysis(tokens + [7, 9], 11, influence=True, lens_count=5)
    assert_same_outputs([out_a], [out_b])
    assert an_a.lens_ids == an_b.lens_ids
    torch.testing.assert_close(torch.tensor(an_a.lens_probs), torch.tensor(an_b.lens_probs), **TIGHT)
    torch.testing.assert_close(torch.tensor(an_a.influence[1:-1]), torch.tensor(an_b.influence[1:-1]), **TIGHT)
    settings = SamplingConfig(temperature=0.9)
    drawn_a = a.sample(tokens, count=3, steps=4, settings=settings, seed=3)  # a batched, repeated cache
    drawn_b = b.sample(tokens, count=3, steps=4, settings=settings, seed=3)
    assert [[t for t, _ in row] for row in drawn_a] == [[t for t, _ in row] for row in drawn_b]
    assert_same_outputs([o for row in drawn_a for _, o in row], [o for row in drawn_b for _, o in row])
    # The cache was used the same way: the same passes and calls, no re-run prompts.
    assert (a.forward_passes, a.model_calls) == (b.forward_passes, b.model_calls)
    assert all(layer.keys.device.type == "cpu" for line in a._lines for layer in line.cache.layers)


def test_the_offload_folder_goes_with_the_model(tiny_models, tokentree_home):
    import gc

    path = tiny_models["qwen2"]
    loaded = load_model(str(path), device_map="auto", max_memory={"cpu": 1})
    assert len(list((tokentree_home / "offload").iterdir())) == 1
    del loaded
    gc.collect()
    assert list((tokentree_home / "offload").iterdir()) == []


def test_a_given_offload_folder_is_used_and_kept(tiny_models, tmp_path):
    folder = tmp_path / "offload-here"
    folder.mkdir()
    loaded = load_model(str(tiny_models["qwen2"]), device_map="auto", max_memory={"cpu": 1}, offload_folder=folder)
    assert loaded.model.hf_device_map == {"": "disk"}
    del loaded
    assert folder.is_dir()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_loads_and_the_math_stays_float32(tiny_models, dtype):
    path = str(tiny_models["qwen2"])
    half = load_model(path, device="cpu", dtype=dtype)
    whole = load_model(path, device="cpu")
    assert half.dtype == dtype and next(half.model.parameters()).dtype == getattr(torch, dtype)
    assert half.fingerprint.endswith(f":{dtype}") and half.fingerprint != whole.fingerprint
    a, b = Engine(half), Engine(whole)
    tokens = a.encode(PROMPT)
    got, want = a.step(tokens, 5), b.step(tokens, 5)
    assert all(isinstance(p, float) for p in got.next.top_probs)
    assert sum(got.next.top_probs) <= 1 + 1e-6
    assert got.next.top_ids[0] == want.next.top_ids[0]  # close to float32, not equal
    assert got.token_prob == pytest.approx(want.token_prob, abs=0.02)
    assert got.next.entropy == pytest.approx(want.next.entropy, abs=0.05)


def test_bf16_is_an_alias_of_dtype_bfloat16(tiny_models):
    path = str(tiny_models["qwen2"])
    assert load_model(path, device="cpu", bf16=True).dtype == "bfloat16"
    assert load_model(path, device="cpu", bf16=True, dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(InputError, match="--bf16 .* conflicts with --dtype float16") as info:
        load_model(path, device="cpu", bf16=True, dtype="float16")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(dtype="float8"), "unknown dtype 'float8'; use float32, bfloat16, float16"),
        (dict(device_map="gpu"), "unknown device map 'gpu'"),
        (dict(device="cpu", device_map="auto"), "cannot be combined"),
    ],
)
def test_bad_load_options_are_one_line(tiny_models, kwargs, message):
    with pytest.raises(InputError) as info:
        load_model(str(tiny_models["qwen2"]), **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


class Args:
    def __init__(self, dtype=None, bf16=False, device=None, device_map=None):
        self.dtype, self.bf16, self.device, self.device_map = dtype, bf16, device, device_map


def test_flags_win_over_the_config():
    auto_half = ModelConfig(dtype="float16", device_map="auto")
    assert model_options(Args(), ModelConfig()) == model_options(Args(), Config().model)
    assert model_options(Args(), ModelConfig()).device_map is None
    assert model_options(Args(), auto_half).dtype == "float16"
    assert model_options(Args(), auto_half).device_map == "auto"
    assert model_options(Args(dtype="float32"), auto_half).dtype == "float32"
    assert model_options(Args(bf16=True), auto_half).dtype == "bfloat16"  # --bf16 is a flag too
    assert model_options(Args(device="cpu"), auto_half).device_map is None  # --device: one device
    assert model_options(Args(device_map="none"), auto_half).device_map is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dtype", "float8"], "tokentree: unknown dtype 'float8'; use float32, bfloat16, float16"),
        (["--device-map", "gpu"], "tokentree: unknown device map 'gpu'"),
        (["--dtype", "float16", "--bf16"], "tokentree: --bf16 means --dtype bfloat16 and conflicts"),
        (["--device", "cpu", "--device-map", "auto"], "tokentree: --device cpu and --device-map auto cannot be"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys, tokentree_home, tmp_path, monkeypatch):
    from tokentree.cli import main

    monkeypatch.chdir(tmp_path)  # no ./config.toml
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1
    assert not (tokentree_home / "tokentree.db").exists()  # refused before anything is written


def test_bad_config_values_are_one_line(tmp_path, capsys, monkeypatch):
    from tokentree.cli import main

    config = tmp_path / "config.toml"
    config.write_text('[model]\ndtype = "half"\n')
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'model.dtype must be one of "float32", "bfloat16", "float16"' in err
    config.write_text('[model]\ndevice_map = "everywhere"\n')
    assert main(["--config", str(config)]) == 2
    assert "model.device_map must be one of" in capsys.readouterr().err

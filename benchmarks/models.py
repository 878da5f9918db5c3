"""Models for the benchmarks, built on the spot (nothing is downloaded).

- "tiny": the tests' tiny Qwen2 model (tests/tiny_model.py).
- "qwen2.5-0.5b-shape": a Qwen2 model with exactly the shape of Qwen2.5-0.5B (24 layers,
  hidden 896, 14 heads, 2 KV heads, intermediate 4864, vocabulary 151,936, tied embeddings)
  and random weights, saved with the tests' small tokenizer extended to Qwen2.5's 151,665 ids
  (`build_tokenizer(total_size=...)`: the extra ids are byte-level tokens no merge produces),
  so the engine's real vocabulary and the 271 padding rows are those of the real model; the
  compute per step is that of the real model.

Both are written to a directory with `save_pretrained` and then loaded through
`tokentree.lm.loader.load_model`, so the benchmarks measure the real loading code path.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

QWEN25_05B_TOKENS = 151_665  # len(tokenizer) of Qwen2.5: the logits have 271 padding rows more

QWEN25_05B_SHAPE = dict(
    vocab_size=151_936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32_768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_act="silu",
)

MODELS = ("tiny", "qwen2.5-0.5b-shape")


def build_qwen25_05b_shape(directory: str | Path, seed: int = 0) -> Path:
    """Write a random-weight model of Qwen2.5-0.5B shape plus the tests' tokenizer to `directory`."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tiny_model import build_tokenizer

    directory = Path(directory)
    tokenizer = build_tokenizer(total_size=QWEN25_05B_TOKENS)
    eos = tokenizer.eos_token_id
    config = Qwen2Config(**QWEN25_05B_SHAPE, bos_token_id=None, eos_token_id=eos)
    # Qwen2Config may take rope parameters in a `rope_parameters` dict on newer transformers;
    # make sure theta is what the real model uses either way.
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict):
        rope["rope_theta"] = QWEN25_05B_SHAPE["rope_theta"]
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    return directory


def build_model_dir(kind: str, directory: str | Path) -> Path:
    if kind == "tiny":
        from tiny_model import build_tiny_model

        return build_tiny_model(directory, "qwen2")
    if kind == "qwen2.5-0.5b-shape":
        return build_qwen25_05b_shape(directory)
    raise ValueError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")


def count_parameters(model) -> int:
    seen = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total

"""Build tiny random-weight causal LMs with a small trained tokenizer, for tests and offline use.

    uv run python tests/tiny_model.py DIR [--arch qwen2|gpt2|llama|gemma2] [--pad-vocab N]

writes a model directory that `tokentree --model DIR` loads through the normal code path.
Nothing is downloaded: the tokenizer is trained here with the `tokenizers` library and the
weights are random with a fixed seed.

- gemma2: soft-caps its logits (`final_logit_softcapping`), so its last layer's logit lens
  does not equal its output distribution.
- --pad-vocab N: N padding rows in the embedding and LM head beyond the tokenizer's ids (as
  Qwen2.5 has 151,936 rows for 151,665 ids), with large weights so that code which forgets to
  cut them off would rank them first and give them most of the mass.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

ARCHES = ("qwen2", "gpt2", "llama", "gemma2")

CORPUS = [
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her friends in May.",
    "How many clips did Natalia sell altogether in April and May?",
    "Answer: Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May.",
    "#### 72",
    "The lighthouse keeper had not seen a ship in eleven years, so when the lamp began to flicker on its own one stormy night, she",
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away into the forest.",
    "Once upon a time there was a small village by the sea where everyone knew everyone else.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "\tIndented with a tab, then a newline.\nSecond line.\n",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e na\u00efve r\u00e9sum\u00e9.",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002 \U0001F600",
    "one two three four five six seven eight nine ten eleven twelve",
] * 3

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(vocab_size: int = 384, add_bos: bool = False, total_size: int | None = None):
    """A byte-level BPE tokenizer (like GPT-2 and Qwen2) trained on CORPUS. With `total_size`,
    its vocabulary is extended to that many ids with byte-level tokens that no merge produces
    (so encoding is unchanged), e.g. 151,665 for a Qwen2.5-sized vocabulary."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if total_size and total_size > tok.get_vocab_size():
        spec = json.loads(tok.to_str())
        spec["model"]["vocab"] = _extended_vocab(spec["model"]["vocab"], total_size)
        tok = Tokenizer.from_str(json.dumps(spec))
    bos = "<|im_start|>"
    if add_bos:
        # Llama-style: every encoding starts with a BOS token.
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token=bos if add_bos else None,
        unk_token=None,
        pad_token="<|endoftext|>",
        model_max_length=256,
        add_bos_token=add_bos,
    )


def _extended_vocab(vocab: dict[str, int], size: int) -> dict[str, int]:
    """`vocab` plus " aaa", " aab", ... (byte-level spelling) until it has `size` ids."""
    from itertools import product
    from string import ascii_lowercase

    vocab = dict(vocab)
    for length in range(3, 6):
        for letters in product(ascii_lowercase, repeat=length):
            if len(vocab) >= size:
                return vocab
            vocab.setdefault("\u0120" + "".join(letters), len(vocab))  # \u0120 is a space
    return vocab


def build_config(arch: str, vocab_size: int, tokenizer):
    from transformers import Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config

    eos = tokenizer.eos_token_id
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=256, n_embd=64, n_layer=3, n_head=4,
            bos_token_id=eos, eos_token_id=eos,
        )
    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=eos, rms_norm_eps=1e-6,
    )
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True, bos_token_id=None)
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id)
    if arch == "gemma2":
        return Gemma2Config(
            **common, head_dim=16, query_pre_attn_scalar=16, tie_word_embeddings=True,
            bos_token_id=None, pad_token_id=eos, sliding_window=128,
            final_logit_softcapping=5.0,  # strong, so the lens differs clearly (Gemma 2 uses 30)
        )
    raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHES)}")


def build_tiny_model(directory: str | Path, arch: str = "qwen2", seed: int = 0, pad_vocab: int = 0) -> Path:
    """Write a tiny `arch` model and its tokenizer to `directory`; return the directory.
    `pad_vocab` adds that many padding rows (ids the tokenizer does not have) to the head."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    tokenizer = build_tokenizer(add_bos=(arch == "llama"))
    real = len(tokenizer)
    config = build_config(arch, real + pad_vocab, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        # Random init is nearly uniform over the vocabulary; scale up the output so the
        # distributions are peaked like a real model's and top-k orders are stable.
        tied = getattr(config, "tie_word_embeddings", False)
        head = model.get_output_embeddings().weight
        head.mul_(5.5 if tied else 25.0)
        if pad_vocab:
            # Padding rows far larger than any real row: whatever the hidden state, some of
            # them get the largest logits, so unsliced math would put them on top.
            head[real:] = torch.randn(pad_vocab, head.shape[1]) * 4.0
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    with _no_progress_bars():  # no "Writing model shards" bar for a model written in a blink
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


@contextmanager
def _no_progress_bars():
    """transformers' (and huggingface_hub's) progress bars off, as they were afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--arch", choices=ARCHES, default="qwen2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pad-vocab", type=int, default=0, help="padding rows beyond the tokenizer's ids")
    args = parser.parse_args(argv)
    path = build_tiny_model(args.directory, args.arch, args.seed, args.pad_vocab)
    print(f"wrote a tiny {args.arch} model to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

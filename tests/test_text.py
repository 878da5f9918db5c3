"""Display helpers (pure) and the id -> bytes mapping they are fed with."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokentree.lm.tokens import TokenBytes, special_ids, tokenizer_style
from tokentree.text import prompt_pieces, visible


@pytest.mark.parametrize(
    ("piece", "shown"),
    [
        (b" the", "\u00b7the"),
        (b"   x y", "\u00b7\u00b7\u00b7x y"),  # only leading spaces are marked
        (b"\n", "\u23ce"),
        (b"\n\n", "\u23ce\u23ce"),
        (b"\t", "\u21e5"),
        (b" \tx\n", "\u00b7\u21e5x\u23ce"),
        (b"<|endoftext|>", "<|endoftext|>"),
        (b"\x00a\x1b\x7f", "\\x00a\\x1b\\x7f"),
        ("caf\u00e9".encode(), "caf\u00e9"),
        ("\u65e5".encode(), "\u65e5"),
        (b"\xe6", "\\xe6"),  # a lone fragment of a 3-byte character
        (b"\xe6\x97", "\\xe6\\x97"),
        (b" \xe6", "\u00b7\\xe6"),
        (b"", ""),
    ],
)
def test_visible(piece, shown):
    assert visible(piece) == shown
    assert "\ufffd" not in visible(piece)


def test_prompt_pieces_joins_a_split_character_on_its_last_token():
    pieces = [b"a", b"\xe6", b"\x97", b"\xa5", b"\xe6\x9c", b"\xac", b" b"]
    assert prompt_pieces(pieces) == ["a", "", "", "\u65e5", "", "\u672c", " b"]
    assert prompt_pieces([]) == []
    # An unfinished character at the end, an invalid byte or a control code shows as escapes,
    # never as U+FFFD noise or an invisible character.
    assert prompt_pieces([b"x", b"\xe6\x97"]) == ["x", "\\xe6\\x97"]
    assert prompt_pieces([b"\xff", b"y"]) == ["\\xff", "y"]
    assert prompt_pieces([b"72", b"\x17", b"a\n\tb"]) == ["72", "\\x17", "a\n\tb"]


@pytest.fixture(scope="module", params=["qwen2", "gpt2", "llama"])
def tokenizer(request, tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models[request.param])


def test_tiny_tokenizer_splits_japanese_into_byte_tokens(tokenizer):
    ids = tokenizer.encode("\u65e5\u672c", add_special_tokens=False)
    pieces = TokenBytes(tokenizer)(ids)
    assert len(ids) > 2 and any(visible(pieces[i]).startswith("\\x") for i in ids)
    shown = prompt_pieces([pieces[i] for i in ids])
    assert "".join(shown) == "\u65e5\u672c"
    assert [s for s in shown if s] == ["\u65e5", "\u672c"]  # each character whole, on one token


@pytest.mark.parametrize(
    "text",
    [
        "Natalia sold 48/2 = 24 clips in May.\n#### 72",
        "\tIndented.\n\nCaf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u65e5\u672c\u8a9e \U0001F600!",
        "<|im_start|>user\nhi<|im_end|><|endoftext|>",
        "  two  spaces  ",
    ],
)
def test_pieces_concatenate_to_the_tokenizers_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    pieces = TokenBytes(tokenizer)(ids)
    shown = prompt_pieces([pieces[i] for i in ids])
    assert len(shown) == len(ids)
    assert "".join(shown) == tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def test_special_tokens_are_their_names(tokenizer):
    assert tokenizer_style(tokenizer) == "bytelevel"
    specials = special_ids(tokenizer)
    assert tokenizer.eos_token_id in specials
    pieces = TokenBytes(tokenizer)(sorted(specials))
    assert pieces[tokenizer.eos_token_id] == b"<|endoftext|>"
    assert visible(pieces[tokenizer.eos_token_id]) == "<|endoftext|>"


def test_sentencepiece_style_byte_fallback():
    """Llama-2 style: '▁' marks a space and unknown characters fall back to <0xNN> byte tokens."""
    vocab = {"<unk>": 0, "<0xE6>": 1, "<0x97>": 2, "<0xA5>": 3, "\u2581": 4, "a": 5, "\u2581a": 6, "<0x0A>": 7}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("\u2581", "a")], unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")  # keep it simple
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert tokenizer_style(fast) == "sentencepiece"
    ids = fast.encode("a \u65e5\n", add_special_tokens=False)
    pieces = TokenBytes(fast)(ids)
    assert pieces[6] == b" a" and pieces[1] == b"\xe6" and pieces[7] == b"\n"
    assert "".join(prompt_pieces([pieces[i] for i in ids])) == " a \u65e5\n"

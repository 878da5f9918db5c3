"""tokentree.tree.text (how token bytes become visible text) and the id -> bytes mapping it is fed with."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokentree.lm.tokens import TokenBytes, tokenizer_style
from tokentree.tree.text import (
    SegmentDecoder,
    join_pieces,
    label,
    one_line,
    placeholder,
    show_controls,
    shorten,
    visible,
)


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
        ("\u0085\u009b".encode(), "\\x85\\x9b"),  # C1 controls too (0x9b is a terminal's CSI)
        ("a\u2028b".encode(), "a\\u2028b"),  # the line separator, as Python's repr writes it
        (b"\\xe6", "\\xe6"),  # a real backslash is not escaped again
    ],
)
def test_visible(piece, shown):
    assert visible(piece) == shown
    assert "\ufffd" not in visible(piece)


def test_placeholder_is_one_look():
    assert placeholder(7) == "\u27e87\u27e9"


def test_show_controls_keeps_line_breaks_and_escapes_the_rest():
    assert show_controls("a\n\tb") == "a\n\tb"
    assert show_controls("\x1b[31m\r\n") == "\\x1b[31m\\x0d\n"
    assert one_line("a\n\tb\x1b c") == "a\u23ce\u21e5b\\x1b c"


def test_join_pieces_joins_a_split_character_and_escapes_what_never_forms_one():
    pieces = {1: b"a", 2: b"\xe6", 3: b"\x97", 4: b"\xa5", 5: b" b", 6: b"\xff", 7: b"\x17\n"}
    assert join_pieces([1, 2, 3, 4, 5], pieces) == "a\u65e5 b"
    assert join_pieces([], pieces) == ""
    # an unfinished character at the end, an invalid byte or a control code shows as escapes,
    # never as U+FFFD noise or an invisible character
    assert join_pieces([1, 2, 3], pieces) == "a\\xe6\\x97"
    assert join_pieces([6, 7], pieces) == "\\xff\\x17\n"
    # unknown bytes show as the placeholder, which also ends the character before it
    assert join_pieces([2, 99, 3, 4], pieces) == "\\xe6\u27e899\u27e9\\x97\\xa5"


def test_segment_decoder_shows_a_character_split_at_a_fork_whole_below_it():
    decode = SegmentDecoder()
    text, carry = decode(b"ab\xc3", b"", leaf=False)
    assert (text, carry) == ("ab", b"\xc3")
    assert decode(b"\xa9!", carry, leaf=True) == ("\u00e9!", b"")
    assert label(decode(b"", carry, leaf=True)[0]) == "\\xc3"  # nothing below: the lone byte
    assert label(" a\n\t\x9b") == "\u00b7a\u23ce\u21e5\\x9b"
    assert label('"a\\\n\x9b', quoted=True) == '"\\"a\\\\\\n\\x9b"'


def test_shorten():
    assert shorten("abcdef", 6) == "abcdef"
    assert shorten("abcdef", 4) == "abc\u2026"
    assert shorten("abcdef", 4, keep_end=True) == "\u2026def"


@pytest.fixture(scope="module", params=["qwen2", "gpt2", "llama"])
def tokenizer(request, tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models[request.param])


def test_tiny_tokenizer_splits_japanese_into_byte_tokens(tokenizer):
    ids = tokenizer.encode("\u65e5\u672c", add_special_tokens=False)
    pieces = TokenBytes(tokenizer)(ids)
    assert len(ids) > 2 and any(visible(pieces[i]).startswith("\\x") for i in ids)
    assert join_pieces(ids, pieces) == "\u65e5\u672c"


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
    assert set(pieces) == set(ids)
    assert join_pieces(ids, pieces) == tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def test_special_tokens_are_their_names(tokenizer):
    assert tokenizer_style(tokenizer) == "bytelevel"
    specials = set(tokenizer.all_special_ids)
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
    assert join_pieces(ids, pieces) == " a \u65e5\n"

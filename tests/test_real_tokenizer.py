"""The bundled model's three tokenizers give the same ids: the quick first-screen tokenizer
(lm/quick_tokens.py, no transformers), transformers' AutoTokenizer on the dequantized
checkpoint, and llama.cpp's own on the GGUF, over 2,400 varied lines (code, URLs, numbers,
CJK, emoji, ChatML markup, leading spaces, CRLF) and over all of them as one text."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from tokentree.lm.quick_tokens import quick_model

CODE = ["def f(x):", "\treturn x ** 2  # square", "    if (a && b) { return -1; }", "for i in range(10):",
        "const url = `${base}/api?q=${encodeURIComponent(q)}`;", "#include <stdio.h>", "SELECT * FROM t WHERE id=42;",
        "x = [1, 2, 3]\t# tab-separated", "fn main() -> Result<(), Box<dyn Error>> {", "  }", "$ uv run pytest -q",
        "print(f'{value:>10.3f}')", "<div class=\"a\">&nbsp;</div>", "    \"key\": null,", "a_b__c ___ d", "i++;--j;"]
URLS = ["https://example.com/a/b?c=1&d=%20e#frag", "http://127.0.0.1:8080/v1/completions", "www.wikipedia.org/wiki/Tokenizer",
        "mailto:someone@example.org", "ftp://files.example.net/pub/x-1.2.3.tar.gz", "git@github.com:owner/repo.git"]
NUMBERS = ["48", "72", "3.14159", "1,234,567", "-0.001", "6.02e23", "2026-12-07", "+1 (555) 010-9999", "0x7fff", "1e-10",
           "100%", "$19.99", "12345678901234567890", "½ ¾ ⅞", "٣٤٥", "१२३"]
CJK = ["日本語のテキストです。", "汉字和标点，混合。", "한국어 문장입니다.", "東京は晴れ", "中文 English 混合 text", "ｶﾀｶﾅ ｈａｌｆ"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "🧪🔬", "✨ sparkles ✨", "🤷‍♀️"]
CHATML = ["<|im_start|>system\nYou are helpful.<|im_end|>", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
          "<|endoftext|>", "text<|im_end|>more", "<|im_start|>", "< |im_start| >", "<filename>a.py<file_sep>"]
WORDS = ["Natalia sold clips", "the quick brown fox", "Ünïcödé àccents", "Привет, мир", "مرحبا بالعالم", "naïve café",
         "straße", "∀x∈ℝ: x²≥0", "don't won't it's", "HELLO world", "a", "", "ſ ﬁ ﬀ", "\u200b zero width"]
SPACES = ["", " ", "  ", "   ", "\t", "    ", "        ", " \t "]
ENDS = ["", "\n", "\r\n", "  ", "\r\n\r\n", " \n", "\t"]


def corpus(n: int = 2400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    groups = [CODE, URLS, NUMBERS, CJK, EMOJI, CHATML, WORDS]
    lines = [s for g in groups for s in g]  # every fragment alone too
    while len(lines) < n:
        parts = [rng.choice(rng.choice(groups)) for _ in range(rng.randint(1, 4))]
        sep = rng.choice([" ", "", ", ", "\r\n", "\n", "\t", " - "])
        lines.append(rng.choice(SPACES) + sep.join(parts) + rng.choice(ENDS))
    return lines


@pytest.fixture(scope="module")
def tokenizers(smollm2):
    from tokentree.lm.llama import LlamaBackend

    llama = LlamaBackend(smollm2.gguf, threads=1)
    quick = quick_model(str(smollm2.checkpoint), dtype="float32")
    auto = AutoTokenizer.from_pretrained(smollm2.checkpoint)
    yield quick, auto, llama
    llama.close()


def test_the_corpus_is_varied():
    lines = corpus()
    assert len(lines) >= 2000 and len(set(lines)) > 1800
    for needle in ("\r\n", "<|im_start|>", "👍🏽", "日本", "https://", "    ", "\t", "1,234,567"):
        assert any(needle in line for line in lines), needle


def test_quick_auto_and_llama_cpp_tokenizers_agree_line_by_line(tokenizers):
    quick, auto, llama = tokenizers
    mismatches = []
    for line in corpus():
        a, q, g = auto.encode(line), quick.encode(line), llama.encode(line)
        if not a == q == g:
            mismatches.append((line, a, q, g))
    assert not mismatches, f"{len(mismatches)} lines differ, e.g. {mismatches[:3]}"


def test_they_agree_on_the_whole_corpus_as_one_text(tokenizers):
    quick, auto, llama = tokenizers
    text = "\n".join(corpus())
    ids = auto.encode(text)
    assert quick.encode(text) == ids
    assert llama.encode(text) == ids
    # SmolLM2 splits every digit: no token of the whole corpus holds two digits.
    assert not any(sum(c.isdigit() and c.isascii() for c in auto.decode([i])) > 1 for i in set(ids))

"""Token id -> the raw bytes it stands for.

Tokenizers store tokens as strings in their own alphabet; a piece of a multi-byte character
cannot be recovered by decoding one id (decode gives '\ufffd'). So we invert the alphabet:
- byte-level BPE (GPT-2, Qwen, Llama 3): each character is one byte via `bytes_to_unicode`;
- SentencePiece with byte fallback (Llama 2, Mistral): '▁' is a space, '<0xNN>' is one byte;
- anything else: the tokenizer's own string for the token, as UTF-8.
Special and added tokens are their content (e.g. '<|endoftext|>') as UTF-8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache

from transformers.convert_slow_tokenizer import bytes_to_unicode

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@cache
def _byte_decoder() -> dict[str, int]:
    return {ch: b for b, ch in bytes_to_unicode().items()}


def _decoder_types(tokenizer) -> set[str]:
    """Types of the fast tokenizer's decoder (flattening a Sequence); empty if unknown."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    try:
        spec = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return set()
    parts = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
    return {p.get("type", "") for p in parts if isinstance(p, dict)}


def tokenizer_style(tokenizer) -> str:
    """'bytelevel', 'sentencepiece' or 'generic'."""
    types = _decoder_types(tokenizer)
    if "ByteLevel" in types:
        return "bytelevel"
    if "ByteFallback" in types or "Metaspace" in types or "sentencepiece" in type(tokenizer).__name__.lower():
        return "sentencepiece"
    if hasattr(tokenizer, "sp_model"):  # a slow SentencePiece tokenizer
        return "sentencepiece"
    return "generic"


def added_tokens(tokenizer) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) for tokens added on top of the model vocabulary."""
    return {i: (t.content, bool(t.special)) for i, t in tokenizer.added_tokens_decoder.items()}


class TokenBytes:
    """Maps ids to raw bytes for one tokenizer (the style is detected once)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.style = tokenizer_style(tokenizer)
        self.added = {i: content for i, (content, _) in added_tokens(tokenizer).items()}

    def __call__(self, ids: Iterable[int]) -> dict[int, bytes]:
        return {i: self.one(i) for i in ids}

    def one(self, token_id: int) -> bytes:
        if token_id in self.added:  # added tokens are stored as plain text
            return self.added[token_id].encode("utf-8")
        token = self.tokenizer.convert_ids_to_tokens(token_id)
        if token is None:
            return b""
        if self.style == "bytelevel":
            table = _byte_decoder()
            if all(ch in table for ch in token):
                return bytes(table[ch] for ch in token)
        elif self.style == "sentencepiece":
            m = _BYTE_TOKEN.fullmatch(token)
            if m:
                return bytes([int(m.group(1), 16)])
            return token.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.convert_tokens_to_string([token]).encode("utf-8")

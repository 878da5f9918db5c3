"""A GGUF file's identity, for the output cache and the session's vocabulary check, read
without llama.cpp (which is only imported, by `require_llama`).

- fingerprint: `gguf:FILE@content-HASH:QUANT`. HASH covers the file's whole header (every
  metadata key and value, the tokenizer included, and every tensor's name, shape, type and
  offset) plus its size and modification time, so a re-quantized or replaced file never
  reuses cached numbers; QUANT (F32, F16, Q4_K_M, ...) is spelled out so that numbers of two
  quantizations never mix even by name. Only the header is read, never the weights.
- require_llama: llama-cpp-python, or one line naming the extra that installs it.
- vocab_key: the same hash `lm.loader.vocab_key` makes of a Hugging Face tokenizer, rebuilt
  from the GGUF's token list, so a session moves between a model and its GGUF conversion.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from collections.abc import Sequence
from pathlib import Path

from tokentree.errors import ModelLoadError

# GGUF value types -> fixed size in bytes (8 = string, 9 = array are variable).
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_HEAD = 1 << 20  # without a readable header, the first MiB stands in for it
MISSING = ("GGUF models need llama-cpp-python: install the llama extra "
           "(uv run --extra llama tokentree --model FILE.gguf)")


def header_end(buf, strings: dict[str, str] | None = None) -> int:
    """Offset where a GGUF (v2+) header ends: after the metadata and the tensor infos.
    ValueError if `buf` is not such a header. With `strings`, also collects the metadata's
    string values there (key -> value; the arrays, the token list among them, are skipped)."""
    if bytes(buf[:4]) != b"GGUF" or struct.unpack_from("<I", buf, 4)[0] < 2:
        raise ValueError("not a GGUF v2+ file")
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24

    def string(p: int) -> int:
        return p + 8 + struct.unpack_from("<Q", buf, p)[0]

    def value(p: int, kind: int) -> int:
        if kind == _STRING:
            return string(p)
        if kind == _ARRAY:
            item, count = struct.unpack_from("<IQ", buf, p)
            p += 12
            if item in _SIZES:
                return p + _SIZES[item] * count
            for _ in range(count):
                p = value(p, item)
            return p
        return p + _SIZES[kind]  # KeyError on an unknown type: not a header we can read

    for _ in range(n_kv):
        key_at, pos = pos, string(pos)
        kind = struct.unpack_from("<I", buf, pos)[0]
        if strings is not None and kind == _STRING:
            strings[_text(buf, key_at)] = _text(buf, pos + 4)
        pos = value(pos + 4, kind)
    for _ in range(n_tensors):
        pos = string(pos)
        n_dims = struct.unpack_from("<I", buf, pos)[0]
        pos += 4 + 8 * n_dims + 4 + 8  # dims, type, offset
    if pos > len(buf):
        raise ValueError("truncated GGUF header")
    return pos


def _text(buf, p: int) -> str:
    size = struct.unpack_from("<Q", buf, p)[0]
    return bytes(buf[p + 8:p + 8 + size]).decode("utf-8", "replace")


def metadata_strings(path: Path) -> dict[str, str]:
    """The string values of a GGUF file's metadata (general.name, tokenizer.ggml.pre,
    tokenizer.chat_template, ...), read from its header alone; ValueError if it is not a GGUF."""
    strings: dict[str, str] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            header_end(buf, strings)
        except (KeyError, struct.error) as exc:
            raise ValueError(f"unreadable GGUF header ({exc})") from None
    return strings


def content_hash(path: Path, *, mtime: bool = True) -> str:
    """16 hex digits over the GGUF header, the file size and (unless `mtime` is False: the same
    file installed again) its modification time."""
    st = path.stat()
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps([st.st_size, st.st_mtime_ns] if mtime else [st.st_size]).encode())
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            end = header_end(buf)
        except (ValueError, KeyError, struct.error):
            end = min(len(buf), _HEAD)
        digest.update(buf[:end])
    return digest.hexdigest()


def require_llama():
    """The llama_cpp module; ModelLoadError (one line, naming the extra) if it is missing or
    its shared library does not load."""
    try:
        import llama_cpp
    except ImportError:
        raise ModelLoadError(MISSING) from None
    except Exception as exc:  # noqa: BLE001 -- the shared library failed to load
        raise ModelLoadError(f"llama-cpp-python is installed but does not load ({exc}); "
                             "reinstall the llama extra") from None
    return llama_cpp


def fingerprint(path: Path, quant: str) -> str:
    return f"gguf:{path.name}@content-{content_hash(path)}:{quant}"


def is_padding(token_id: int, text: str, unused: bool) -> bool:
    """A row llama.cpp's converter adds to fill the model's vocabulary size ("[PAD151665]",
    type UNUSED): not a token of the tokenizer, so not in its vocabulary."""
    return unused and text == f"[PAD{token_id}]"


def vocab_key(texts: Sequence[str], control: Sequence[bool], added: Sequence[bool],
              padding: Sequence[bool]) -> str:
    """`lm.loader.vocab_key` from a GGUF's tokens: `texts[i]` the token's string (the
    tokenizer's own spelling, e.g. "Ġthe"), `added[i]` a CONTROL or USER_DEFINED token (the
    tokenizer's added tokens), `control[i]` CONTROL (an added token marked special),
    `padding[i]` a converter's padding row. Equal to the Hugging Face tokenizer's key when
    the converter marked exactly its special added tokens as CONTROL (it also marks added
    tokens that merely look special, like "<|fim_prefix|>", which then differ)."""
    vocab = sorted((i, t) for i, t in enumerate(texts) if not padding[i])
    extra = sorted((i, t, bool(control[i])) for i, t in enumerate(texts) if added[i] and not padding[i])
    blob = json.dumps([vocab, extra], ensure_ascii=False).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=8).hexdigest()

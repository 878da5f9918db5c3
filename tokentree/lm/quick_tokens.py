"""A new session's model, read quickly: tokenizer, fingerprint, vocab key and context length
from the model's files, without torch or transformers, so the prompt is on screen before the
model has loaded (the model then loads in the background, as on --resume).

Everything here must equal what lm/loader.py computes once the model is loaded: the ids
(tokenizer_files.py builds the tokenizer as AutoTokenizer does), the fingerprint (same
function, same inputs) and the vocab key (same hash of the same vocabulary). Whatever cannot
be read that way raises NotQuick, and the caller loads the model first, as before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer

from tokentree.lm.chat import ChatTemplate, render_ids
from tokentree.lm.fingerprint import fingerprint
from tokentree.lm.tokenizer_files import Unsupported, build, class_for, read_json

# config.json keys of the context length, in lm/loader.py's order.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_WEIGHTS = (("model.safetensors", "model.safetensors.index.json"),
            ("pytorch_model.bin", "pytorch_model.bin.index.json"))


class NotQuick(Exception):
    """The model cannot be read without loading it (the reason is the message)."""


@dataclass(frozen=True)
class QuickModel:
    """What a session is started with (the ModelInfo fields `_start_session` reads) and the tokenizer."""

    name: str  # as the user gave it
    fingerprint: str
    vocab_key: str
    context_length: int | None
    tokenizer: Tokenizer
    template: ChatTemplate | None = None

    def encode(self, text: str) -> list[int]:
        """The ids AutoTokenizer's `encode(text)` gives: special tokens (a BOS) included."""
        return list(self.tokenizer.encode(text).ids)

    # Chat, as lm/engine.py's: the same template rendered as transformers does, the same ids.
    def chat_template(self) -> ChatTemplate | None:
        return self.template

    def encode_special(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def chat_ids(self, messages, *, add_generation_prompt: bool = True) -> list[int]:
        if self.template is None:
            raise ValueError("the tokenizer has no chat template")
        return render_ids(self.template, messages, self.encode_special, add_generation_prompt=add_generation_prompt)

    def special_ids(self) -> frozenset[int]:
        return frozenset(i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special)

    def token_bytes(self, ids: Iterable[int]) -> dict[int, bytes]:
        """lm/tokens.py's TokenBytes for these ids, so the prompt reads as text at once (the
        store keeps the first bytes written for an id: these must be the engine's)."""
        return token_bytes(self.tokenizer, ids)


def quick_model(name: str, *, dtype: str) -> QuickModel:
    """Read model `name` (a local directory, or a hub name complete in the local cache) for a
    session in `dtype`. NotQuick when it cannot be read here."""
    directory, source, revision, local = _locate(name)
    config = _json(directory / "config.json")
    if not (directory / "tokenizer.json").is_file():
        raise NotQuick("no tokenizer.json")
    tok_config = _json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
    try:
        raw = (directory / "tokenizer.json").read_text(encoding="utf-8")
        spec = json.loads(raw)
        text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        cls = class_for(config.get("model_type"), tok_config, config, source, byte_level='"ByteLevel"' in raw)
        tokenizer = build(directory, cls, tok_config, spec)
    except Unsupported as exc:
        raise NotQuick(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- a file tokenizers cannot read: the loader says what is wrong
        raise NotQuick(f"cannot read the tokenizer ({type(exc).__name__}: {exc})") from None
    identity = fingerprint(source, dtype, revision=revision, directory=directory if local else None)
    return QuickModel(name=name, fingerprint=identity, vocab_key=vocab_key(tokenizer),
                      context_length=_context_length(text_config), tokenizer=tokenizer,
                      template=_chat_template(directory, tok_config))


def _chat_template(directory: Path, tok_config: dict) -> ChatTemplate | None:
    """The template transformers would load: chat_template.jinja, else tokenizer_config's."""
    path = directory / "chat_template.jinja"
    template = path.read_text(encoding="utf-8") if path.is_file() else tok_config.get("chat_template")
    if isinstance(template, list):  # several named templates
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(template, str) or not template:
        return None

    def text_of(value) -> str:
        return value.get("content", "") if isinstance(value, dict) else (value or "")

    return ChatTemplate(template, text_of(tok_config.get("bos_token")), text_of(tok_config.get("eos_token")))


def vocab_key(tokenizer: Tokenizer) -> str:
    """lm/loader.py's vocab_key for this tokenizer: transformers' get_vocab() and
    added_tokens_decoder are the backend's own, so the same hash of the same lists."""
    vocab = sorted((i, t) for t, i in tokenizer.get_vocab(with_added_tokens=True).items())
    added = sorted((i, t.content, bool(t.special)) for i, t in tokenizer.get_added_tokens_decoder().items())
    blob = json.dumps([vocab, added], ensure_ascii=False).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def token_bytes(tokenizer: Tokenizer, ids: Iterable[int]) -> dict[int, bytes]:
    """The raw bytes of each id, by lm/tokens.py's rules (byte-level alphabet, SentencePiece
    '▁' and <0xNN>, else the decoder's text; added tokens as their content), read from the
    backend tokenizer that transformers wraps."""
    style = _style(tokenizer)
    added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
    return {i: _piece(tokenizer, style, added, i) for i in ids}


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@cache
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode (transformers.convert_slow_tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _style(tokenizer: Tokenizer) -> str:
    """lm/tokens.py's tokenizer_style, from the decoder alone (not the whole tokenizer's JSON)."""
    try:
        spec = json.loads(tokenizer.decoder.__getstate__()) if tokenizer.decoder is not None else {}
    except (ValueError, TypeError, AttributeError):
        spec = {}
    parts = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
    types = {p.get("type", "") for p in parts if isinstance(p, dict)}
    if "ByteLevel" in types:
        return "bytelevel"
    if "ByteFallback" in types or "Metaspace" in types:
        return "sentencepiece"
    return "generic"


def _piece(tokenizer: Tokenizer, style: str, added: dict[int, str], token_id: int) -> bytes:
    if token_id in added:
        return added[token_id].encode("utf-8")
    token = tokenizer.id_to_token(token_id)
    if token is None:
        return b""
    if style == "bytelevel":
        table = _byte_decoder()
        if all(ch in table for ch in token):
            return bytes(table[ch] for ch in token)
    elif style == "sentencepiece":
        m = _BYTE_TOKEN.fullmatch(token)
        if m:
            return bytes([int(m.group(1), 16)])
        return token.replace("\u2581", " ").encode("utf-8")
    decoder = tokenizer.decoder
    text = decoder.decode([token]) if decoder is not None else " ".join([token])
    return text.encode("utf-8")


def _locate(name: str) -> tuple[Path, str, str | None, bool]:
    """(folder of the files, the source the loader names it by, hub revision, local?)."""
    if name.lower().endswith(".gguf"):
        raise NotQuick("a GGUF file")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise NotQuick("not a model directory")
        folder = path.resolve()
        _require_weights(folder)
        return folder, str(folder), None, True
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        raise NotQuick("no such path")
    from tokentree.lm.download import cached_snapshot  # imports huggingface_hub: hub names only

    try:
        folder = cached_snapshot(name)
    except Exception as exc:  # noqa: BLE001 -- e.g. a name huggingface_hub refuses: the loader says so
        raise NotQuick(f"cache lookup failed ({type(exc).__name__})") from None
    if folder is None:
        raise NotQuick("not complete in the Hugging Face cache (it is downloaded first)")
    revision = folder.name if folder.parent.name == "snapshots" else None
    return folder, name, revision, False


def _require_weights(folder: Path) -> None:
    """A directory without its weights fails to load: that error comes before the screen."""
    for single, index in _WEIGHTS:
        if (folder / single).is_file():
            return
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise NotQuick(f"unreadable {index}") from None
            if shards and all((folder / s).is_file() for s in shards):
                return
            raise NotQuick("weight shards missing")
    raise NotQuick("no weights in the directory")


def _json(path: Path) -> dict:
    try:
        return read_json(path)
    except Unsupported as exc:
        raise NotQuick(str(exc)) from None


def _context_length(text_config: dict) -> int:
    """lm/loader.py's _context_length from config.json. NotQuick if the file names none:
    the loader would then use a class default or the tokenizer's limit, not seen here."""
    for key in _CONTEXT_KEYS:
        value = text_config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise NotQuick("config.json names no context length")

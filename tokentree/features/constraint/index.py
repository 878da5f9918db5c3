"""Which tokens keep a text matching a regular expression: llguidance over a model's vocabulary.

llguidance compiles the pattern into a lazily built DFA over bytes (in about a millisecond)
and walks the vocabulary's token trie against it to compute a step's mask (about 0.1 ms for
151,665 tokens). Its matcher consumes tokens, can be rolled back, and says whether the text
so far is a whole match (`is_accepting`): so the constraint's state at a node is "the
matcher after the branch's tokens since the constraint was switched on", kept by one cursor
per constraint that rolls back and forward as the user moves (a pop is one rollback).

What is built once per vocabulary (`Vocabulary`): the token table (the bytes of every id, as
`engine.token_bytes` gives them, and the model's stop ids) and llguidance's tokenizer (the
token trie, about 0.5 s for 151,665 tokens). The token table is kept in the data dir
(`constraints/vocab-<hash>.bin`, private to the user, a cache never committed anywhere),
so only the first session of a vocabulary walks the tokenizer for it. A pattern's index
(`ConstraintIndex`: the compiled regex and its matcher) is built once per (pattern,
vocabulary) per process.

Stop tokens (end of sequence) are llguidance's end-of-sequence tokens: allowed exactly when
the text is a whole match. llguidance spells the text a pattern forces (the "-" after a
year) with the vocabulary, so it assumes the vocabulary can spell any byte, as byte-level BPE
and byte-fallback tokenizers (every model tokentree loads) do. Special tokens other than the stop tokens are text by their
names' bytes, as `engine.token_bytes` gives them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tokentree.paths import data_dir

from . import COMPLETE, DEAD, LIVE, ConstraintError

log = logging.getLogger(__name__)

FORMAT = 1  # of the token-table files; a change makes new names, old files are not found
_MAGIC = b"tokentree-vocabulary\n"
_MAX_TOKEN = 64  # bytes: the greedy tokenizer llguidance uses for forced text looks this far


@functools.cache
def library_version() -> str:
    try:
        return f"llguidance {metadata.version('llguidance')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency of tokentree
        return "llguidance ?"


class Vocabulary:
    """A model's tokens as llguidance sees them (built once per vocabulary: about 0.5 s for
    151,665 tokens). Ids without bytes are never allowed."""

    def __init__(self, pieces: Sequence[bytes], stop_ids: Iterable[int], *, key: str) -> None:
        import llguidance

        self.key = key
        self.size = len(pieces)
        self.stop_ids = frozenset(int(i) for i in stop_ids if 0 <= int(i) < len(pieces))
        tokens = [bytes(p) for p in pieces]
        eos = sorted(self.stop_ids)
        if not eos:  # llguidance needs an end of sequence: one id past the vocabulary
            eos = [len(tokens)]
            tokens.append(b"<|tokentree-eos|>")
        self.eos = eos
        lookup: dict[bytes, int] = {}
        for i, piece in enumerate(tokens):
            if piece and i not in self.stop_ids:
                lookup.setdefault(piece, i)
        longest = min(_MAX_TOKEN, max((len(p) for p in lookup), default=1))

        def tokenize(data: bytes) -> list[int]:
            """Greedy longest match: llguidance asks it to spell text the pattern forces."""
            out, i = [], 0
            while i < len(data):
                for j in range(min(len(data), i + longest), i, -1):
                    token = lookup.get(data[i:j])
                    if token is not None:
                        out.append(token)
                        i = j
                        break
                else:
                    i += 1  # a byte no token spells: the model cannot write it anyway
            return out

        class _Tokens:  # what llguidance.TokenizerWrapper reads
            eos_token_id = eos[0]
            bos_token_id = None
            special_token_ids = eos

            def __init__(self) -> None:
                self.tokens = tokens

            def __call__(self, data: bytes) -> list[int]:
                return tokenize(data)

        self.llg = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Tokens()), eos_token=eos)
        self.mask_bytes = (len(tokens) + 31) // 32 * 4


@dataclass(frozen=True)
class Position:
    """Where a text stands against a pattern, and which tokens may come next."""

    status: str  # LIVE, COMPLETE or DEAD
    mask: bytes = b""  # one bit per token id: allowed next (empty when dead or stopped)
    size: int = 0  # the vocabulary's ids (bits past it are not tokens)
    stop_ids: frozenset[int] = frozenset()

    def allows(self, token: int) -> bool:
        return 0 <= token < self.size and (token >> 3) < len(self.mask) and bool(self.mask[token >> 3] >> (token & 7) & 1)

    @functools.cached_property
    def allowed_count(self) -> int:
        """Allowed tokens in the whole vocabulary (stop tokens included)."""
        if not self.mask:
            return 0
        bits = int.from_bytes(self.mask, "little") & ((1 << self.size) - 1)
        return bits.bit_count()

    @property
    def can_continue(self) -> bool:
        """Some text token (not only a stop) may follow."""
        return self.allowed_count > sum(1 for t in self.stop_ids if self.allows(t))


class ConstraintIndex:
    """One pattern over one vocabulary: its llguidance matcher, used as a cursor. Not
    thread-safe: one thread uses it (the UI thread, once built)."""

    def __init__(self, pattern: str, vocabulary: Vocabulary) -> None:
        import llguidance

        self.pattern = pattern
        self.vocabulary = vocabulary
        grammar = llguidance.LLMatcher.grammar_from_regex(pattern)
        problem = llguidance.LLMatcher.validate_grammar(grammar, vocabulary.llg)
        if problem and not problem.startswith("WARNING"):
            raise ConstraintError(library_message(problem))
        self._matcher = llguidance.LLMatcher(vocabulary.llg, grammar, log_level=0)
        if self._matcher.is_error():  # pragma: no cover - validate_grammar says it first
            raise ConstraintError(library_message(self._matcher.get_error()))
        self._consumed: list[int] = []  # the tokens the matcher holds now

    def position(self, tokens: Sequence[int]) -> Position:
        """Where the text of `tokens` stands (the tokens since the constraint was switched on)."""
        m, held = self._matcher, self._consumed
        k = 0
        limit = min(len(held), len(tokens))
        while k < limit and held[k] == tokens[k]:
            k += 1
        if k < len(held):
            if not m.rollback(len(held) - k):  # pragma: no cover - rollback of consumed tokens works
                m.reset()
                k = 0
            del held[k:]
        rest = list(tokens[k:])
        stop = next((i for i, t in enumerate(rest) if t in self.vocabulary.stop_ids), None)
        text, after = (rest, []) if stop is None else (rest[:stop], rest[stop:])
        if text:
            done = m.try_consume_tokens(text)
            held.extend(text[:done])
            if m.is_error():  # pragma: no cover - try_consume stops before a bad token
                m.reset()
                held.clear()
                return Position(DEAD, size=self.vocabulary.size)
            if done < len(text):
                return Position(DEAD, size=self.vocabulary.size)
        if after:  # a stop token ends the text: fine after a whole match, and nothing may follow it
            ok = len(after) == 1 and m.is_accepting()
            return Position(COMPLETE if ok else DEAD, size=self.vocabulary.size)
        mask, accepting = m.compute_bitmask(), m.is_accepting()
        if not accepting:  # llguidance offers a stop where no text token fits: not here, the text is unfinished
            mask = bytearray(mask)
            for t in self.vocabulary.eos:
                mask[t >> 3] &= ~(1 << (t & 7)) & 0xFF
            mask = bytes(mask)
        return Position(COMPLETE if accepting else LIVE, mask, self.vocabulary.size, self.vocabulary.stop_ids)

    def status(self, tokens: Sequence[int]) -> str:
        return self.position(tokens).status


def library_message(text: str) -> str:
    """llguidance's error as one short line."""
    text = " ".join(str(text).split())
    if "look-around" in text or "lookaround" in text:
        return "lookarounds and word boundaries are not supported (the pattern always matches the whole text)"
    if "backreference" in text:
        return "backreferences are not supported"
    for marker in ("error: ", "): "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
            break
    return f"llguidance cannot compile it: {text.split(' 1 | ')[0][:160]}"


# --------------------------------------------------------------------------- the token table cache


def cache_dir() -> Path:
    return data_dir() / "constraints"


def vocabulary_file(vocab_key: str, directory: Path | None = None) -> Path:
    name = hashlib.sha256(json.dumps([FORMAT, vocab_key]).encode("utf-8")).hexdigest()[:32]
    return (directory or cache_dir()) / f"vocab-{name}.bin"


def save_token_table(vocab_key: str, pieces: Sequence[bytes], stop_ids: Iterable[int],
                     directory: Path | None = None) -> Path:
    """The token table in the data dir (atomically: a reader never sees half a file)."""
    path = vocabulary_file(vocab_key, directory)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    header = json.dumps({"format": FORMAT, "vocab_key": vocab_key, "size": len(pieces),
                         "stop_ids": sorted(int(i) for i in stop_ids)}).encode("utf-8")
    body = b"".join(struct.pack("<I", len(p)) + bytes(p) for p in pieces)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".bin")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + header + b"\n" + body)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_token_table(vocab_key: str, directory: Path | None = None) -> tuple[list[bytes], list[int]] | None:
    """(bytes per id, stop ids) from the data dir; None when absent or unreadable."""
    path = vocabulary_file(vocab_key, directory)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("not a tokentree token table")
        end = data.index(b"\n", len(_MAGIC))
        header = json.loads(data[len(_MAGIC):end])
        if header["format"] != FORMAT or header["vocab_key"] != vocab_key:
            raise ValueError("another format or vocabulary")
        pieces, at = [], end + 1
        for _ in range(int(header["size"])):
            (n,) = struct.unpack_from("<I", data, at)
            pieces.append(data[at + 4: at + 4 + n])
            at += 4 + n
        if at != len(data):
            raise ValueError("trailing bytes")
        return pieces, [int(i) for i in header["stop_ids"]]
    except Exception as exc:  # noqa: BLE001 -- a damaged cache file is rebuilt, never fatal
        log.warning("ignoring the token table %s: %s", path, exc)
        return None


def vocabulary_for(vocab_key: str, pieces: Callable[[], Sequence[bytes]], stop_ids: Iterable[int],
                   directory: Path | None = None) -> Vocabulary:
    """The vocabulary from the data dir's token table, else from `pieces()` (then kept there;
    a data dir that cannot be written is logged, not fatal)."""
    stop_ids = sorted(int(i) for i in stop_ids)
    table = load_token_table(vocab_key, directory)
    if table is None:
        table = (list(pieces()), stop_ids)
        try:
            save_token_table(vocab_key, table[0], stop_ids, directory)
        except OSError as exc:
            log.warning("cannot keep the token table: %s", exc)
    return Vocabulary(table[0], stop_ids, key=vocab_key)


# --------------------------------------------------------------------------- text, byte by byte


@functools.cache
def byte_vocabulary() -> Vocabulary:
    """The 256 one-byte tokens (token id = byte) and a stop: walks any text byte by byte."""
    return Vocabulary([bytes([b]) for b in range(256)] + [b"<|eos|>"], [256], key="bytes")


@functools.lru_cache(maxsize=64)
def byte_index(pattern: str) -> ConstraintIndex:
    """The pattern over single bytes: it checks that llguidance accepts a pattern, and gives
    where a recorded text stands without any model's vocabulary (exports, status)."""
    return ConstraintIndex(pattern, byte_vocabulary())


class TextPosition:
    """Where a text stands, and whether each of some tokens (given by their bytes) may follow,
    walked byte by byte: what the screen uses before the model's index is built (a resume
    before the model is loaded). It cannot count the vocabulary's allowed tokens."""

    allowed_count = None

    def __init__(self, pattern: str, text: bytes, pieces, stop_ids: Iterable[int] = ()) -> None:
        self._index = byte_index(pattern)
        self._text = list(text)
        self._pieces = pieces  # token id -> bytes (a mapping; an id it lacks is not allowed)
        self._stops = frozenset(stop_ids)
        here = self._index.position(self._text)
        self.status = here.status
        self.can_continue = here.status != DEAD and here.can_continue
        self._memo: dict[int, bool] = {}

    def allows(self, token: int) -> bool:
        found = self._memo.get(token)
        if found is None:
            if token in self._stops:
                found = self.status == COMPLETE
            else:
                piece = self._pieces.get(token)
                found = bool(piece) and self.status != DEAD and \
                    self._index.position(self._text + list(piece)).status != DEAD
            self._memo[token] = found
        return found


def text_status(pattern: str, data: bytes) -> str:
    """live, complete or dead: where `data` (the text since the constraint was switched on) stands."""
    return byte_index(pattern).status(list(data))

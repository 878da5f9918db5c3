"""A chat template's turn format, read off the ids it renders: which special tokens end a
turn (a stop for fill and sample) and which open one (where the screen labels a turn), and
the turns of a token sequence. Pure, and without jinja2 (exports read turns too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokentree.chat.conversation import ROLES
from tokentree.errors import InputError


# ---------------------------------------------------------------- turn format


@dataclass(frozen=True)
class ChatFormat:
    """The special ids that end an assistant turn (generation stops there), those that open a
    turn's header (the explorer marks turns there) and those that close a header after its
    role (Llama-3's <|end_header_id|>: `turns` reads a role up to one; without them a role
    runs on to a newline)."""

    end_of_turn: frozenset[int]
    openers: frozenset[int]
    closers: frozenset[int] = frozenset()


IdsOf = Callable[[list[dict], bool], list[int]]

# Probe contents. Each base text and its alternative differ in their first and in their last
# character, so the ids of two renderings differ exactly over the tokens that hold (or merge
# with) that content, whatever the tokenizer: the shared prefix and suffix are the template's.
_BASE = {"system": "Be brief.", "user": "Hi", "assistant": "Fine", "user2": "Why"}
_ALT = {"system": "Act calm!", "user": "Yo", "assistant": "Okay", "user2": "How"}


def detect_format(ids_of: IdsOf, special: frozenset[int], piece: Callable[[int], bytes]) -> ChatFormat:
    """Read a chat template's turn format off the ids it renders (`ids_of(messages,
    add_generation_prompt)`); `special` is the tokenizer's special ids.

    Content is located by rendering each probe conversation again with ONE message's content
    changed and comparing ids: what differs is that content's tokens. Then:

    - end_of_turn: the first special id after the assistant's content in [user, assistant]
      (no generation prompt): ChatML's <|im_end|>, Llama-3's <|eot_id|>, Phi-3's <|end|>.
    - openers: in [system, user, assistant, user] + generation prompt (without the system
      message where the template refuses one), the first special id, not an end-of-turn id,
      between one content and the next (and before the first content, and in the generation
      prompt): ChatML's <|im_start|>, Llama-3's <|start_header_id|>, Phi-3's <|system|>,
      <|user|>, <|assistant|>. A BOS-like id at position 0 that occurs once is skipped when
      another special id follows it before the first content (Llama-3's <|begin_of_text|>).
    - closers: the special ids after the opener in those same gaps (Llama-3's
      <|end_header_id|>; none for ChatML and Phi-3).

    `piece` is unused today (the ids say enough); it is taken so callers need not change when
    a format needs the tokens' text. Either set is empty where nothing fits (a template with
    no special ids around its turns).
    """
    del piece
    end = _end_of_turn(ids_of, special)
    openers, closers = _headers(ids_of, special - end)
    return ChatFormat(end_of_turn=end, openers=openers, closers=closers - openers)


def _end_of_turn(ids_of: IdsOf, special: frozenset[int]) -> frozenset[int]:
    keys = ["user", "assistant"]
    ids = list(ids_of(_probe(keys), False))
    span = _changed_span(ids, list(ids_of(_probe(keys, change="assistant"), False)))
    if span is None:
        return frozenset()
    first = next((i for i in ids[span[1]:] if i in special), None)
    return frozenset() if first is None else frozenset({first})


def _headers(ids_of: IdsOf, candidates: frozenset[int]) -> tuple[frozenset[int], frozenset[int]]:
    """(openers, closers) of the headers in the probe conversation."""
    for keys in (["system", "user", "assistant", "user2"], ["user", "assistant", "user2"]):
        try:
            ids = list(ids_of(_probe(keys), True))
            spans = [_changed_span(ids, list(ids_of(_probe(keys, change=k), True))) for k in keys]
        except Exception as exc:  # e.g. Gemma's "System role not supported"
            if not _refused(exc):
                raise
            if keys[0] == "system":
                continue
            raise
        return _gap_headers(ids, [s for s in spans if s is not None], candidates)
    raise AssertionError("unreachable")


def _gap_headers(ids: list[int], spans: list[tuple[int, int]],
                 candidates: frozenset[int]) -> tuple[frozenset[int], frozenset[int]]:
    """In each gap between contents (and before the first, after the last): the first candidate
    id opens the header, the candidates after it close it (or its role)."""
    spans = _in_order(spans)
    bounds = [0] + [b for s in spans for b in s] + [len(ids)]
    openers, closers = set(), set()
    for n in range(0, len(bounds), 2):
        gap = [(at, i) for at, i in enumerate(ids[bounds[n]:bounds[n + 1]], bounds[n]) if i in candidates]
        if n == 0 and len(gap) > 1 and gap[0][0] == 0 and ids.count(gap[0][1]) == 1:
            gap = gap[1:]  # a BOS before the first header, not a header itself
        if gap:
            openers.add(gap[0][1])
            closers.update(i for _, i in gap[1:])
    return frozenset(openers), frozenset(closers)


def _in_order(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans that follow one another: a template that renders a content twice (or out of
    order) would otherwise make a gap run backwards."""
    kept: list[tuple[int, int]] = []
    for start, stop in spans:
        if not kept or start >= kept[-1][1]:
            kept.append((start, stop))
    return kept


def _probe(keys: list[str], change: str | None = None) -> list[dict]:
    return [{"role": "user" if k == "user2" else k, "content": (_ALT if k == change else _BASE)[k]} for k in keys]


def _changed_span(a: list[int], b: list[int]) -> tuple[int, int] | None:
    """[start, stop) in `a` of the ids that differ from `b` (past their common prefix and
    suffix), or None where the two are the same (the template dropped that content)."""
    if a == b:
        return None
    limit = min(len(a), len(b))
    start = next((n for n in range(limit) if a[n] != b[n]), limit)
    tail = 0
    while tail < limit - start and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return start, len(a) - tail


# ---------------------------------------------------------------- turns in a sequence

_ROLE_SCAN = 16  # tokens read after an opener for its role: roles are a word or two
_TOKEN_MARKS = "<>|[]\uff5c"  # "<|user|>" -> "user"; \uff5c: DeepSeek's fullwidth bar "<｜User｜>"


def turns(ids: Sequence[int], fmt: ChatFormat, piece: Callable[[int], bytes]) -> list[tuple[int, str]]:
    """(position, role) of each turn start in `ids`: every position holding an opener. The role
    is the opener's own name where that is one of ROLES (Phi-3's <|user|>: its header may run
    straight into the content), else the text of the tokens after it up to an opener, an end
    of turn, a closer or a newline (ChatML's `<|im_start|>user\\n`, Llama-3's `<|start_header_id|>user<|end_header_id|>`;
    at most _ROLE_SCAN tokens), else the opener's name (`<|`, `|>`, `[`, `]` stripped, lower case)."""
    stops = fmt.openers | fmt.end_of_turn | fmt.closers
    found = []
    for at, token in enumerate(ids):
        if token in fmt.openers:
            name = piece(token).decode("utf-8", "replace").strip(_TOKEN_MARKS).lower()
            role = name if name in ROLES else _header_text(ids[at + 1:at + 1 + _ROLE_SCAN], stops, piece)
            found.append((at, role or name))
    return found


def _header_text(ids: Sequence[int], stops: frozenset[int], piece: Callable[[int], bytes]) -> str:
    """The text of `ids` up to the first stop id or newline, stripped."""
    data = b""
    for token in ids:
        if token in stops:
            break
        chunk = piece(token)
        if b"\n" in chunk:
            data += chunk.split(b"\n", 1)[0]
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def _refused(exc: Exception) -> bool:
    """The template refused the probe (jinja2 is imported only here, on that path)."""
    import jinja2

    return isinstance(exc, (InputError, jinja2.TemplateError))

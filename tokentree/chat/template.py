"""Hugging Face chat templates without transformers: rendering (exactly as transformers 5.x
renders them, so the ids are the ones `apply_chat_template` gives) and reading a template's
turn format off the ids it produces (which special tokens end a turn and which open one).

Pure: jinja2 only, no torch, no tokenizer. Tokenizing is the caller's: `detect_format` gets
a function from messages to ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tokentree.chat.conversation import ROLES
from tokentree.errors import InputError

# ---------------------------------------------------------------- rendering


def render_template(template: str, messages: Sequence[dict], *, bos_token: str = "", eos_token: str = "",
                    add_generation_prompt: bool = True, **extra: Any) -> str:
    """The text `template` renders for `messages`, with the variables transformers'
    apply_chat_template passes (extra keyword arguments are template variables too, and may
    set `tools` / `documents`, which are None otherwise). A template that fails (a syntax
    error, its own raise_exception, a bad expression) is an InputError of one line."""
    compiled = _compile(template)
    # A fresh copy of each message, None values dropped, as transformers normalises them.
    chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
    variables = {"tools": None, "documents": None, "bos_token": bos_token, "eos_token": eos_token, **extra}
    try:
        return compiled.render(messages=chat, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateError as exc:
        raise _failed(exc) from None
    except Exception as exc:  # noqa: BLE001 -- a template's expression can raise anything (e.g. "a" + 1)
        raise InputError(f"the model's chat template failed: {_one_line(f'{type(exc).__name__}: {exc}')}") from None


def template_hash(template: str) -> str:
    """A short stable name of a template's exact text (a session records which one it used)."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateError as exc:
        raise _failed(exc) from None


def _failed(exc: jinja2.TemplateError) -> InputError:
    message = exc.message or type(exc).__name__
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.lineno:
        message = f"{message} (template line {exc.lineno})"
    return InputError(f"the model's chat template failed: {_one_line(message)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body: transformers' AssistantTracker
    with its tracking (of which characters the assistant wrote) left out."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers' override: json.dumps as is (jinja's own filter HTML-escapes and differs).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """transformers' `dict` global: builds dicts, exposes nothing else to the template."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """transformers' `namespace` global: no underscore-prefixed attributes (no way to CPython's
    internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}. "
                "Please rename the attribute.")


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    """transformers' environment (chat_template_utils._cached_compile_jinja_template): the same
    options, filter and globals. One is shared: nothing in it holds per-template state."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


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
        except (InputError, jinja2.TemplateError):  # e.g. Gemma's "System role not supported"
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

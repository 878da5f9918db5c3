"""Hugging Face chat templates without transformers: rendering exactly as transformers 5.x
renders them, so the ids are the ones `apply_chat_template` gives. A template's turn format
is read off the ids it produces in chat/format.py.

Pure: jinja2 only, no torch, no tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

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

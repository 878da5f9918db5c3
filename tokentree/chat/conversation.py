"""Chat conversations read from files or built from arguments: plain dicts
{"role": str, "content": str}, returned as tuples of dicts that hold only those two keys.

Every way an input can be unusable is an InputError with one line naming the file and the
problem, so `tokentree` can print it and exit before any model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokentree.errors import InputError
from tokentree.prompts import read_prompt

ROLES = ("system", "developer", "user", "assistant", "tool")
_SUFFIXES = (".json", ".jsonl")

Message = dict[str, str]


def is_conversation_file(path: str | Path) -> bool:
    """Whether `path` names a conversation (.json / .jsonl, any case) rather than a prompt."""
    return Path(path).suffix.lower() in _SUFFIXES


def read_conversation(path: str | Path) -> tuple[Message, ...]:
    """The messages of a .json file (a list of messages, or OpenAI's {"messages": [...]}) or a
    .jsonl file (one message per non-blank line). The file is read by read_prompt, so it gets
    the same checks (missing, a directory, too large, binary, not UTF-8, empty)."""
    p = Path(path).expanduser()
    text = read_prompt(p)
    if p.suffix.lower() == ".jsonl":
        messages = _jsonl_messages(p, text)
    else:
        messages = _json_messages(p, text)
    if messages[-1]["role"] == "assistant":
        raise InputError(f"{p} ends with an assistant message; the explorer opens at the assistant's next turn, "
                         "so end it with a user or tool message")
    return messages


def user_message(text: str) -> tuple[Message]:
    """A plain prompt as a one-message conversation (`--chat`)."""
    return ({"role": "user", "content": text},)


def system_text(arg: str) -> str:
    """The text of `--system ARG`: `@FILE` is FILE's text (read_prompt's checks), anything else
    is the text itself."""
    if arg.startswith("@"):
        if not arg[1:].strip():
            raise InputError("--system @ names no file (use --system @FILE)")
        return read_prompt(arg[1:])
    if not arg.strip():
        raise InputError("--system is empty: give the system message, or @FILE to read it from a file")
    return arg


def with_system(messages: Sequence[Message], text: str, source: str) -> tuple[Message, ...]:
    """`messages` after a system message of `text`. A second system message is refused: which
    one the model should follow would be a guess."""
    if messages and messages[0]["role"] == "system":
        raise InputError(f"{source} already has a system message; leave out --system or remove it from the file")
    return ({"role": "system", "content": text}, *({"role": m["role"], "content": m["content"]} for m in messages))


def _json_messages(p: Path, text: str) -> tuple[Message, ...]:
    data = _loads(text, f"{p}: ")
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        items = data["messages"]
    elif isinstance(data, list):
        items = data
    else:
        got = "an object without a \"messages\" list" if isinstance(data, dict) else _kind(data)
        raise InputError(f"{p}: expected a JSON list of messages or an object with a \"messages\" list, got {got}")
    if not items:
        raise InputError(f"{p}: the conversation has no messages")
    return tuple(_message(item, f"{p}: message {n}") for n, item in enumerate(items, 1))


def _jsonl_messages(p: Path, text: str) -> tuple[Message, ...]:
    messages = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            where = f"{p}: line {number}"
            messages.append(_message(_loads(line, f"{where}: ", one_line=True), where))
    if not messages:  # read_prompt refuses a blank file already; kept so the rule is local
        raise InputError(f"{p}: the conversation has no messages")
    return tuple(messages)


def _loads(text: str, prefix: str, *, one_line: bool = False) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if one_line else f"line {exc.lineno}, column {exc.colno}"
        raise InputError(f"{prefix}not JSON ({at}: {exc.msg})") from None
    except RecursionError:  # nesting deeper than json can parse
        raise InputError(f"{prefix}not JSON (nested too deeply)") from None


def _message(item: Any, where: str) -> Message:
    """One message, checked; `where` names it in errors ("FILE: message 2", "FILE: line 3")."""
    if not isinstance(item, dict):
        raise InputError(f"{where} is not an object (got {_kind(item)})")
    if "role" not in item:
        raise InputError(f"{where} has no \"role\"")
    role = item["role"]
    if role not in ROLES:
        shown = repr(role) if isinstance(role, str) else json.dumps(role, ensure_ascii=False)[:40]
        raise InputError(f"{where} has an unknown role {shown} (use one of: {', '.join(ROLES)})")
    if item.get("content") is None:
        raise InputError(f"{where} has no \"content\"")
    content = _content(item["content"], where)
    if not content.strip():
        raise InputError(f"{where} has empty content")
    return {"role": role, "content": content}


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InputError(f"{where} has content of the wrong type ({_kind(content)}); "
                         "expected a string or a list of text parts")
    texts = []
    for n, part in enumerate(content, 1):
        if not isinstance(part, dict):
            raise InputError(f"{where}: content part {n} is not an object (got {_kind(part)})")
        kind = part.get("type")
        if kind != "text":
            shown = "no type" if kind is None else f"type {json.dumps(kind, ensure_ascii=False)[:40]}"
            raise InputError(f"{where}: content part {n} has {shown}; only \"text\" parts are supported")
        if not isinstance(part.get("text"), str):
            raise InputError(f"{where}: content part {n} has no \"text\" string")
        texts.append(part["text"])
    return "".join(texts)


def _kind(value: Any) -> str:
    """A JSON value's type in JSON's words, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"

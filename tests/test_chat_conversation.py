"""tokentree.chat.conversation: conversation files (.json / .jsonl) and the --chat / --system
arguments. Every bad input is an InputError of one line that names the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tokentree.prompts
from tokentree.chat import (
    ROLES,
    is_conversation_file,
    read_conversation,
    system_text,
    user_message,
    with_system,
)
from tokentree.errors import InputError

ACCEPTED = "(use one of: system, developer, user, assistant, tool)"
WRONG_TYPE = "expected a string or a list of text parts"
NOT_LIST = 'expected a JSON list of messages or an object with a "messages" list'
ENDS = ("{p} ends with an assistant message; the explorer opens at the assistant's next turn, "
        "so end it with a user or tool message")


def user(content) -> dict:
    return {"role": "user", "content": content}


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def lines(*values) -> str:
    return "\n".join(v if isinstance(v, str) else dumps(v) for v in values)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_roles():
    assert ROLES == ("system", "developer", "user", "assistant", "tool")


@pytest.mark.parametrize("name, expected", [
    ("chat.json", True), ("chat.jsonl", True), ("CHAT.JSON", True), ("a/b.JsonL", True),
    ("chat.txt", False), ("chat", False), ("json", False), (".json", False), ("chat.json.txt", False),
    ("chat.ndjson", False),
])
def test_is_conversation_file(name, expected):
    assert is_conversation_file(name) is expected
    assert is_conversation_file(Path(name)) is expected


# ---------------------------------------------------------------- good files


def test_json_list(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, user("Hi"),
                {"role": "assistant", "content": "Hello!"}, user("Caf\u00e9 \U0001F600\n  two lines  ")]
    path = write(tmp_path, "chat.json", dumps(messages))
    got = read_conversation(path)
    assert isinstance(got, tuple)
    assert got == tuple(messages)
    assert read_conversation(str(path)) == got


def test_openai_object_keeps_only_role_and_content(tmp_path):
    data = {"model": "gpt-x", "messages": [
        {"role": "developer", "content": "Rules.", "name": "ops"},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Calling.", "tool_calls": None},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]}
    path = write(tmp_path, "chat.JSON", json.dumps(data, indent=2))
    assert read_conversation(path) == ({"role": "developer", "content": "Rules."}, user("Hi there"),
                                       {"role": "assistant", "content": "Calling."}, {"role": "tool", "content": "42"})
    assert all(set(m) == {"role", "content"} for m in read_conversation(path))


def test_jsonl_skips_blank_lines(tmp_path):
    text = lines({"role": "system", "content": "S"}, "", "   ", user([{"type": "text", "text": "Hi"}]), "") + "\n"
    assert read_conversation(write(tmp_path, "c.jsonl", text)) == ({"role": "system", "content": "S"}, user("Hi"))


def test_read_prompt_normalisation_applies(tmp_path):
    """A BOM and Windows line endings are read_prompt's to remove; a CR inside JSON content
    is an escaped one, and stays."""
    text = '\ufeff[\r\n  {"role": "user", "content": "a\\r\\nb"}\r\n]\r\n'
    assert read_conversation(write(tmp_path, "w.json", text)) == (user("a\r\nb"),)
    text = '{"role": "user", "content": "x"}\r\n\r\n{"role": "tool", "content": "y"}\r\n'
    assert read_conversation(write(tmp_path, "w.jsonl", text)) == (user("x"), {"role": "tool", "content": "y"})


def test_user_message():
    assert user_message("Once upon a time") == ({"role": "user", "content": "Once upon a time"},)


def test_system_text(tmp_path):
    assert system_text("You are terse.") == "You are terse."
    assert system_text("  spaced  ") == "  spaced  "
    path = write(tmp_path, "sys.txt", "From a file.\r\nLine two.\n")
    assert system_text(f"@{path}") == "From a file.\nLine two."


def test_with_system():
    messages = (user("Hi"), {"role": "assistant", "content": "Yo"}, user("Why"))
    got = with_system(messages, "Be brief.", "chat.json")
    assert got == ({"role": "system", "content": "Be brief."}, *messages)
    assert isinstance(got, tuple)
    assert with_system(list(user_message("p")), "S", "the prompt") == ({"role": "system", "content": "S"}, user("p"))
    assert with_system([{"role": "user", "content": "x", "name": "n"}], "S", "f")[1] == user("x")


# ---------------------------------------------------------------- bad inputs: one line each

BAD_JSON = [
    ("not-json", "[", "{p}: not JSON (line 1, column 2: Expecting value)"),
    ("not-json-line", '[\n  {"role": "user", "content": "x"}\n  {"role": "user"}\n]',
     "{p}: not JSON (line 3, column 3: Expecting ',' delimiter)"),
    ("trailing-comma", '[{"role": "user", "content": "x"},]', "{p}: not JSON (line 1, column 35: Expecting value)"),
    ("a-string", '"hello"', f"{{p}}: {NOT_LIST}, got a string"),
    ("a-number", "3", f"{{p}}: {NOT_LIST}, got a number"),
    ("null", "null", f"{{p}}: {NOT_LIST}, got null"),
    ("object-without-messages", '{"conversation": []}', f'{{p}}: {NOT_LIST}, got an object without a "messages" list'),
    ("messages-not-a-list", '{"messages": {"role": "user"}}',
     f'{{p}}: {NOT_LIST}, got an object without a "messages" list'),
    ("empty-list", "[]", "{p}: the conversation has no messages"),
    ("empty-messages", '{"messages": []}', "{p}: the conversation has no messages"),
    ("message-not-object", dumps([user("x"), "hi"]), "{p}: message 2 is not an object (got a string)"),
    ("message-a-list", dumps([[user("x")]]), "{p}: message 1 is not an object (got a list)"),
    ("no-role", dumps([{"content": "x"}]), '{p}: message 1 has no "role"'),
    ("unknown-role", dumps([{"role": "bot", "content": "x"}]), f"{{p}}: message 1 has an unknown role 'bot' {ACCEPTED}"),
    ("role-case", dumps([{"role": "User", "content": "x"}]), f"{{p}}: message 1 has an unknown role 'User' {ACCEPTED}"),
    ("role-newline", dumps([{"role": "us\ner", "content": "x"}]),
     f"{{p}}: message 1 has an unknown role 'us\\ner' {ACCEPTED}"),
    ("role-number", dumps([{"role": 3, "content": "x"}]), f"{{p}}: message 1 has an unknown role 3 {ACCEPTED}"),
    ("role-null", dumps([{"role": None, "content": "x"}]), f"{{p}}: message 1 has an unknown role null {ACCEPTED}"),
    ("no-content", dumps([user("x"), {"role": "user"}]), '{p}: message 2 has no "content"'),
    ("null-content", dumps([{"role": "user", "content": None}]), '{p}: message 1 has no "content"'),
    ("empty-content", dumps([user("")]), "{p}: message 1 has empty content"),
    ("blank-content", dumps([user(" \n\t ")]), "{p}: message 1 has empty content"),
    ("no-parts", dumps([user([])]), "{p}: message 1 has empty content"),
    ("blank-parts", dumps([user([{"type": "text", "text": " "}, {"type": "text", "text": ""}])]),
     "{p}: message 1 has empty content"),
    ("content-number", dumps([user(7)]), f"{{p}}: message 1 has content of the wrong type (a number); {WRONG_TYPE}"),
    ("content-bool", dumps([user(True)]), f"{{p}}: message 1 has content of the wrong type (a boolean); {WRONG_TYPE}"),
    ("content-object", dumps([user({"text": "x"})]),
     f"{{p}}: message 1 has content of the wrong type (an object); {WRONG_TYPE}"),
    ("image-part", dumps([user([{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "x"}}])]),
     '{p}: message 1: content part 2 has type "image_url"; only "text" parts are supported'),
    ("untyped-part", dumps([user([{"text": "x"}])]),
     '{p}: message 1: content part 1 has no type; only "text" parts are supported'),
    ("part-type-number", dumps([user([{"type": 1, "text": "x"}])]),
     '{p}: message 1: content part 1 has type 1; only "text" parts are supported'),
    ("part-not-object", dumps([user(["x"])]), "{p}: message 1: content part 1 is not an object (got a string)"),
    ("part-without-text", dumps([user([{"type": "text"}])]), '{p}: message 1: content part 1 has no "text" string'),
    ("part-text-number", dumps([user([{"type": "text", "text": 5}])]),
     '{p}: message 1: content part 1 has no "text" string'),
    ("ends-with-assistant", dumps([user("Hi"), {"role": "assistant", "content": "Hello"}]), ENDS),
    ("only-assistant", dumps({"messages": [{"role": "assistant", "content": "Hello"}]}), ENDS),
]

BAD_JSONL = [
    ("not-json", lines(user("x"), "{nope}"),
     "{p}: line 2: not JSON (column 2: Expecting property name enclosed in double quotes)"),
    ("two-on-a-line", lines(user("x"), "", dumps(user("y")) + " " + dumps(user("z"))),
     "{p}: line 3: not JSON (column 34: Extra data)"),
    ("a-list-line", lines(user("x"), [user("y")]), "{p}: line 2 is not an object (got a list)"),
    ("messages-object", lines({"messages": [user("x")]}), '{p}: line 1 has no "role"'),
    ("unknown-role", lines(user("x"), "", {"role": "human", "content": "y"}),
     f"{{p}}: line 3 has an unknown role 'human' {ACCEPTED}"),
    ("no-content", lines({"role": "tool"}), '{p}: line 1 has no "content"'),
    ("empty-content", lines(user("x"), user("  ")), "{p}: line 2 has empty content"),
    ("content-list-of-numbers", lines(user([1])), "{p}: line 1: content part 1 is not an object (got a number)"),
    ("content-number", lines(user(1.5)), f"{{p}}: line 1 has content of the wrong type (a number); {WRONG_TYPE}"),
    ("ends-with-assistant", lines(user("Hi"), {"role": "assistant", "content": "Hello"}, "  "), ENDS),
]


def _bad(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = write(tmp_path, name, text)
    with pytest.raises(InputError) as info:
        read_conversation(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message.replace(str(path), "{p}")


@pytest.mark.parametrize("case, text, expected", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json(tmp_path, case, text, expected):
    assert _bad(tmp_path, "chat.json", text) == expected


@pytest.mark.parametrize("case, text, expected", BAD_JSONL, ids=[c[0] for c in BAD_JSONL])
def test_bad_jsonl(tmp_path, case, text, expected):
    assert _bad(tmp_path, "chat.jsonl", text) == expected


# read_prompt's own checks, reached through read_conversation (its messages, unchanged).
BAD_FILES = [
    ("empty", b"", "input file is empty: {p}"),
    ("blank", b" \n\n\t", "input file is empty: {p}"),
    ("nul-bytes", b'[{"role": "user", "content": "x"}]\x00', "input looks like a binary file (it contains NUL bytes): {p}"),
    ("not-utf8", b'[{"role": "user", "content": "\xff"}]', "input is not UTF-8 text (bad byte at offset 30): {p}"),
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("case, data, expected", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files(tmp_path, suffix, case, data, expected):
    assert _bad(tmp_path, "chat" + suffix, data) == expected


def test_missing_file_and_directory(tmp_path):
    for path, expected in ((tmp_path / "none.json", "input file not found: {p}"),
                           (tmp_path / "dir.jsonl", "input is a directory, not a prompt file: {p}")):
        if path.name.startswith("dir"):
            path.mkdir()
        with pytest.raises(InputError) as info:
            read_conversation(path)
        assert str(info.value) == expected.format(p=path)


def test_too_large(tmp_path, monkeypatch):
    monkeypatch.setattr(tokentree.prompts, "MAX_PROMPT_BYTES", 10)
    message = _bad(tmp_path, "chat.json", dumps([user("more than ten bytes")]))
    assert message == "input file is too large (52 bytes; limit 10): {p}"


def test_deeply_nested_json(tmp_path):
    assert _bad(tmp_path, "chat.json", "[" * 100_000 + "]" * 100_000) == "{p}: not JSON (nested too deeply)"


@pytest.mark.parametrize("arg, expected", [
    ("", "--system is empty: give the system message, or @FILE to read it from a file"),
    ("  \n", "--system is empty: give the system message, or @FILE to read it from a file"),
    ("@", "--system @ names no file (use --system @FILE)"),
    ("@ ", "--system @ names no file (use --system @FILE)"),
])
def test_bad_system_text(arg, expected):
    with pytest.raises(InputError) as info:
        system_text(arg)
    assert str(info.value) == expected


def test_bad_system_file(tmp_path):
    with pytest.raises(InputError) as info:
        system_text(f"@{tmp_path / 'missing.txt'}")
    assert str(info.value) == f"input file not found: {tmp_path / 'missing.txt'}"
    with pytest.raises(InputError) as info:
        system_text(f"@{write(tmp_path, 'blank.txt', '  ')}")
    assert str(info.value) == f"input file is empty: {tmp_path / 'blank.txt'}"


@pytest.mark.parametrize("source", ["conversation.json", "the prompt"])
def test_second_system_message_is_refused(source):
    messages = ({"role": "system", "content": "Old."}, user("Hi"))
    with pytest.raises(InputError) as info:
        with_system(messages, "New.", source)
    assert str(info.value) == f"{source} already has a system message; leave out --system or remove it from the file"

"""`tokentree sessions` output: table and JSON, newest first."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from tokentree.listing import format_sessions


@dataclass(frozen=True)
class Summary:  # the fields of tokentree.store.SessionSummary
    id: int
    created_at: object
    last_used_at: object
    model_name: str
    fingerprint: str
    vocab_key: str
    prompt_sources: tuple
    n_branches: int
    n_nodes: int
    first_line: str


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def summaries():
    return [
        Summary(1, datetime(2024, 5, 1, 9, 0), datetime(2024, 5, 1, 9, 30), "Qwen/Qwen2.5-0.5B",
                "Qwen/Qwen2.5-0.5B@abc:float32", "vk", ("prompts/a.txt",), 2, 40, "Janet's ducks lay 16 eggs"),
        Summary(2, datetime(2024, 5, 2, 10, 0, tzinfo=timezone.utc), datetime(2024, 5, 3, 11, 15, tzinfo=timezone.utc),
                "gpt2", "gpt2:float32", "vk2", (), 1, 7, "Hello\tworld"),
        Summary(3, "2024-05-01T08:00:00", "2024-05-02T12:00:00Z", "tiny", "tiny:bfloat16", "vk3", (), 50, 100000,
                "x" * 200),
    ]


def test_table_newest_first_with_all_columns():
    out = format_sessions(summaries())
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "LAST", "USED", "MODEL", "BRANCHES", "NODES", "PROMPT"]
    assert [line.split()[0] for line in lines[1:]] == ["2", "3", "1"]
    assert lines[1].split()[:7] == ["2", "2024-05-02", "10:00", "2024-05-03", "11:15", "gpt2", "1"]
    assert "Hello\u21e5world" in lines[1]  # shown as the tree pane shows text
    assert lines[3].split()[1:5] == ["2024-05-01", "09:00", "2024-05-01", "09:30"]
    assert "Qwen/Qwen2.5-0.5B" in lines[3] and "Janet's ducks lay 16 eggs" in lines[3]
    assert "50" in lines[2].split() and "100000" in lines[2].split()
    assert lines[2].endswith("…") and len(lines[2].split()[-1]) == 60
    # columns are aligned: every row puts the prompt at the same offset
    starts = {line.index(p) for line, p in zip(lines[1:], ["Hello", "xxx", "Janet"])}
    assert len(starts) == 1
    assert not out.endswith("\n")


def test_json_is_machine_readable():
    data = json.loads(format_sessions(summaries(), as_json=True))
    assert [d["id"] for d in data] == [2, 3, 1]
    first = data[2]
    assert first == {
        "id": 1,
        "created_at": "2024-05-01T09:00:00Z",
        "last_used_at": "2024-05-01T09:30:00Z",
        "model": "Qwen/Qwen2.5-0.5B",
        "fingerprint": "Qwen/Qwen2.5-0.5B@abc:float32",
        "n_branches": 2,
        "n_nodes": 40,
        "first_line": "Janet's ducks lay 16 eggs",
        "prompt_sources": ["prompts/a.txt"],
    }
    assert data[0]["last_used_at"] == "2024-05-03T11:15:00Z"
    assert data[1]["first_line"] == "x" * 200  # JSON is never truncated


def test_empty():
    assert "No sessions" in format_sessions([])
    assert json.loads(format_sessions([], as_json=True)) == []


def test_with_real_store_summaries(tmp_path):
    from tokentree.store import Store

    with Store.open(tmp_path / "list.db") as store:
        first = store.start_session(model_name="model-a", fingerprint="fa", vocab_key="v", prompt_sources=["a.txt"])
        store.put_token_bytes("v", {1: b"Hello", 2: b" world", 3: b"\n", 4: b"more"})
        store.create_branch(first, [1, 2, 3, 4], name="main")
        second = store.start_session(model_name="model-b", fingerprint="fb", vocab_key="v", prompt_sources=[])
        store.create_branch(second, [1], name="main")
        store.create_branch(first, [4], name="other")  # `first` is now the most recently used
        summaries = store.list_sessions()

    data = json.loads(format_sessions(summaries, as_json=True))
    assert [d["id"] for d in data] == [first, second]
    assert data[0]["model"] == "model-a" and data[0]["n_branches"] == 2 and data[0]["n_nodes"] == 5
    assert data[0]["first_line"] == "Hello world"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data[0]["last_used_at"])
    lines = format_sessions(summaries).splitlines()
    assert [line.split()[0] for line in lines[1:]] == [str(first), str(second)]
    assert lines[1].endswith("Hello world")


def test_prompt_line_never_sends_control_codes_to_the_terminal():
    s = summaries()[1]
    line = format_sessions([Summary(**{**s.__dict__, "first_line": "\x1b[2Jwipe\x9b"})]).splitlines()[1]
    assert line.endswith("\\x1b[2Jwipe\\x9b") and "\x1b" not in line

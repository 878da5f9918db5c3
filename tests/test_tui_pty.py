"""End to end: the real `tokentree` command in a pseudo-terminal with a tiny model.
Keys are typed as a terminal sends them, the screen is read through a terminal emulator
(pyte), and afterwards the events are checked in the database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pyte

from tokentree.paths import default_db_path
from tokentree.store import Store

ROWS, COLS = 30, 100
UP, DOWN, RIGHT, LEFT = "\x1b[A", "\x1b[B", "\x1b[C", "\x1b[D"
CTRL_Q, CTRL_C = "\x11", "\x03"


class Terminal:
    def __init__(self, args: list[str], cwd: Path) -> None:
        exe = Path(sys.executable).with_name("tokentree")  # the installed console script
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(COLS), LINES=str(ROWS))
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.child = pexpect.spawn(str(exe), args, env=env, cwd=str(cwd), dimensions=(ROWS, COLS))

    def read(self, seconds: float = 0.2) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.raw += data
            self.stream.feed(data)

    @property
    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_for(self, *needles: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read(0.1)
            if all(n in self.text for n in needles):
                return self.text
            if not self.child.isalive():
                break
        raise AssertionError(f"{needles} not on screen:\n{self.text}\n(raw tail: {self.raw[-300:]!r})")

    def keys(self, *keys: str, settle: str | None = None) -> None:
        for key in keys:
            self.child.send(key)
            self.read(0.15)
        if settle:
            self.wait_for(settle)

    def finish(self, timeout: float = 30) -> int:
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.raw += self.child.before or b""
        self.child.close()
        return self.child.exitstatus


def test_new_session_keys_and_events_then_resume(tmp_path, tiny_model):
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    term = Terminal(["--model", str(tiny_model), "--input", str(prompt)], tmp_path)
    term.wait_for("Once upon a time", "next token", " idle ", "story")
    assert "+0" in term.text

    term.keys(DOWN, RIGHT, settle="+1 ")
    term.keys(RIGHT, settle="+2 ")
    term.keys("e", settle="probability view")
    term.keys(LEFT, settle="+1 ")
    term.keys("d", settle="branches \u00b7 2")
    term.keys("?", settle="walk_forward")
    term.keys("q")  # closes the help
    term.keys(CTRL_Q)
    assert term.finish() == 0
    assert b"\x1b[?1049l" in term.raw  # left the alternate screen: terminal restored

    store = Store.open(default_db_path())
    try:
        sid = store.latest_session_id()
        types = [e.type for e in store.events(sid)]
        assert types.count("token.appended") == 2 and types.count("token.popped") == 1
        assert "branch.duplicated" in types
        assert [b.name for b in store.branches(sid)][0] == "story"
        focused = next(b for b in store.branches(sid) if b.focused)
        assert store.node(focused.node_id).depth == store.node(focused.root_node_id).depth + 1
    finally:
        store.close()

    # Resume: the cached tree is drawn while the model is still loading; ctrl+c exits cleanly.
    term = Terminal(["--resume", "last"], tmp_path)
    loading = term.wait_for("loading", "Once upon a time", "branches \u00b7 2")
    assert "\u25b8" in loading  # the explored child is marked in the table, from the cache
    term.wait_for(" idle ")
    term.keys(RIGHT, settle="+2 ")
    term.keys(CTRL_C)
    assert term.finish() == 130
    assert b"\x1b[?1049l" in term.raw
    assert b"interrupted" in term.raw
    store = Store.open(default_db_path())
    try:
        types = [e.type for e in store.events(store.latest_session_id())]
        assert types.count("token.appended") == 3
    finally:
        store.close()


BACKSPACE, ENTER = "\x7f", "\r"


def test_fill_sample_fork_rename_search_then_resume_and_export(tmp_path, tiny_model):
    """The exploration keys end to end: fill (f), sample (g), a fork point ([), rename (n:
    the name is made of command letters, which type), search (/), quit; the resumed session
    and `tokentree export` show the renamed branch and the sample branches."""
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    term = Terminal(["--model", str(tiny_model), "--input", str(prompt)], tmp_path)
    term.wait_for("Once upon a time", " idle ", "story")

    term.keys("f", settle="filled ")
    term.wait_for(" idle ")
    term.keys("g", settle="sampled ")
    term.wait_for(" idle ", "sample 1")
    term.keys("[", settle="fork point")
    assert "back: " in term.text  # it moved ("fork point 3 tokens back: entropy 0.98")
    term.keys("n", settle=" name ")
    term.keys(*[BACKSPACE] * 12, "wanders", settle="wanders")
    assert "renamed" not in term.text  # typed, not yet committed
    term.keys(ENTER, settle="renamed ")
    assert "wanders" in term.text
    term.keys("/", settle=" search ")
    term.keys(*"upon", ENTER, settle='search "upon"')
    term.keys(CTRL_Q)
    assert term.finish() == 0

    store = Store.open(default_db_path())
    try:
        sid = store.latest_session_id()
        names = [b.name for b in store.branches(sid)]
        types = [e.type for e in store.events(sid)]
    finally:
        store.close()
    assert "wanders" in names and "story" in names, names
    samples = [n for n in names if n.startswith("sample ")]
    assert samples, names
    assert "branch.renamed" in types

    term = Terminal(["--resume", "last"], tmp_path)
    term.wait_for("wanders", " idle ")
    term.keys(CTRL_Q)
    assert term.finish() == 0

    exe = Path(sys.executable).with_name("tokentree")
    out = subprocess.run([str(exe), "export", "last", "--format", "text"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "wanders" in out and "story" in out
    for name in samples:
        assert name in out, (name, out)


def test_crlf_prompt_file_reads_as_its_lf_version(tmp_path, tiny_model):
    """A prompt file saved with Windows line ends (CRLF, and a lone CR): no \\x0d on the
    screen, and its root tokens are those of the LF file (one root node for both). The first
    -i file is the focused branch."""
    import json

    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"Once upon a time\r\nthere was a village\rby the sea\r\n")
    lf = tmp_path / "lf.txt"
    lf.write_bytes(b"Once upon a time\nthere was a village\nby the sea\n")
    term = Terminal(["--model", str(tiny_model), "-i", str(crlf), "-i", str(lf)], tmp_path)
    screen = term.wait_for("Once upon a time", "there was a village", " idle ", "crlf")
    assert "\\x0d" not in screen and "\\r" not in screen and "\r" not in screen
    assert "by the sea" in screen
    term.keys(CTRL_Q)
    assert term.finish() == 0

    exe = Path(sys.executable).with_name("tokentree")
    out = subprocess.run([str(exe), "export", "last", "--format", "json"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    branches = json.loads(out)["branches"]
    assert [b["name"] for b in branches] == ["crlf", "lf"]
    assert branches[0]["focused"] and not branches[1]["focused"]
    assert branches[0]["token_ids"] == branches[1]["token_ids"]
    assert branches[0]["text"] == "Once upon a time\nthere was a village\nby the sea"


def test_wide_characters_keep_the_right_border_at_80x24(tmp_path, tiny_model, monkeypatch):
    """Emoji (with a skin tone, a ZWJ family, a variation selector), CJK and a combining
    accent in the prompt: in a terminal that measures code points (pyte, as tmux does for
    these), every row of the 80x24 screen keeps its right border in the last column, and no
    border cell is left behind, after an append and after a pop."""
    monkeypatch.setattr(sys.modules[__name__], "ROWS", 24)
    monkeypatch.setattr(sys.modules[__name__], "COLS", 80)
    prompt = tmp_path / "wide.txt"
    prompt.write_text("Emoji \U0001F600 and \U0001F44D\U0001F3FD, family \U0001F468\u200d\U0001F469\u200d\U0001F467, "
                      "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0, cafe\u0301 \u2764\ufe0f", encoding="utf-8")
    term = Terminal(["--model", str(tiny_model), "--input", str(prompt)], tmp_path)
    term.wait_for("\u65e5\u672c\u8a9e", " idle ", "next token")

    def check(when: str) -> None:
        buffer = term.screen.buffer
        rows = [[buffer[y][x].data for x in range(COLS)] for y in range(ROWS)]
        body = rows[: ROWS - 2]  # above the message and status lines
        for y, cells in enumerate(body):
            assert cells[COLS - 1] in ("\u2510", "\u2502", "\u2518"), (when, y, "".join(cells), term.text)
        # The prompt pane's rows have their two borders and no third one left behind.
        for y in range(1, ROWS):
            if rows[y][0] != "\u2502":
                break
            assert [x for x, c in enumerate(rows[y]) if c == "\u2502"] == [0, COLS - 1], (when, y, term.text)
        assert "?: help  ctrl+q: quit" in "".join(rows[-1]), (when, term.text)

    check("start")
    term.keys(RIGHT, settle="+1 ")
    term.wait_for(" idle ")
    check("after an append")
    term.keys(LEFT, settle="+0 ")
    term.read(0.5)
    check("after a pop")
    term.keys(CTRL_Q)
    assert term.finish() == 0


def test_new_session_shows_its_prompt_while_the_model_loads(tmp_path, tiny_models):
    """The quick start: the prompt is on screen, as text, while the status line still says the
    model is loading (its tokenizer was read without torch); then the table fills in and keys
    work. The Llama-style model adds a BOS token, read the same way."""
    import re

    prompt = tmp_path / "story.txt"
    prompt.write_text("Caf\u00e9 \u65e5\u672c, once upon a time", encoding="utf-8")
    term = Terminal(["--model", str(tiny_models["llama"]), "--input", str(prompt)], tmp_path)
    early = term.wait_for("Caf\u00e9 \u65e5\u672c, once upon a time", "loading")
    assert " idle " not in early and not re.search(r"next token \u00b7 [1-9]", early)
    filled = term.wait_for(" idle ", "next token \u00b7 ")
    assert re.search(r"next token \u00b7 [1-9]\d* shown", filled), filled
    assert "failed" not in filled
    term.keys(RIGHT, settle="+1 ")
    term.keys(CTRL_Q)
    assert term.finish() == 0

"""End to end: the real `tokentree` command in a pseudo-terminal with a tiny model.
Keys are typed as a terminal sends them, the screen is read through a terminal emulator
(pyte), and afterwards the events are checked in the database."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect
import pyte
from pty_signals import as_from_a_terminal

from tokentree.paths import default_db_path
from tokentree.store import Store

ROWS, COLS = 30, 100
UP, DOWN, RIGHT, LEFT = "\x1b[A", "\x1b[B", "\x1b[C", "\x1b[D"
CTRL_Q, CTRL_C = "\x11", "\x03"

# urwid asks the terminal (DECRQM) whether it does synchronized output; answered yes, it
# wraps every frame it draws in these two sequences. A frame is fed to the emulator only
# once it is complete, so the screen a test reads is always a whole frame, never the top
# of a new one over the bottom of the last (e.g. a new "+1 " above an old " idle ").
SYNC_QUERY, SYNC_REPLY = b"\x1b[?2026$p", b"\x1b[?2026;2$y"
SYNC_BEGIN, SYNC_END = b"\x1b[?2026h", b"\x1b[?2026l"
WAIT = 120.0  # seconds: a deadline, not a pause (waiting is free when things are fast)


def _partial_tail(data: bytes, seq: bytes) -> int:
    """How many bytes at the end of `data` could be the start of `seq`."""
    for k in range(min(len(seq) - 1, len(data)), 0, -1):
        if data.endswith(seq[:k]):
            return k
    return 0


class Terminal:
    """The real `tokentree` in a pseudo-terminal, its screen read through pyte.

    Every read of the screen waits for the state it asserts: `wait_for(*needles)` (all of
    them on one whole frame) or `wait_until(predicate)`; `keys(..., settle=...)` types, then
    waits. `hold_load=True` keeps the model load behind the screen waiting until
    `release_load()` (tests/child_hooks.py), so the loading screen is a state, not a moment.
    """

    def __init__(self, args: list[str], cwd: Path, *, hold_load: bool = False) -> None:
        exe = Path(sys.executable).with_name("tokentree")  # the installed console script
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(COLS), LINES=str(ROWS))
        self.gate: Path | None = None
        if hold_load:
            from child_hooks import with_hooks

            hooks = Path(tempfile.mkdtemp(prefix="tt-hooks-", dir=cwd))
            self.gate = hooks / "load.go"
            env = with_hooks(env, hooks, TOKENTREE_TEST_HOLD_LOAD=str(self.gate))
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self._pending = b""  # read, not yet fed: the start of a frame still being written
        self._in_frame = False
        self._answered = False
        self.child = pexpect.spawn(str(exe), args, env=env, cwd=str(cwd), dimensions=(ROWS, COLS), preexec_fn=as_from_a_terminal)

    def release_load(self) -> None:
        assert self.gate is not None, "started without hold_load"
        self.gate.touch()

    # ------------------------------------------------------------------ reading
    def _take(self, data: bytes) -> None:
        self.raw += data
        if not self._answered and SYNC_QUERY in self.raw:
            self._answered = True
            self.child.send(SYNC_REPLY)
        buf, ready = self._pending + data, []
        while buf:
            if self._in_frame:
                end = buf.find(SYNC_END, len(SYNC_BEGIN))
                if end < 0:
                    break  # the rest of this frame is still to come
                end += len(SYNC_END)
                ready.append(buf[:end])
                buf, self._in_frame = buf[end:], False
            else:
                start = buf.find(SYNC_BEGIN)
                if start < 0:
                    keep = _partial_tail(buf, SYNC_BEGIN)
                    ready.append(buf[: len(buf) - keep])
                    buf = buf[len(buf) - keep:]
                    break
                ready.append(buf[:start])
                buf, self._in_frame = buf[start:], True
        self._pending = buf
        self.stream.feed(b"".join(ready))

    def _read_once(self, timeout: float) -> bool:
        """Read what the child wrote within `timeout`; False at EOF."""
        try:
            data = self.child.read_nonblocking(65536, timeout=timeout)
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            if self._pending:  # the child is gone: what it wrote is all there is
                self.stream.feed(self._pending)
                self._pending = b""
            return False
        self._take(data)
        return True

    def read(self, seconds: float = 0.2) -> None:
        """Take in what the child writes for `seconds` (pacing only: never a wait for a state)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not self._read_once(0.05):
                return

    @property
    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait_until(self, predicate, what: str = "the expected screen", timeout: float = WAIT) -> str:
        """Read until `predicate(text)` holds on a whole frame; return that text."""
        end = time.monotonic() + timeout
        problem, eof = None, False
        while True:
            try:
                if predicate(self.text):
                    return self.text
            except AssertionError as exc:  # a predicate may explain what is still missing
                problem = exc
            if time.monotonic() > end or eof:
                break
            eof = not self._read_once(0.05)  # at EOF: one last look at the final screen
        why = "the child exited" if eof else f"after {timeout:.0f} s"
        raise AssertionError(f"{what} not on screen ({why})"
                             f"{f' ({problem})' if problem else ''}:\n{self.text}\n"
                             f"(raw tail: {self.raw[-300:]!r})")

    def wait_for(self, *needles: str, absent: tuple[str, ...] = (), timeout: float = WAIT) -> str:
        """Read until every needle is on one whole frame (and none of `absent`)."""
        return self.wait_until(lambda text: all(n in text for n in needles) and not any(a in text for a in absent),
                               f"{needles}" + (f" without {absent}" if absent else ""), timeout)

    def keys(self, *keys: str, settle: str | tuple[str, ...] | None = None) -> None:
        """Type `keys` (paced as a person types); with `settle`, wait for it (a needle or
        a tuple of needles, all on one frame) before returning."""
        for key in keys:
            self.child.send(key)
            self.read(0.15)
        if settle:
            self.wait_for(*((settle,) if isinstance(settle, str) else settle))

    def finish(self, timeout: float = WAIT) -> int:
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.raw += self.child.before or b""
        self.child.close()
        return self.child.exitstatus


def test_new_session_keys_and_events_then_resume(tmp_path, tiny_model):
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    term = Terminal(["--model", str(tiny_model), "--input", str(prompt)], tmp_path)
    term.wait_for("Once upon a time", "next token", " idle ", "story", "+0")

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

    # Resume: the cached tree is drawn while the model is still loading (held until the
    # screen has been read); ctrl+c exits cleanly.
    term = Terminal(["--resume", "last"], tmp_path, hold_load=True)
    # The explored child is marked in the table (\u25b8), from the cache.
    term.wait_for("loading", "Once upon a time", "branches \u00b7 2", "\u25b8")
    term.release_load()
    term.wait_for(" idle ", "branches \u00b7 2")
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

    term.keys("f", settle=("filled ", " idle "))  # the message stays until the next key
    term.keys("g", settle=("sampled ", " idle ", "sample 1"))
    term.keys("[", settle=("fork point", "back: "))  # it moved ("fork point 3 tokens back: entropy 0.98")
    term.keys("n", settle="enter: rename")  # the field's keys lead the status line (" name " is also a column title)
    term.keys(*[BACKSPACE] * 12, "wanders", settle="wanders")
    assert "renamed" not in term.text  # typed, not yet committed
    term.keys(ENTER, settle=("renamed ", "wanders"))
    term.keys("/", settle="enter: search")
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
    screen = term.wait_for("Once upon a time", "there was a village", "by the sea", " idle ", "crlf")
    assert "\\x0d" not in screen and "\\r" not in screen and "\r" not in screen
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

    def settled(when: str) -> None:
        """Wait for a whole frame that passes the check (it fails with the last one's problem)."""
        term.wait_until(lambda _text: check(when) is None, f"the borders {when}")

    settled("at the start")
    term.keys(RIGHT, settle=("+1 ", " idle "))
    settled("after an append")
    term.keys(LEFT, settle=("+0 ", " idle "))
    settled("after a pop")
    term.keys(CTRL_Q)
    assert term.finish() == 0


def test_new_session_shows_its_prompt_while_the_model_loads(tmp_path, tiny_models):
    """The quick start: the prompt is on screen, as text, while the status line still says the
    model is loading (its tokenizer was read without torch); then the table fills in and keys
    work. The Llama-style model adds a BOS token, read the same way."""
    import re

    prompt = tmp_path / "story.txt"
    prompt.write_text("Caf\u00e9 \u65e5\u672c, once upon a time", encoding="utf-8")
    # The load is held until the early screen has been read: it is a state, not a moment.
    term = Terminal(["--model", str(tiny_models["llama"]), "--input", str(prompt)], tmp_path, hold_load=True)
    early = term.wait_for("Caf\u00e9 \u65e5\u672c, once upon a time", "loading")
    assert " idle " not in early and not re.search(r"next token \u00b7 [1-9]", early)
    term.release_load()
    filled = term.wait_until(lambda text: " idle " in text and re.search(r"next token \u00b7 [1-9]\d* shown", text),
                             "idle, with the candidates")
    assert "failed" not in filled
    term.keys(RIGHT, settle="+1 ")
    term.keys(CTRL_Q)
    assert term.finish() == 0

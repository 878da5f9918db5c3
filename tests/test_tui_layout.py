"""The screen at the sizes people use (80x24, 120x36, 200x50): nothing a user needs is cut
off, panes are sized from their content, and every row is exactly as wide as the terminal,
also with wide characters (emoji with modifiers, flags, ZWJ sequences, CJK, combining marks).

Rows are measured twice: as urwid lays them out (`calc_width`) and as a terminal draws them
(`terminal_width`: one wcwidth per code point, a flag pair 2 columns, as tmux 3.3 does)."""

from __future__ import annotations

import re

import fake_engine
import pytest
import wcwidth
from fake_engine import FakeEngine, FakeLoaded
from test_tui_widgets import attrs_of, make_app, store  # noqa: F401
from urwid.str_util import calc_width

from tokentree.commands import COMMANDS
from tokentree.config import Config, DisplayConfig, parse_config
from tokentree.core.snapshot import BranchRow, CandidateRow, Snapshot, Status, TreeLine
from tokentree.core.worker import Worker
from tokentree.tui.cells import fit, safe, width_of
from tokentree.tui.branch_list import BranchList
from tokentree.tui.candidate_table import CandidateTable
from tokentree.tui.help import LEGEND
from tokentree.tui.status_bar import StatusBar
from tokentree.tui.tree_pane import TreePane

SIZES = [(80, 24), (120, 36), (200, 50)]
CONFIG30 = Config(display=DisplayConfig(tokens_to_show=30))
HINT = "?: help  ctrl+q: quit"


def text_rows(canvas) -> list[str]:
    return [row.decode() for row in canvas.text]


def screen_rows(app, size) -> list[str]:
    return text_rows(app.render(size))


def terminal_width(text: str) -> int:
    """Columns a terminal that measures code points (tmux 3.3, pyte) moves its cursor by;
    a regional indicator pair (a flag) is one 2-column cell, as in tmux."""
    width, run = 0, 0
    for ch in text:
        if 0x1F1E6 <= ord(ch) <= 0x1F1FF:
            run += 1
            width += 2 if run % 2 else 0
            continue
        run = 0
        width += max(0, wcwidth.wcwidth(ch))
    return width


def assert_exact_width(rows: list[str], cols: int) -> None:
    for i, row in enumerate(rows):
        assert calc_width(row, 0, len(row)) == cols, (i, row)
        assert terminal_width(row) == cols, (i, row, terminal_width(row))


def pane_rows(rows: list[str], title: str) -> list[str]:
    """The inside of the box whose top border holds `title`: its rows between the borders."""
    top = next(i for i, r in enumerate(rows) if title in r)
    left = rows[top].index(title)
    left = rows[top].rindex("\u250c", 0, left + 1)
    right = rows[top].index("\u2510", left)
    inside = []
    for row in rows[top + 1:]:
        if row[left] == "\u2514":
            break
        inside.append(row[left + 1:right])
    return inside


@pytest.fixture
def engine(monkeypatch):
    """A fake model with 80 tokens (the table can fill a tall terminal) and wide ones."""
    extra = [f" w{i:02d}".encode() for i in range(60)] + [b" "]
    monkeypatch.setattr(fake_engine, "VOCAB", fake_engine.VOCAB[:-1] + extra + [b"x"])
    return FakeEngine(FakeLoaded(vocab_size=len(fake_engine.VOCAB)), top_k=64)


WIDE = ["\U0001F44D\U0001F3FD", "\U0001F1EB\U0001F1F7", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
        "\u65e5\u672c\u8a9e", "e\u0301", "\u0301", "\u2764\ufe0f", "\U0001F1EB", "\U0001F600", "\u200b"]


@pytest.fixture
def wide_engine(monkeypatch):
    """A fake model whose tokens include 👍🏽, 🇫🇷, 👨‍👩‍👧, 日本語, é (e + U+0301), a lone
    combining accent, ❤️, half a flag, 😀 and a zero-width space."""
    vocab = fake_engine.VOCAB[:-1] + [w.encode() for w in WIDE] + [b" ", b"x"]
    monkeypatch.setattr(fake_engine, "VOCAB", vocab)
    return FakeEngine(FakeLoaded(vocab_size=len(vocab)), top_k=len(vocab))


def grow_branches(app, count: int) -> None:
    """d, Down x (i % 3), Right, Right: each new branch one fork deeper than the last."""
    for i in range(count):
        app.press("d", *["down"] * (i % 3), "right")
        app.settle()
        app.press("right")
        app.settle()


# ---------------------------------------------------------------- status bar

@pytest.mark.parametrize("size", [*SIZES, (60, 20), (40, 12)])
def test_the_key_hint_is_always_on_the_status_line(store, size):  # noqa: F811
    app = make_app(store)
    last = screen_rows(app, size)[-1]
    assert last.rstrip().endswith(HINT) and " idle " in last


def _status(busy=None, model="/home/me/models/Qwen2.5-0.5B", cancellable=False):
    status = Status(model=model, device="cuda:0", dtype="bfloat16", session_id=12, origin="forward", ms=17.0,
                    busy=busy, engine_ready=True, cancellable=cancellable)
    return Snapshot(prompt=(), prompt_view="plain", layer_view="off", candidates=(), selected=0, waiting=False,
                    branches=(), status=status, message=None)


def status_line(bar, width) -> str:
    return text_rows(bar.render((width,)))[-1]


def test_status_line_gives_way_in_order_and_keeps_busy_and_hint():
    bar = StatusBar(HINT)
    bar.update(_status())
    wide = status_line(bar, 200)
    assert "/home/me/models/Qwen2.5-0.5B \u00b7 cuda:0 \u00b7 bfloat16 \u00b7 session 12" in wide
    assert "forward pass 17 ms" in wide and wide.rstrip().endswith(HINT)
    # The model path shortens first, to its last part; then session, dtype, device go.
    line = status_line(bar, 100)
    assert "Qwen2.5-0.5B \u00b7 cuda:0 \u00b7 bfloat16 \u00b7 session 12" in line and "/home" not in line
    line = status_line(bar, 90)
    assert "Qwen2.5-0.5B \u00b7 cuda:0 \u00b7 bfloat16 \u2502" in line and "session" not in line
    line = status_line(bar, 80)
    assert "Qwen2.5-0.5B \u00b7 cuda:0 \u2502" in line and "bfloat16" not in line
    assert line.rstrip().endswith(HINT) and line.startswith(" idle ")
    for width in (200, 120, 100, 90, 80, 70, 60, 50, 40, 31):
        line = status_line(bar, width)
        assert width_of(line) == width
        assert line.rstrip().endswith(HINT) and line.startswith(" idle"), (width, line)
    busy = "computing the next-token distribution"
    bar.update(_status(busy=busy, cancellable=True))
    for width in (200, 120, 80):
        line = status_line(bar, width)
        assert f"\u23f3 {busy} \u00b7 esc stops" in line and line.rstrip().endswith(HINT), (width, line)
        last = list(bar.render((width,)).content())[-1]
        assert any("status_busy" in attrs_of([(a, t.decode())]) and busy in t.decode() for a, _cs, t in last)
    for width in (70, 50, 40):  # no room for it all: the busy state is cut, never dropped
        line = status_line(bar, width)
        assert "\u23f3 comp" in line and line.rstrip().endswith(HINT) and width_of(line) == width, line


def test_the_busy_state_and_hint_show_at_80_columns_while_the_model_works(store):  # noqa: F811
    import threading

    gate = threading.Event()
    engine = FakeEngine()
    app = make_app(store, engine, worker=Worker())
    engine.gate = gate
    try:
        app.press("right")
        last = screen_rows(app, (80, 24))[-1]
        assert "\u23f3 computing the next-token distribution" in last and last.rstrip().endswith(HINT)
    finally:
        gate.set()
    app.settle()
    app.worker.shutdown()


# ---------------------------------------------------------------- unbound keys, page keys

@pytest.mark.parametrize("key", ["q", "enter", "f5", "f12", "esc", "Q"])
def test_an_unbound_key_says_where_help_is(store, key):  # noqa: F811
    app = make_app(store)
    before = app.explorer.store.events(app.explorer.session_id)
    app.press(key)
    rows = screen_rows(app, (80, 24))
    assert "press ? for help" in rows[-2], rows[-2]
    assert "message" in attrs_of([(a, t.decode()) for a, _cs, t in list(app.render((80, 24)).content())[-2]])
    assert app.explorer.store.events(app.explorer.session_id) == before
    app.press("down")  # the next key clears it
    assert "press ? for help" not in screen_rows(app, (80, 24))[-2]


def test_the_hint_names_the_help_key_as_bound(store):  # noqa: F811
    config = parse_config({"display": {"tokens_to_show": 6}, "keys": {"help": "f1"}})
    app = make_app(store, config=config)
    app.press("q")
    assert "press f1 for help" in screen_rows(app, (80, 24))[-2]
    assert screen_rows(app, (80, 24))[-1].rstrip().endswith("f1: help  ctrl+q: quit")


def test_page_home_and_end_move_the_table_selection(store, engine):  # noqa: F811
    app = make_app(store, engine, config=CONFIG30)
    app.render((80, 24))
    page = app.table.page_rows
    assert page > 5
    app.press("page down")
    assert app.snapshot.selected == page
    app.press("page down", "page down", "page down")
    assert app.snapshot.selected == 29  # stops at the last row
    app.press("page up")
    assert app.snapshot.selected == 29 - page
    app.press("home")
    assert app.snapshot.selected == 0
    app.press("end")
    assert app.snapshot.selected == 29
    rows = screen_rows(app, (80, 24))
    assert any("\u25b6  30 " in r for r in rows)  # the selection is in view
    names = {c.name: c for c in COMMANDS}
    assert names["page_up"].keys == ("page up",) and names["first_row"].keys == ("home",)
    assert names["last_row"].args == (10**6,) and names["page_down"].target == "app"


# ---------------------------------------------------------------- help

def help_pages(app, size) -> list[list[str]]:
    """The help's screens from top to bottom (page down until it stops moving)."""
    app.press("?")
    app.press("home")
    pages = [screen_rows(app, size)]
    for _ in range(60):
        app.press("page down")
        rows = screen_rows(app, size)
        if rows == pages[-1]:
            break
        pages.append(rows)
    assert app.show_help
    return pages


@pytest.mark.parametrize("size", [*SIZES, (60, 16), (40, 12), (30, 8)])
def test_help_fits_the_screen_and_scrolls_to_every_entry_and_the_legend(store, size):  # noqa: F811
    app = make_app(store)
    pages = help_pages(app, size)
    cols, rows = size
    title = [next(r for r in page if "\u2500 help" in r) for page in pages]  # says where it is
    assert "more below" in title[0] and "end \u2191" in title[-1]
    for page in pages:
        assert len(page) == rows
        assert_exact_width(page, cols)
        assert any("\u2510" in r for r in page) and any("\u2518" in r for r in page)  # all of the box
    inside = [line for page in pages for line in pane_rows(page, "\u2500 help ")]
    seen = "\n".join(inside)
    flat = re.sub(r"\s+", " ", seen)  # wrapped lines read as one (the key column is blank there)
    for command in COMMANDS:
        assert f"{command.name}:" in flat.replace(" ", "") or f"{command.name}:" in seen, command.name
    for symbol, meaning in LEGEND:
        assert symbol in seen or cols < 60, symbol  # a narrow key column wraps a long symbol
        assert " ".join(meaning.split()[:3]) in flat, meaning
    assert "\u2039" + "7\u203a" in seen and TreePane._guides("\u2502  " * 7, 12).lstrip().startswith("\u20397\u203a")
    for words in ("leading space", "newline", "tab", "not valid UTF-8", "not known yet", "70 nodes",
                  "appended after the root prompt", "perplexity", "log-probabilities", "one cell per layer",
                  "first layer left", "layer-normalized", "n/a"):
        assert words in flat, words


def test_help_lines_wrap_under_their_text(store):  # noqa: F811
    app = make_app(store)
    app.press("?")
    for _ in range(40):
        rows = pane_rows(screen_rows(app, (80, 24)), "\u2500 help ")
        at = next((i for i, r in enumerate(rows) if "undo: undo the last change" in r), None)
        if at is not None and at + 1 < len(rows):
            break
        app.press("down")
    column = rows[at].index("undo:")
    follow = rows[at + 1]
    assert rows[at].startswith("u ")
    assert follow[:column].strip() == "" and follow[column] != " ", (rows[at], follow)  # hanging indent
    assert "is one change" in follow


def test_undo_help_says_a_run_of_one_key_is_one_change():
    undo = next(c for c in COMMANDS if c.name == "undo")
    assert undo.help == "undo the last change (a run of the same key, e.g. held right or left, is one change)"


# ---------------------------------------------------------------- pane sizes

@pytest.mark.parametrize("size", SIZES)
def test_the_prompt_pane_fits_its_text_and_the_table_fills_the_rest(store, engine, size):  # noqa: F811
    app = make_app(store, engine, config=CONFIG30)
    rows = screen_rows(app, size)
    prompt = pane_rows(rows, "prompt \u00b7")
    assert all(r.strip() for r in prompt), prompt  # no empty rows
    table = pane_rows(rows, "next token \u00b7")
    candidates = [r for r in table[1:] if "%" in r]
    assert len(table) - 1 == app.table.page_rows
    assert len(candidates) == min(30, app.table.page_rows)  # every row below the header used
    assert len(table) >= (size[1] - 2 - len(prompt) - 2) - 2


def test_a_long_prompt_takes_at_most_two_fifths_of_the_screen(store, engine):  # noqa: F811
    app = make_app(store, engine, prompts={"long": " the cat sat on the mat" * 60}, config=CONFIG30)
    rows = screen_rows(app, (80, 24))
    assert len(pane_rows(rows, "prompt \u00b7")) + 2 <= 0.4 * 22
    assert rows[0].startswith("\u250c prompt")


def _table_snap(ranks, selected=0, subtree=0):
    rows = tuple(CandidateRow(rank=r, token_id=i, text=f"\u00b7tok{i}", prob=0.5 / (i + 1), explored=bool(subtree),
                              subtree=subtree) for i, r in enumerate(ranks))
    snap = _status()
    return Snapshot(**{**snap.__dict__, "candidates": rows, "selected": selected})


@pytest.mark.parametrize("width", [46, 80, 120])
def test_big_ranks_keep_the_columns_aligned(width):
    table = CandidateTable()
    table.update(_table_snap([1, 42, 999, 9062, 12345, 123456], selected=3, subtree=70))
    rows = [r for r in text_rows(table.render((width, 12))) if "\u00b7tok" in r]
    assert len(rows) == 6
    assert re.search("\u25b6 +9062 ", rows[3])  # the marker never touches the rank
    starts = {r.index("\u00b7tok") for r in rows}
    percents = {r.index("%") for r in rows}
    trees = {r.index("\u25b870") for r in rows}
    assert len(starts) == len(percents) == len(trees) == 1, rows
    assert " 123456 " in rows[5] and " 12345 " in rows[4]
    header = text_rows(table.render((width, 12)))[1]
    assert header.index("prob") + 3 == percents.pop()  # headers over their columns
    assert header.index("tree") == trees.pop() and header.index("token") == starts.pop()
    assert header.index("#") == rows[0].index(" 1 ") + 1


def test_the_tree_column_is_narrow_and_the_token_column_takes_the_slack():
    table = CandidateTable()
    table.update(_table_snap([1, 2], subtree=7))
    rows = [r for r in text_rows(table.render((120, 8))) if "\u00b7tok" in r]
    assert rows[0].rstrip(" \u2502").endswith("\u25b87") and len(rows[0].rstrip(" \u2502")) >= 110


@pytest.mark.parametrize("width", [32, 34, 40, 80])
def test_branch_columns_all_show_and_the_name_shortens_first(width):
    branches = tuple(BranchRow(id=i, name=n, depth=d, appended=a, logprob=lp, perplexity=pp, focused=i == 1)
                     for i, (n, d, a, lp, pp) in enumerate([
                         ("story", 67, 0, None, None), ("a very long branch name 22", 1070, 123, -1234.5, 12.3),
                         ("sample 3", 70, 3, -6.04, 7.27)]))
    snap = Snapshot(**{**_status().__dict__, "branches": branches})
    pane = BranchList()
    pane.update(snap)
    rows = text_rows(pane.render((width, 8)))
    assert_exact_width(rows, width)
    header, long, sample = rows[1], rows[3], rows[4]
    assert "len" in header and "+app" in header and "logp" in header and "ppl" in header
    assert "1070" in long and "+123" in long and "-1234.5" in long and "12.3" in long
    assert "70" in sample and "+3" in sample and "-6.0" in sample and "7.27" in sample
    assert long.index("-1234.5") + 7 == sample.index("-6.0") + 4  # right-aligned column
    if width >= 40:
        assert "sample 3" in sample
    assert "\u2026" in long or width >= 40  # cut in the middle: its end stays
    assert "22" in long


# ---------------------------------------------------------------- tree pane

@pytest.mark.parametrize("size", SIZES)
def test_the_focused_branch_shows_in_the_tree_pane_with_22_branches(store, size):  # noqa: F811
    app = make_app(store, config=CONFIG30)
    grow_branches(app, 21)
    app.press("t")
    assert len(app.snapshot.branches) == 23
    rows = screen_rows(app, size)
    tree = pane_rows(rows, "\u250c tree ")
    focused = next(b.name for b in app.snapshot.branches if b.focused)
    line = next((r for r in tree if f"[{focused}*]" in r), None)
    assert line is not None, "\n".join(rows)
    assert "tree_current" in attrs_of(next(
        [(a, t.decode()) for a, _cs, t in row] for row in app.render(size).content()
        if f"[{focused}*]" in b"".join(t for _a, _cs, t in row).decode()))
    text = line.split("*] ", 1)[1].strip()
    assert text, line  # and its text
    content = [r for r in tree if r.strip()]
    assert len(content) >= min(len(tree), 5)  # a useful pane, even at 80x24
    for r in content:  # deep lines: a depth number and the last guides, never a blank row
        assert "[" in r or r.strip() and not set(r.strip()) <= set("\u2502\u251c\u2514\u2500 ")
    if size[0] == 80:
        assert any("\u2039" in r for r in tree)  # ‹N›: guides cut, depth shown


def test_a_root_line_keeps_the_end_that_leads_to_the_fork(store):  # noqa: F811
    long_prompt = " the cat sat on the mat and" * 6 + " the dog"
    app = make_app(store, prompts={"cat": " the cat sat", "dog": long_prompt}, config=CONFIG30)
    app.press("d", "right")
    app.settle()
    app.press("t")
    for size in SIZES[:2]:
        tree = pane_rows(screen_rows(app, size), "\u250c tree ")
        root = next(r for r in tree if "[dog]" in r)
        assert root.rstrip().endswith("the dog") and "\u2026" in root, root  # the fork point shows
        assert "[branch 3*]" in "\n".join(tree)


def test_tree_pane_lines_fit_any_width_and_keep_names():
    pane = TreePane()
    deep = "\u2502  " * 30 + "\u2514\u2500 "
    lines = (TreeLine("", "The lighthouse keeper had not seen a ship in eleven years, so when", ("story",), False),
             TreeLine(deep, "\u65e5\u672c\u8a9e and a long text that ends at the tip", ("b1", "b2", "branch 22*"),
                      True))
    pane.update(lines)
    for width in (20, 34, 50, 80, 200):
        rows = text_rows(pane.render((width, 6)))
        assert_exact_width(rows, width)
        deep_row = rows[2]
        assert "\u203931\u203a" in deep_row and "\u2514\u2500 [" in deep_row, (width, deep_row)
        assert "22*" in deep_row or width < 30, (width, deep_row)
        assert "[branch 22*, +2]" in deep_row or width < 50 or "b1, b2, branch 22*" in deep_row, (width, deep_row)
        assert "\u2026" in rows[1] or width >= 70
        assert rows[1].rstrip(" \u2502").endswith("so when") or width < 20


@pytest.mark.parametrize("layers,size", [(4, (80, 24)), (40, (80, 24)), (40, (200, 50))])
def test_the_layer_heat_map_has_a_header_and_fits(store, layers, size):  # noqa: F811
    engine = FakeEngine(FakeLoaded(num_layers=layers))
    app = make_app(store, engine, layer_prob=True, config=CONFIG30)
    app.press("p")
    app.settle()
    rows = screen_rows(app, size)
    assert_exact_width(rows, size[0])
    header = pane_rows(rows, "next token")[0]
    cells = max(r.count("\u2588") for r in rows)
    if cells == layers:
        assert f"1\u2192{layers}" in header and "of" not in header
        assert f"layers 1\u2192{layers}" in header or size[0] == 80
    else:  # a narrow pane: the first layers, and the header says how many of them
        assert f"1\u2192{cells} of {layers}" in header
    assert cells == layers or size[0] == 80


# ---------------------------------------------------------------- wide characters

def test_safe_text_has_one_width_for_urwid_and_the_terminal():
    for text in WIDE + ["".join(WIDE), "\u202eevil", "x\U0001F1EB\U0001F1F7\U0001F1EBy", "\ufe0f", "\u00ad"]:
        shown = safe(text)
        assert width_of(shown) == terminal_width(shown), (text, shown)
    assert safe("\U0001F468\u200d\U0001F469") == "\U0001F468\\u200d\U0001F469"
    assert safe("\U0001F44D\U0001F3FD") == "\U0001F44D" and safe("\U0001F3FD") == "\U0001F3FD"
    assert safe("\U0001F1EB\U0001F1F7") == "\U0001F1EB\U0001F1F7" and safe("\U0001F1EB") == "\\U0001f1eb"
    assert safe("\u2764\ufe0f") == "\u2764" and safe("e\u0301") == "e\u0301"
    assert safe("\u0301x", mark_combining=True) == "\u25cc\u0301x"
    assert safe("\u65e5\u672c\u8a9e") == "\u65e5\u672c\u8a9e"
    for width in range(1, 12):
        for text in ("\u65e5\u672c\u8a9e\u65e5\u672c", "ab\U0001F600cd\U0001F600", "e\u0301" * 8):
            for keep in ("start", "end", "middle"):
                assert width_of(fit(text, width, keep=keep, head=2)) == width


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_every_row_is_screen_wide_with_wide_characters(store, wide_engine, size):  # noqa: F811
    prompt = " ".join(WIDE) + " caf" + "e\u0301" + " the cat"
    app = make_app(store, wide_engine, prompts={"\u65e5\u672c \U0001F44D\U0001F3FD": prompt}, config=CONFIG30)
    cols, _ = size
    app.press("t")
    assert_exact_width(screen_rows(app, size), cols)
    table = pane_rows(screen_rows(app, size), "next token")
    texts = [r for r in table if "%" in r]
    assert {terminal_width(r[: r.index("%")]) for r in texts} == {terminal_width(texts[0][: texts[0].index("%")])}
    shown = "\n".join(screen_rows(app, size))
    assert "\u65e5\u672c\u8a9e" in shown and "\U0001F1EB\U0001F1F7" in shown
    for keys in (("right",), ("d", "down", "right"), ("left",), ("left",), ("e",), ("?",), ("x",)):
        app.press(*keys)
        app.settle()
        assert_exact_width(screen_rows(app, size), cols)
    app.press("n", "\U0001F468", "\u200d", "\U0001F469", "\U0001F3FD", "\u65e5", "enter")
    assert_exact_width(screen_rows(app, size), cols)
    # Every candidate row, scrolled through.
    for _ in range(len(app.snapshot.candidates)):
        app.press("down")
        assert_exact_width(screen_rows(app, size), cols)


# ------------------------------------------------------------------ the prompt pane's tail


def _long_prompt_snapshot(n: int):
    from tokentree.core.snapshot import PromptToken, Snapshot, Status

    words = "Natalia sold clips to 48 of her friends in April and then half as many in May".split()
    toks = tuple(PromptToken(text=("\n" if i % 23 == 0 else " ") + words[i % len(words)], token_id=i % 97,
                             appended=i >= n - 5, value=None, special=False) for i in range(n))
    status = Status(model="m", device="cpu", dtype="float32", session_id=1, origin="cache", ms=None, busy=None,
                    engine_ready=True)
    return Snapshot(prompt=toks, prompt_view="plain", layer_view="off", candidates=(), selected=0,
                    waiting=False, branches=(), status=status, message=None)


def _content(canvas):
    return [[(attr, text) for attr, _cs, text in row] for row in canvas.content()]


def test_the_prompt_pane_lays_out_a_tail_and_draws_what_the_whole_text_draws():
    from tokentree.tui.prompt_pane import PromptPane

    snap = _long_prompt_snapshot(3000)
    whole, cut = PromptPane(), PromptPane()
    whole.update(snap)
    cut.fit_screen(80 * 10)
    cut.update(snap)
    assert len(cut.body._text.text) < len(whole.body._text.text) / 4  # only a tail was laid out
    for size in ((80, 10), (60, 8)):
        assert _content(cut.render(size)) == _content(whole.render(size))
        assert cut.rows_needed(size[0]) >= size[1]  # it still asks for all the rows it may have
    cut.fit_screen(200 * 30)  # the terminal grew: the text is cut again, for the larger pane
    assert _content(cut.render((200, 30))) == _content(whole.render((200, 30)))


def test_line_tail_cuts_only_at_a_line_start():
    from tokentree.tui.prompt_pane import line_tail

    markup = [("a", "one two\nthree"), ("b", " four\nfive"), ("c", " six")]
    assert line_tail(markup, 4) == [("b", "five"), ("c", " six")]
    assert line_tail(markup, 12) == [("a", "three"), ("b", " four\nfive"), ("c", " six")]
    assert line_tail(markup, 100) == markup  # shorter than asked: all of it
    assert line_tail([("a", "no line starts " * 50)], 10) == [("a", "no line starts " * 50)]

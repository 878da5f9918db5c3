"""The comparisons on screen: the branch diff (c, a picker in the branch pane, the diff
view) and the compare model's column, status numbers and disagreement view. Widget tests
press keys on the urwid app and read the canvas; the pty tests run the real `tokentree`."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_engine import FakeEngine
from test_compare import OtherFake, plain_logps
from test_tui_pty import CTRL_Q, DOWN, LEFT, RIGHT, Terminal
from test_tui_widgets import attrs_of, branch_lines, lines, make_app, prompt_row, row_with
from tokentree.features.compare.diff import diff_table
from tokentree.paths import default_db_path
from tokentree.tui.help import LEGEND
from tokentree.store import Store

ESC, ENTER = "\x1b", "\r"
CAPTURES = os.environ.get("TOKENTREE_CAPTURES")  # a folder: the pty tests save their screens there


@pytest.fixture
def store():
    s = Store.open(default_db_path())
    yield s
    s.close()


def screen(app) -> str:
    return "\n".join(lines(app))


def forked_app(store, **kw):
    """Branch "dog" (focused) +2 tokens, then a duplicate with its last token replaced."""
    app = make_app(store, **kw)
    app.press("right", "right")
    app.settle()
    app.press("d", "left", "down", "right")
    app.settle()
    return app


def save(name: str, text: str) -> None:
    if CAPTURES:
        Path(CAPTURES).mkdir(parents=True, exist_ok=True)
        Path(CAPTURES, name).write_text(text + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- branch diff


def test_c_with_one_branch_says_there_is_nothing_to_compare(store):
    app = make_app(store, prompts={"cat": " the cat sat"})
    app.press("c")
    assert app.picker is None and "only one branch: nothing to compare it with (d duplicates it)" in screen(app)


def test_c_picks_a_branch_in_the_branch_pane_and_esc_cancels(store):
    app = forked_app(store)
    names = [b.name for b in app.snapshot.branches]
    focused = next(b.name for b in app.snapshot.branches if b.focused)
    app.press("c")
    # The branch after the focused one (wrapping round) is picked first, marked ◆.
    after = names[(names.index(focused) + 1) % len(names)]
    picked = next(line for line in branch_lines(app) if "\u25c6" in line)
    assert after in picked and "branch_pick" in attrs_of(row_with(app, "\u25c6 " + after))
    assert f"compare {focused} with {after}?" in screen(app)
    assert "down: pick  enter: compare  esc: cancel" in screen(app)
    app.press("s")  # w / s (and the arrows) move the pick; the focus does not move
    again = next(line for line in branch_lines(app) if "\u25c6" in line)
    assert again != picked and next(b.name for b in app.snapshot.branches if b.focused) == focused
    app.press("x")  # not a picker key: says so, runs nothing (x would save the branch)
    assert "x does nothing here: esc closes the picker" in screen(app)
    app.press("esc")
    assert app.picker is None and not any("\u25c6" in line for line in branch_lines(app))
    assert "next token" in screen(app)


def test_enter_opens_the_diff_view_with_the_plain_numbers_and_esc_closes_it(store):
    engine = FakeEngine()
    app = forked_app(store, engine=engine)
    branches = app.snapshot.branches
    a = next(b for b in branches if b.focused)
    b = next(x for x in branches if x.name == "dog")
    app.press("c")
    while app.picker.chosen[0] != b.id:
        app.press("down")
    app.press("enter")
    app.settle()
    text = screen(app)
    assert f"branch diff \u00b7 {a.name} vs dog" in text
    assert f"{a.name} (A) vs dog (B): fork after 4 shared tokens" in text  # " a dog and" + 1
    assert "logp A" in text and "logp B" in text and "\u0394 A\u2212B" in text
    diff = app.explorer.features.compare.branch_diff(a.id, b.id)
    path_a = [n.token_id for n in store.path_nodes(next(x for x in store.branches(app.explorer.session_id)
                                                         if x.id == a.id).node_id)]
    path_b = [n.token_id for n in store.path_nodes(next(x for x in store.branches(app.explorer.session_id)
                                                         if x.id == b.id).node_id)]
    la, lb = plain_logps(engine, path_a)[4:], plain_logps(engine, path_b)[4:]
    assert len(la) == len(lb) == 1
    row = next(line for line in lines(app) if line.startswith("\u2502    1 "))
    assert f"{la[0]:.3f}" in row and f"{lb[0]:.3f}" in row and f"{la[0] - lb[0]:+.3f}" in row
    delta_attr = "diff_more" if la[0] > lb[0] else "diff_less"
    assert delta_attr in attrs_of(row_with(app, f"{la[0] - lb[0]:+.3f}"))
    ppl = next(line for line in lines(app) if "ppl" in line)
    assert f"{math.exp(-la[0]):.3f}" in ppl and f"{math.exp(-lb[0]):.3f}" in ppl
    assert diff_table(diff).rows[0][1] in row
    assert "esc: close" in text  # the status line says how to close it
    app.press("esc")
    assert app.diff_pair is None and "next token" in screen(app) and "branch diff" not in screen(app)


def test_diff_view_scrolls_and_fills_in_as_values_arrive(store):
    app = make_app(store, prompts={"cat": " the cat sat"})
    app.press("d")
    app.press("right")
    app.settle()
    for _ in range(30):  # a long branch: more rows than the view shows
        app.press("right")
    app.settle()
    app.press("c", "enter")
    text = screen(app)
    assert "fork after 3 shared tokens" in text and "\u2502    1 " in text
    app.press("page down", "page down")
    assert "\u2502    1 " not in screen(app)
    app.press("home")
    assert "\u2502    1 " in screen(app)
    app.press("q")  # any other key: how to close it
    assert "q does nothing here: esc closes the diff view" in screen(app)
    app.press("enter")
    assert app.diff_pair is None


def test_help_lists_the_compare_and_picker_commands(store):
    app = make_app(store)
    rows = {name: (keys, text) for keys, name, text in app.help.entries}
    assert rows["compare"][0] == "c" and "compare the branch with another" in rows["compare"][1]
    assert rows["pick_cancel"][0] == "esc" and rows["pick_down"][0] == "down/j/s"
    assert any(symbol == "cmp" for symbol, _ in LEGEND) and any(s.startswith("KL") for s, _ in LEGEND)


# --------------------------------------------------------------------------- compare model


def compare_app(store, **kw):
    app = make_app(store, **kw)
    other = OtherFake()
    app.explorer.features.compare.set_model("/models/fake-other", other.info.fingerprint, engine=other)
    app.settle()
    return app, other


def test_compare_column_status_numbers_and_legend(store):
    app, other = compare_app(store)
    text = screen(app)
    header = next(line for line in lines(app) if "token" in line and "prob" in line)
    assert " cmp tree" in header
    assert "cmp: p under fake-other" in text
    snap = app.snapshot
    d = snap.compare.divergence
    assert f"vs fake-other: KL \u2265 {d.kl:.3f} \u00b7 TV {d.tv_low:.2f}\u2013{d.tv_high:.2f}" in text
    path = [t.token_id for t in snap.prompt]
    q = other._probs(path)
    for row in snap.candidates:
        if row.compare_bound:
            assert q[row.token_id] <= row.compare + 1e-6
            cell = f"<{row.compare * 100:.2f}%"
        else:
            assert row.compare == pytest.approx(q[row.token_id], rel=1e-5)
            cell = f"{row.compare * 100:.2f}%"
        line = next(line for line in lines(app) if f" {row.text} " in line and "%" in line)
        assert cell in line
    assert "compare" in attrs_of(row_with(app, f"{snap.candidates[1].compare * 100:.2f}%"))


def test_disagreement_view_colours_by_the_gap(store):
    app, other = compare_app(store, prompts={"dog": " a dog and"})
    app.press("e", "e", "e", "e")
    app.settle()
    assert app.snapshot.prompt_view == "disagreement"
    assert "prompt \u00b7 disagreement view" in screen(app)
    assert "|\u0394 log p| between the two models" in screen(app)
    engine = FakeEngine()
    ids = [t.token_id for t in app.snapshot.prompt]
    row = prompt_row(app)
    assert row[1] == ("na", " a")  # a first token: no distribution under either model
    colours = attrs_of(row)
    for k, tok in enumerate(app.snapshot.prompt[1:], 1):
        gap = abs(math.log(engine._probs(ids[:k])[ids[k]]) - math.log(other._probs(ids[:k])[ids[k]]))
        assert tok.value == pytest.approx(min(1.0, gap / 3), abs=1e-5)
        assert f"dis_{min(7, int(tok.value * 8))}" in colours
    app.press("e")
    assert app.snapshot.prompt_view == "plain"


# --------------------------------------------------------------------------- the real command


def _names():
    store = Store.open(default_db_path())
    try:
        sid = store.latest_session_id()
        return sid, store.branches(sid)
    finally:
        store.close()


def test_pty_branch_diff_then_export(tmp_path, tiny_model):
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    term = Terminal(["--model", str(tiny_model), "--input", str(prompt)], tmp_path)
    term.wait_for("Once upon a time", " idle ", "story")
    term.keys(RIGHT, settle="+1 ")
    term.keys(RIGHT, settle="+2 ")
    term.keys("d", settle="branches \u00b7 2")
    term.keys(LEFT, settle="+1 ")  # the copy popped back (both were +2)
    term.keys(DOWN, RIGHT)  # and on with the second candidate: +2 again, another token
    # Both branches +2 and idle on one frame: the right arrow was taken and its node computed.
    term.wait_until(lambda text: text.count("+2 ") >= 2 and "+1 " not in text and " idle " in text,
                    "both branches at +2, idle")
    term.keys("c", settle=("enter: compare", "\u25c6 story"))
    save("picker.txt", term.text)
    term.keys(ENTER, settle="branch diff \u00b7")
    term.wait_for("shared tokens", "total", "ppl", "logp A", "\u0394 A\u2212B")
    save("diff.txt", term.text)
    term.keys(ESC)
    term.wait_for("next token")
    term.keys(CTRL_Q)
    assert term.finish() == 0

    sid, branches = _names()
    focused = next(b for b in branches if b.focused)
    exe = Path(sys.executable).with_name("tokentree")
    out = subprocess.run([str(exe), "export", "last", "--diff", focused.name, "story"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    save("export-diff.txt", out.stdout)
    story = next(b for b in branches if b.name == "story")
    with Store.open(default_db_path()) as store:
        shared = len(store.path_nodes(story.node_id)) - 1  # story is one token past the fork
    assert f"{focused.name} (A) vs story (B): fork after {shared} shared tokens" in out.stdout
    assert "n/a" not in out.stdout.split("\n", 4)[4].split("logp:")[0]  # every value was computed


def test_pty_compare_model_then_resume_from_the_cache(tmp_path, tiny_model, twin_models):
    prompt = tmp_path / "story.txt"
    prompt.write_text("Once upon a time", encoding="utf-8")
    other = str(twin_models[1])
    term = Terminal(["--model", str(tiny_model), "--compare-model", other, "--input", str(prompt)], tmp_path)
    term.wait_for("Once upon a time", " idle ", " cmp ", "vs qwen2-seed1: KL \u2265")
    # "+1 " and idle on one whole frame: the append's node (and its compare numbers) computed.
    term.keys(RIGHT, settle=("+1 ", " idle ", "vs qwen2-seed1: KL", "cmp: p under qwen2-seed1"))
    save("compare.txt", term.text)
    term.keys("e", "e", "e", "e", settle=("disagreement view", " idle ", "|\u0394 log p| between the two models"))
    save("disagreement.txt", term.text)
    term.keys(CTRL_Q)
    assert term.finish() == 0

    # Resumed with the same compare model: the numbers are in the cache.
    term = Terminal(["--resume", "last", "--compare-model", other], tmp_path)
    term.wait_for("vs qwen2-seed1: KL \u2265", " cmp ", "%")
    term.wait_for(" idle ")
    term.keys(CTRL_Q)
    assert term.finish() == 0


@pytest.fixture(scope="module")
def twin_models(tiny_models, tmp_path_factory):
    from tiny_model import build_tiny_model

    return tiny_models["qwen2"], build_tiny_model(tmp_path_factory.mktemp("twin") / "qwen2-seed1", "qwen2", seed=1)

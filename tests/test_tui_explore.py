"""The exploration commands on the urwid screen, driven by key presses without a terminal:
the registry's new entries, the text fields (rename, search: letters type, never run
commands), the sampler column and the search status. Rendered text AND colours are checked."""

from __future__ import annotations

import threading

import pytest
import urwid

from fake_engine import FakeEngine
from test_tui_widgets import SIZE, attrs_of, lines, make_app, row_with, runs, store  # noqa: F401
from tokentree.commands import COMMANDS, EXPLORER, GLOBAL, TEXT, Command, check_registry
from tokentree.config import parse_config
from tokentree.core.snapshot import CandidateRow, Snapshot, Status
from tokentree.core.worker import Worker
from tokentree.errors import ConfigError
from tokentree.tui.keymap import Keymap, build_keymap
from tokentree.tui.palette import build_palette
from tokentree.tui.candidate_table import CandidateTable
from tokentree.tui.status_bar import StatusBar

# Every letter, digit and punctuation key the explorer binds, and some it does not.
COMMAND_LETTERS = "fgnwsdau.,[]vepthljkx/?"


def screen(app, size=SIZE) -> str:
    return "\n".join(row.decode() for row in app.render(size).text)


def branch_names(app) -> list[str]:
    return [b.name for b in app.snapshot.branches]


def events(app):
    return app.explorer.store.events(app.explorer.session_id)


# ---------------------------------------------------------------- registry and keymap

NEW = {
    "fill": (("f",), "fill", "start", (), EXPLORER),
    "sample": (("g",), "sample", "start", (), EXPLORER),
    "next_fork": (("]",), "forks", "fork_point", (1,), EXPLORER),
    "prev_fork": (("[",), "forks", "fork_point", (-1,), EXPLORER),
    "next_candidate": ((".",), "forks", "counterfactual", (1,), EXPLORER),
    "prev_candidate": ((",",), "forks", "counterfactual", (-1,), EXPLORER),
    "rename_branch": (("n",), "app", "open_rename", (), EXPLORER),
    "search": (("/",), "app", "open_search", (), EXPLORER),
    "search_next": (("ctrl n",), "search", "step", (1,), EXPLORER),
    "search_prev": (("ctrl p",), "search", "step", (-1,), EXPLORER),
    "toggle_sampler": (("v",), "sampler", "toggle", (), EXPLORER),
    "cancel": (("esc",), "explorer", "cancel", (), EXPLORER),
    "text_commit": (("enter",), "app", "commit_text", (), TEXT),
    "text_cancel": (("esc",), "app", "cancel_text", (), TEXT),
}


def test_registry_has_every_exploration_command_with_its_default_keys():
    by_name = {c.name: c for c in COMMANDS}
    for name, (keys, target, method, args, context) in NEW.items():
        c = by_name[name]
        assert (c.keys, c.target, c.method, c.args, c.context) == (keys, target, method, args, context), name
    keymap = Keymap()
    for name, (keys, *_rest, context) in NEW.items():
        for key in keys:
            assert keymap.command_for(key, context) == name, (name, key)


def test_esc_cancels_a_fill_on_the_screen_and_closes_a_field_in_text():
    keymap = Keymap()
    assert keymap.command_for("esc", EXPLORER) == "cancel"
    assert keymap.command_for("esc", TEXT) == "text_cancel"
    assert keymap.command_for("esc", GLOBAL) is None
    assert keymap.command_for("enter", EXPLORER) is None and keymap.command_for("enter", TEXT) == "text_commit"
    for key in COMMAND_LETTERS + " ":
        assert keymap.command_for(key, TEXT) is None, key  # the field types it
    assert keymap.command_for("ctrl q", TEXT) == "quit"
    assert keymap.command_for("ctrl n", TEXT) is None  # an explorer ctrl-key: not in a field


def test_a_default_key_clash_in_one_context_is_refused():
    with pytest.raises(ValueError, match="default of both"):
        check_registry((Command("a", ("x",), "a", target="app", method="a"),
                        Command("b", ("x",), "b", target="app", method="b")))
    with pytest.raises(ValueError, match="default of both"):  # a global key works in a field too
        check_registry((Command("a", ("ctrl x",), "a", target="app", method="a", context=GLOBAL),
                        Command("b", ("ctrl x",), "b", target="app", method="b", context=TEXT)))


def test_text_commands_rebind_and_refuse_printable_keys():
    keymap = build_keymap(parse_config({"keys": {"text_commit": "ctrl+j", "cancel": "ctrl+x"}}))
    assert keymap.command_for("ctrl j", TEXT) == "text_commit" and keymap.command_for("enter", TEXT) is None
    assert keymap.command_for("ctrl x", EXPLORER) == "cancel"
    assert keymap.command_for("esc", EXPLORER) is None and keymap.command_for("esc", TEXT) == "text_cancel"
    # esc for a main-screen command and a text command at once is fine (different contexts).
    keymap = build_keymap(parse_config({"keys": {"undo": "esc"}}))
    assert keymap.command_for("esc", EXPLORER) == "undo" and keymap.keys["cancel"] == ()
    assert keymap.command_for("esc", TEXT) == "text_cancel"
    with pytest.raises(ConfigError, match="types a character"):
        build_keymap(parse_config({"keys": {"text_commit": "x"}}))
    with pytest.raises(ConfigError, match="bound to both"):
        build_keymap(parse_config({"keys": {"text_cancel": "ctrl+q", "quit": "ctrl+q"}}))


# ---------------------------------------------------------------- rename field

def test_rename_field_opens_on_the_focused_row_with_its_name(store):
    app = make_app(store)
    app.press("n")
    assert app.field is not None and app.field.edit_text == "dog"
    row = row_with(app, " name  dog")
    assert {"edit_caption", "edit"} <= attrs_of(row)
    assert "branch_focus" not in attrs_of(row)  # the field replaces the focused row
    canvas = app.render(SIZE)
    x, y = canvas.cursor
    assert " name  dog" in canvas.text[y].decode() and canvas.text[y].decode()[x - 3:x] == "dog"
    status = screen(app, (80, 24)).splitlines()[-1]
    assert status.startswith(" enter: rename  esc: cancel ")  # first: the line is clipped at 80
    assert "edit_caption" in attrs_of(runs(app)[-1])


def test_typing_command_letters_in_the_rename_field_only_types(store):
    app = make_app(store)
    before_events, before_prompt = events(app), lines(app)[1]
    app.press("n", "end", "backspace", "backspace", "backspace")
    app.press(*COMMAND_LETTERS, " ", "ctrl r", "ctrl n", "up", "down", "tab", "f5")
    assert app.field.edit_text == COMMAND_LETTERS + " "
    assert events(app) == before_events  # nothing ran: no append, duplicate, undo, fill ...
    assert lines(app)[1] == before_prompt and not app.show_help and not app.show_tree
    assert app.snapshot.sampler is None and app.snapshot.prompt_view == "plain"
    assert app.explorer.message is None
    assert COMMAND_LETTERS in screen(app, (140, 30))


def test_rename_field_edits_and_enter_renames(store):
    app = make_app(store)
    app.press("n", "home", "delete", "D", "end", "left", "x", "right", "!")  # "dog" -> "Doxg!"
    assert app.field.edit_text == "Doxg!"
    app.press("enter")
    assert app.field is None
    assert branch_names(app) == ["cat", "Doxg!"]
    assert events(app)[-1].type == "branch.renamed"
    assert "\u25b6 Doxg!" in screen(app) and "branch_focus" in attrs_of(row_with(app, "\u25b6 Doxg!"))
    assert "renamed dog to Doxg!" in screen(app)
    assert "?: help" in lines(app)[-1]  # the usual hint is back
    app.press("u")
    assert branch_names(app) == ["cat", "dog"]


def test_esc_closes_the_rename_field_and_records_nothing(store):
    app = make_app(store)
    before = events(app)
    app.press("n", "z", "z", "esc")
    assert app.field is None and branch_names(app) == ["cat", "dog"] and events(app) == before
    assert "name  dogzz" not in screen(app) and "\u25b6 dog" in screen(app)
    app.press("d")  # keys are commands again
    assert len(app.snapshot.branches) == 3


def test_a_refused_rename_shows_in_the_status_line(store):
    app = make_app(store)
    before = events(app)
    app.press("n", "enter")  # the same name: the store refuses it
    assert app.field is None and events(app) == before
    assert "already called dog" in screen(app)
    assert "message" in attrs_of(row_with(app, "already called dog"))


def test_ctrl_q_quits_from_a_text_field(store):
    app = make_app(store)
    app.press("n")
    with pytest.raises(urwid.ExitMainLoop):
        app.press("ctrl q")
    app.press("esc", "/")
    with pytest.raises(urwid.ExitMainLoop):
        app.press("ctrl q")


def test_the_rename_field_survives_model_results(store):
    """A redraw while the field is open (the worker finished a job) keeps the field and its text."""
    app = make_app(store)
    app.press("n", "!")
    app.refresh()
    assert app.field.edit_text == "dog!" and "name  dog!" in screen(app)


# ---------------------------------------------------------------- search field

def test_search_field_in_the_footer_types_letters_and_enter_searches(store):
    app = make_app(store)
    before = events(app)
    app.press("/")
    row = row_with(app, " search ")
    assert "edit_caption" in attrs_of(row)
    canvas = app.render(SIZE)
    assert canvas.cursor is not None and canvas.cursor[1] == SIZE[1] - 2  # above the status bar
    app.press(*"fgnwsdau")
    assert app.field.edit_text == "fgnwsdau" and events(app) == before
    for _ in "fgnwsdau":
        app.press("backspace")
    app.press(*"cat")
    app.press("enter")
    assert app.field is None
    snap = app.snapshot
    assert snap.search and '"cat"' in snap.search
    assert "".join(t.text for t in snap.prompt) == " the cat"  # jumped to the match
    row = row_with(app, snap.search)
    assert "search" in attrs_of(row)
    assert row_with(app, snap.search) == runs(app)[-2]  # the message line, over the status bar


def test_search_esc_records_nothing_and_no_match_says_so(store):
    app = make_app(store)
    before = events(app)
    app.press("/", *"cat", "esc")
    assert app.field is None and app.snapshot.search is None and events(app) == before
    app.press("/", *"zebra", "enter")
    assert "no match" in screen(app)


def test_search_next_and_previous_step_through_matches(store):
    app = make_app(store, prompts={"cat": " the cat sat", "dog": " a dog and the cat"})
    app.press("/", *"the", "enter")
    first = app.snapshot.search
    assert first and "1 of" in first
    app.press("ctrl n")
    assert app.snapshot.search != first and "2 of" in app.snapshot.search
    app.press("ctrl p")
    assert app.snapshot.search == first


# ---------------------------------------------------------------- sampler column

def _snap(rows, sampler) -> Snapshot:
    status = Status(model="m", device="cpu", dtype="float32", session_id=1, origin="cache", ms=None,
                    busy=None, engine_ready=True)
    return Snapshot(prompt=(), prompt_view="plain", layer_view="off", candidates=tuple(rows), selected=0,
                    waiting=False, branches=(), status=status, message=None, sampler=sampler)


def _table_runs(table, size):
    return [[(a, t.decode()) for a, _cs, t in row] for row in table.render(size).content()]


ROWS = [
    CandidateRow(rank=1, token_id=1, text="\u00b7the", prob=0.6, explored=True, subtree=12, sampled=0.75),
    CandidateRow(rank=2, token_id=2, text="\u00b7cat", prob=0.2, explored=False, subtree=0, sampled=0.25),
    CandidateRow(rank=3, token_id=3, text="\u00b7sat", prob=0.1, explored=False, subtree=0, sampled=None),
]


def test_sampler_column_shows_survivors_and_dims_filtered_rows():
    table = CandidateTable()
    table.update(_snap(ROWS, "T 0.7 \u00b7 top-p 0.9 (approx.)"))
    size = (48, 10)  # the table's share of an 80-column terminal
    text = [row.decode() for row in table.render(size).text]
    assert "sample" in text[1] and "tree" in text[1]
    assert "next token \u00b7 3 shown \u00b7 sampler" in text[0]
    first = next(line for line in text if "the" in line)
    assert "60.00%" in first and "75.0%" in first and "\u25b812" in first  # nothing clipped
    third = next(line for line in text if "sat" in line)
    assert "10.00%" in third and "\u00b7" in third.split("%")[1]
    assert any("sampler T 0.7 \u00b7 top-p 0.9 (approx.)" in line for line in text)
    rows = _table_runs(table, size)
    cat = next(r for r in rows if "cat" in "".join(t for _, t in r))
    assert "sampled" in attrs_of(cat) and "filtered" not in attrs_of(cat)
    sat = next(r for r in rows if "sat" in "".join(t for _, t in r))
    assert attrs_of(sat) == {"filtered"}  # dimmed as a whole
    first_row = next(r for r in rows if "the" in "".join(t for _, t in r))
    assert attrs_of(first_row) == {"selected"}  # the selection stays visible


def test_sampler_column_off_is_the_plain_table():
    table = CandidateTable()
    table.update(_snap([r.__class__(**{**r.__dict__, "sampled": None}) for r in ROWS], None))
    text = [row.decode() for row in table.render((48, 10)).text]
    assert "sample" not in text[1] and "sampler" not in "\n".join(text)
    assert not any("filtered" in attrs_of(r) for r in _table_runs(table, (48, 10)))


def test_v_toggles_the_sampler_column_on_the_screen(store):
    config = parse_config({"display": {"tokens_to_show": 6}, "sampling": {"top_k": 2}})
    app = make_app(store, config=config)
    app.press("v")
    snap = app.snapshot
    assert snap.sampler and "top-k 2" in snap.sampler
    assert [r.sampled is not None for r in snap.candidates] == [True, True, False, False, False, False]
    text = screen(app, (80, 24))
    assert " sample " in text and f"sampler {snap.sampler}" in text
    top = next(line for line in text.splitlines() if "\u25b6" in line and "%" in line)
    assert top.count("%") == 2  # probability and sampled probability, in 80 columns
    assert f"{snap.candidates[0].sampled * 100:5.1f}%" in top
    second = row_with(app, f"{snap.candidates[1].sampled * 100:5.1f}%")
    assert "sampled" in attrs_of(second)
    filtered = row_with(app, f"{snap.candidates[2].prob * 100:6.2f}%")
    assert "filtered" in attrs_of(filtered) and "sampled" not in attrs_of(filtered)
    app.press("v")
    assert app.snapshot.sampler is None and " sample " not in screen(app, (80, 24))


def test_new_styles_have_16_and_256_colour_entries():
    names = {e[0]: e for e in build_palette()}
    for name in ("edit", "edit_caption", "sampled", "filtered", "search"):
        assert len(names[name]) == 6 and names[name][1] and names[name][4]


def test_status_bar_shows_the_search_before_the_message():
    bar = StatusBar("?: help")
    snap = _snap([], None)
    bar.update(Snapshot(**{**snap.__dict__, "search": 'search "cat": match 2 of 5', "message": "hello"}))
    rows = [[(a, t.decode()) for a, _cs, t in row] for row in bar.render((80,)).content()]
    assert "".join(t for _, t in rows[0]).startswith('search "cat": match 2 of 5  hello')
    assert {"search", "message"} <= attrs_of(rows[0])


# ---------------------------------------------------------------- help

def test_help_lists_the_new_commands_and_scrolls(store):
    app = make_app(store)
    app.press("?")
    top = screen(app, (80, 24))
    assert "cursor_up" in top and "text_cancel" not in top  # longer than a small terminal
    seen = top
    for _ in range(30):  # page down through the keys to the legend at the end
        app.press("page down")
        seen += screen(app, (80, 24))
    assert app.show_help and "text_cancel" in seen and "quit" in seen
    app.press("end")
    assert "status: the model is working" in screen(app, (80, 24))  # the legend's last line
    app.press("home")
    assert "cursor_up" in screen(app, (80, 24))
    app.press("page down", "down", "up")
    assert app.show_help
    big = screen(app, (200, 60))
    for name in NEW:
        assert f"{name}: " in big, name
    assert "ctrl+n" in big and "esc" in big
    app.press("x")  # any other key closes it and does nothing else
    assert not app.show_help and len(app.snapshot.branches) == 2


# ---------------------------------------------------------------- fill and cancel

def test_fill_shows_its_progress_and_esc_cancels_it(store):
    """f runs in the worker a step at a time (the status bar counts); esc stops it and what
    it appended stays."""
    gate = threading.Event()
    engine = FakeEngine()
    app = make_app(store, engine, worker=Worker())
    engine.gate = gate
    try:
        app.press("f")
        status = lines(app)[-1]
        assert "\u23f3 filling 1/20" in status and "esc stops" in status
        assert "status_busy" in attrs_of(runs(app)[-1])
        app.press("esc")
        assert "filling" not in (app.explorer.busy or "")
        assert "fill stopped" in screen(app)
    finally:
        gate.set()
    app.settle()
    assert "idle" in lines(app)[-1]
    app.press("esc")  # nothing to cancel: no error
    assert "Traceback" not in screen(app)
    app.worker.shutdown()

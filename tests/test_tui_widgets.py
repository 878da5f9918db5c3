"""The urwid screen driven by key presses, without a terminal: assert on the rendered text
AND on the colours (attributes) of the canvas."""

from __future__ import annotations

from dataclasses import replace

import inspect
import threading

import pytest
import urwid

from fake_engine import FakeEngine, FakeLoaded, new_session
from tokentree.config import Config, DisplayConfig, parse_config
from tokentree.errors import ConfigError
from tokentree.core.explorer import Explorer
from tokentree.paths import default_db_path
from tokentree.store import Store
from tokentree.tui.app import ExplorerApp
from tokentree.commands import COMMANDS, EXPLORER, GLOBAL, TEXT, Command
from tokentree.tui.keymap import Keymap, build_keymap, normalize_key
from tokentree.tui.palette import build_palette
from tokentree.core.worker import InlineWorker, Worker

SIZE = (100, 30)
CONFIG = Config(display=DisplayConfig(tokens_to_show=6))


@pytest.fixture
def store():
    s = Store.open(default_db_path())
    yield s
    s.close()


def make_app(store, engine=None, prompts=None, *, layer_prob=False, config=CONFIG, worker=None, prefetch=0):
    """An app on a fake model. No speculative prefetch unless asked: these tests count the
    model's work key by key (test_prefetch.py and the test below cover prefetch)."""
    config = replace(config, explore=replace(config.explore, prefetch=prefetch))
    engine = engine or FakeEngine()
    sid = new_session(store, engine, prompts or {"cat": " the cat sat", "dog": " a dog and"})
    ex = Explorer(store, sid, config=config, layer_prob=layer_prob, model_name=engine.loaded.name)
    ex.attach_engine(engine)
    app = ExplorerApp(ex, build_keymap(config), worker=worker or InlineWorker())
    app.settle()
    return app


def lines(app) -> list[str]:
    return [row.decode() for row in app.render(SIZE).text]


def runs(app) -> list[list[tuple[object, str]]]:
    """Each screen row as (attribute, text) runs."""
    return [[(attr, text.decode()) for attr, _cs, text in row] for row in app.render(SIZE).content()]


def row_with(app, needle: str) -> list[tuple[object, str]]:
    for row in runs(app):
        if needle in "".join(text for _, text in row):
            return row
    raise AssertionError(f"{needle!r} not on screen:\n" + "\n".join(lines(app)))


def attrs_of(row, *, blanks: bool = False) -> set[str]:
    """Palette names used by the visible text of a row (layered attributes flattened);
    with `blanks`, also by spaces (background colour cells)."""
    names = set()
    for attr, text in row:
        if (blanks or text.strip()) and attr is not None:
            names.update(attr.layers if isinstance(attr, urwid.util.LayeredAttr) else (attr,))
    return names - {None}


def prompt_row(app):
    return runs(app)[1]  # under the box's top border


def branch_lines(app) -> list[str]:
    return [line.split("\u2502\u2502")[1] for line in lines(app) if "\u2502\u2502" in line]


def selected_line(app) -> str:
    return next(line for line in lines(app) if "\u25b6" in line and "%" in line)


def test_first_screen_shows_prompt_table_branches_status(store):
    app = make_app(store)
    screen = "\n".join(lines(app))
    assert " a dog and" in screen and "prompt \u00b7 plain view" in screen
    assert "next token \u00b7 6 shown" in screen and "branches \u00b7 2" in screen
    assert "fake-model \u00b7 cpu \u00b7 float32 \u00b7 session 1" in screen
    assert "forward pass" in screen and "idle" in screen and "?: help" in screen
    assert "last token p" in screen


def test_selection_moves_with_up_and_down(store):
    app = make_app(store)
    top = selected_line(app)
    assert "   1 " in top
    app.press("down")
    assert "   2 " in selected_line(app)
    assert "selected" in attrs_of(row_with(app, selected_line(app).strip()[:12]))
    app.press("j", "k", "up")
    assert selected_line(app) == top
    app.press("up")  # stays at the top
    assert selected_line(app) == top


def test_append_and_pop_change_the_prompt(store):
    app = make_app(store)
    before = lines(app)[1]
    app.press("down")
    chosen = app.snapshot.candidates[1]
    app.press("right")
    app.settle()
    assert app.snapshot.prompt[-1].token_id == chosen.token_id
    assert lines(app)[1] != before
    assert "appended" in attrs_of(prompt_row(app))  # the user's tokens stand out in plain view
    app.press("left")
    assert lines(app)[1] == before
    assert "\u25b81" in selected_line(app)  # the popped token is selected and marked explored
    app.press("l")
    assert app.snapshot.prompt[-1].token_id == chosen.token_id


def test_prompt_colours_change_with_e(store):
    app = make_app(store)
    assert attrs_of(prompt_row(app)) <= {"prompt", "appended", "cursor"}
    app.press("e")
    colours = attrs_of(prompt_row(app))
    assert "na" in colours  # the first token has no distribution
    assert any(str(a).startswith("prob_") for a in colours)
    assert "probability view" in lines(app)[0]
    assert any(str(a).startswith("prob_") for a in attrs_of(row_with(app, "token probability"), blanks=True))
    app.press("e")
    assert any(str(a).startswith("ent_") for a in attrs_of(prompt_row(app)))
    app.press("e")
    app.settle()
    assert any(str(a).startswith("inf_") for a in attrs_of(prompt_row(app)))
    app.press("e")
    assert attrs_of(prompt_row(app)) <= {"prompt", "appended", "cursor"}


def test_influence_view_shows_the_sink_share_and_no_value_at_the_sink(store):
    """The first token (the usual attention sink) and the last (the query) have no influence
    value: drawn as n/a. The sink's share is a number in the legend, which fits 80 columns."""
    app = make_app(store, prompts={"dog": " a dog and"})
    app.press("e", "e", "e")
    app.settle()
    assert app.snapshot.prompt_view == "influence" and app.snapshot.sink_share == 0.75
    row = prompt_row(app)
    by_text = {text: attr for attr, text in row if text.strip()}
    assert by_text[" a"] == "na" and by_text[" and"] == "na"  # the sink, the query
    assert by_text[" dog"] == "inf_7"  # the one position in between: 1.0
    legend = row_with(app, "sink 0.75")
    text = "".join(t for _, t in legend).split("\u2502")[1].rstrip()
    assert text.startswith("influence view") and text.endswith("\u00b7 sink 0.75")
    assert len(text) <= 78  # inside the pane's borders on an 80-column terminal


def test_branch_keys_change_the_branch_list(store):
    app = make_app(store)
    focused = lambda: next(line for line in branch_lines(app) if "\u25b6" in line)  # noqa: E731
    assert "dog" in focused()
    assert "branch_focus" in attrs_of(row_with(app, "\u25b6 dog"))
    app.press("w")
    assert "cat" in focused() and "branch_focus" in attrs_of(row_with(app, "\u25b6 cat"))
    app.press("s")
    assert "dog" in focused()
    app.press("d")
    assert "branches \u00b7 3" in "\n".join(lines(app)) and "branch 3" in focused()
    app.press("a")
    assert "branches \u00b7 2" in "\n".join(lines(app))
    app.press("u")
    assert "branches \u00b7 3" in "\n".join(lines(app)) and "undid" in "\n".join(lines(app))


def test_p_without_layer_prob_says_how_to_enable(store):
    app = make_app(store)
    app.press("p")
    row = row_with(app, "--layer_prob")
    assert "message" in attrs_of(row)


def test_layer_view_draws_a_heat_map(store):
    app = make_app(store, layer_prob=True)
    app.press("p")
    app.settle()
    assert "layer probabilities" in "\n".join(lines(app))
    heat = {a for a in attrs_of(row_with(app, "\u2588")) if str(a).startswith("heat_")}
    assert heat
    app.press("p")
    assert "layer-normalized" in "\n".join(lines(app))
    app.press("p")
    assert "\u2588" not in "\n".join(lines(app))


def test_walk_forward_reset_and_save(store):
    app = make_app(store)
    app.press("right")
    app.settle()
    app.press("right")
    app.settle()
    deep = lines(app)[1]
    app.press("left", "left", "shift right")
    assert lines(app)[1] == deep
    app.press("ctrl r")
    assert "reset to the root prompt" in "\n".join(lines(app))
    app.press("x")
    assert "saved to" in "\n".join(lines(app))


def test_tree_overview_toggles(store):
    app = make_app(store)
    app.press("t")
    screen = "\n".join(lines(app))
    assert "tree" in screen and "[dog*]" in screen and "[cat]" in screen
    assert "tree_current" in attrs_of(row_with(app, "[dog*]"))
    app.press("t")
    assert "[dog*]" not in "\n".join(lines(app))


def test_help_overlay_is_generated_from_the_keymap(store):
    app = make_app(store)
    app.press("?")
    screen = "\n".join(lines(app))
    assert "shift+right/L" in screen and "walk_forward" in screen and "ctrl+q" in screen
    app.press("down")  # the scroll keys move the help
    assert app.show_help
    app.press("q")  # any other key closes it and does nothing else
    assert "walk_forward" not in "\n".join(lines(app))
    assert "   1 " in selected_line(app)


def test_help_overlay_lists_every_command_with_its_current_keys(store):
    config = parse_config({"display": {"tokens_to_show": 6}, "keys": {"walk_forward": "ctrl+w"}})
    app = make_app(store, config=config)
    app.press("?")
    big = [row.decode() for row in app.render((200, 60)).text]  # room for every row unwrapped
    screen = "\n".join(big)
    for command in COMMANDS:
        assert f"{command.name}: {command.help}" in screen
    row = next(line for line in big if "walk_forward:" in line)
    assert "ctrl+w" in row and "shift+right" not in row


def test_global_commands_work_over_the_help(store):
    app = make_app(store)
    app.press("?", "?")  # help closes it
    assert not app.show_help
    app.press("?")
    with pytest.raises(urwid.ExitMainLoop):
        app.press("ctrl q")


def test_every_registry_command_resolves_to_a_handler(store):
    """Each declaration names a real method of the Explorer, one of its features or the ExplorerApp, callable
    with its fixed arguments (a typo'd method name or a wrong argument count fails here)."""
    app = make_app(store)
    assert isinstance(app.explorer, Explorer) and tuple(app.keymap.commands.values()) == COMMANDS
    targets = {**app.explorer.targets(), "app": app}
    for command in COMMANDS:
        method = getattr(targets[command.target], command.method, None)
        assert callable(method), f"{command.name}: no {command.target}.{command.method}"
        inspect.signature(method).bind(*command.args)  # TypeError if the arguments do not fit
        assert callable(app.handler(command.name))


def test_a_misnamed_handler_fails_when_the_app_is_built(store):
    engine = FakeEngine()
    sid = new_session(store, engine, {"cat": " the cat"})
    ex = Explorer(store, sid, config=CONFIG, model_name=engine.loaded.name)
    typo = Command("jump", ("ctrl y",), "jump", target="explorer", method="jmup")
    with pytest.raises(AttributeError, match="jmup"):
        ExplorerApp(ex, Keymap(COMMANDS + (typo,)), worker=InlineWorker())


def test_text_context_lets_letters_type():
    """In a text field only text commands and the ctrl-keys of global commands run;
    a printable key is never a command there (the field types it)."""
    keymap = Keymap((
        Command("quit", ("ctrl q",), "quit", target="app", method="quit", context=GLOBAL),
        Command("help", ("?", "f1"), "help", target="app", method="toggle_help", context=GLOBAL),
        Command("append", ("right", "l"), "append", target="explorer", method="append"),
        Command("submit", ("enter",), "submit", target="app", method="submit", context=TEXT),
        Command("word_left", ("meta b",), "word left", target="app", method="word_left", context=TEXT),
        Command("typed", ("x",), "never", target="app", method="typed", context=TEXT),
    ))
    assert keymap.command_for("ctrl q", TEXT) == "quit"
    assert keymap.command_for("enter", TEXT) == "submit"
    assert keymap.command_for("meta b", TEXT) == "word_left"
    for key in ("?", "l", "x", " ", "\u00e9"):  # printable: the field takes it
        assert keymap.command_for(key, TEXT) is None, key
    assert keymap.command_for("f1", TEXT) is None  # global, but not a ctrl-key
    assert keymap.command_for("right", TEXT) is None  # an explorer command
    # The same keys on the main screen: explorer and global commands, no text commands.
    assert [keymap.command_for(k, EXPLORER) for k in ("ctrl q", "?", "f1", "l", "enter", "x")] == [
        "quit", "help", "help", "append", None, None]
    # Over the help: global commands only.
    assert [keymap.command_for(k, GLOBAL) for k in ("ctrl q", "?", "l", "enter")] == ["quit", "help", None, None]


def test_ctrl_q_quits(store):
    app = make_app(store)
    with pytest.raises(urwid.ExitMainLoop):
        app.press("ctrl q")


def test_keys_can_be_rebound(store):
    config = parse_config({"display": {"tokens_to_show": 6}, "keys": {"append": ["ctrl+n", "Right"], "quit": "x"}})
    app = make_app(store, config=config)
    app.press("ctrl n")
    app.settle()
    assert app.snapshot.branches[1].appended == 1
    with pytest.raises(urwid.ExitMainLoop):
        app.press("x")  # taken from save_branch
    assert app.keymap.keys["save_branch"] == ()


@pytest.mark.parametrize("keys,match", [
    ({"fly": "f"}, "unknown command 'fly'"),
    ({"append": "hyperspace"}, "unknown key name 'hyperspace'"),
    ({"append": "q", "pop": "q"}, "bound to both"),
])
def test_bad_key_config_is_a_clear_error(keys, match):
    with pytest.raises(ConfigError, match=match):
        build_keymap(parse_config({"keys": keys}))


@pytest.mark.parametrize("name,key", [("shift+right", "shift right"), ("ctrl+Q", "ctrl q"), ("L", "L"),
                                      ("space", " "), ("Page Down", "page down"), ("alt-x", "meta x"),
                                      ("shift+l", "L"), ("?", "?")])
def test_key_names_normalize_to_urwid(name, key):
    assert normalize_key(name) == key


def test_palette_has_16_and_256_colour_entries():
    for entry in build_palette():
        assert len(entry) == 6, entry
    screen16 = urwid.display.raw.Screen()
    screen16.register_palette(build_palette())  # urwid validates every colour name
    names = {e[0] for e in build_palette()}
    assert {"prob_0", "prob_7", "ent_0", "inf_7", "heat_3", "na", "selected"} <= names


def test_model_work_never_blocks_the_ui(store):
    """With the real worker thread held busy, cached navigation and views keep working."""
    gate = threading.Event()
    engine = FakeEngine()
    app = make_app(store, engine, worker=Worker())  # the prompts are computed before the gate
    engine.gate = gate
    try:
        app.press("right")  # a new node: the worker blocks on the gate
        assert "\u23f3 computing the next-token distribution" in lines(app)[-1]
        assert "waiting for the model" in "\n".join(lines(app))
        app.press("w")  # switch to a cached branch
        assert app.snapshot.candidates and "cat" in next(b.name for b in app.snapshot.branches if b.focused)
        app.press("e", "down")
        assert app.snapshot.prompt_view == "probability" and app.snapshot.selected == 1
        assert "\u23f3" in lines(app)[-1]  # still busy
    finally:
        gate.set()
    app.settle()
    assert "idle" in lines(app)[-1]
    assert app.explorer.busy is None and engine.forward_passes == 3
    app.worker.shutdown()


def test_a_quick_pass_is_drawn_with_its_key(store):
    """An uncached append whose pass ends within `quick_wait`: the screen the key leaves shows
    the new node's candidates (no "waiting" frame before them), through the real worker."""
    engine = FakeEngine()
    app = make_app(store, engine, worker=Worker())
    app.quick_wait = 60.0  # a deadline, not a pause: the instant fake pass decides, not the machine's load
    try:
        for _ in range(3):
            passes = engine.forward_passes
            app.press("right")  # no settle: what the key itself drew
            assert engine.forward_passes == passes + 1 and not app.snapshot.waiting and app.snapshot.candidates
            assert "waiting for the model" not in "\n".join(lines(app))
    finally:
        app.worker.shutdown()


def test_worker_applies_results_on_the_calling_thread():
    from tokentree.core.worker import Task

    seen = {}
    done = threading.Event()
    worker = Worker(notify=done.set)
    job = Task("t", run=lambda: threading.get_ident(),
               finish=lambda ident: seen.update(run=ident, finish=threading.get_ident()), fail=None)
    worker.submit(job)
    assert done.wait(5)
    assert worker.deliver() == 1
    assert seen["run"] != seen["finish"] == threading.get_ident()
    worker.shutdown()


def test_a_resumed_session_renders_the_same_screen_before_the_model_loads(tokentree_home):
    path = default_db_path()
    store = Store.open(path)
    engine = FakeEngine()
    app = make_app(store, engine)
    app.press("down", "right", "right", "d", "left", "down", "right", "s", "e")
    app.settle()
    before, before_runs = lines(app)[:-1], runs(app)[:-1]  # all but the status bar
    sid, passes = app.explorer.session_id, engine.forward_passes
    store.close()

    store = Store.open(path)  # a new process would do the same: nothing in memory survives
    try:
        ex = Explorer(store, sid, config=CONFIG, model_name=engine.loaded.name)
        resumed = ExplorerApp(ex, build_keymap(CONFIG), worker=InlineWorker())
        resumed.press("e")  # the prompt view is UI state, not an event: choose it again
        resumed.settle()
        assert ex.engine is None and engine.forward_passes == passes
        assert lines(resumed)[:-1] == before  # same prompt, table, branch list and focus
        assert runs(resumed)[:-1] == before_runs  # and the same colours
        assert "(cached)" in lines(resumed)[-1]
    finally:
        store.close()


def test_tree_pane_keeps_branch_names_visible_on_long_segments(store):
    long_prompt = " the cat sat and the dog" * 4  # a root segment far wider than the pane
    app = make_app(store, prompts={"cat": " the cat sat", "dog": long_prompt})
    app.press("d", "right")
    app.settle()
    app.press("right")
    app.settle()
    app.press("w", "t")  # focus back on "dog"; "branch 3" ends two tokens further on
    screen = "\n".join(lines(app))
    assert "[dog*]" in screen and "[branch 3]" in screen, screen


def test_a_key_on_a_stale_screen_says_so_and_refreshes(tokentree_home):
    """Another window moved the branch on: the next key here is refused with one status
    line (nothing written), the screen then shows the other window's change, and the key
    pressed again works."""
    store = Store.open(default_db_path())
    app = make_app(store)
    ex = app.explorer
    with Store.open(store.path) as other_store:
        other = Explorer(other_store, ex.session_id, config=CONFIG, model_name=ex.model_name)
        other.attach_engine(FakeEngine())
        other.snapshot()
        other.append()
        other.run_jobs_inline()
    events = store.events(ex.session_id)
    shown_before = "".join(t.text for t in app.snapshot.prompt)
    app.press("right")
    assert store.events(ex.session_id) == events  # refused: nothing written
    assert any("changed in another window" in line for line in lines(app))  # the status line
    assert "another window" in (app.snapshot.message or "")
    shown_now = "".join(t.text for t in app.snapshot.prompt)
    assert shown_now != shown_before and shown_now.startswith(shown_before)  # the refresh
    app.press("right")
    app.settle()
    assert len(store.events(ex.session_id)) == len(events) + 1
    store.close()


def test_prefetch_through_the_app_makes_the_next_append_a_cache_hit(store):
    engine = FakeEngine()
    app = make_app(store, engine, worker=Worker(), prefetch=2)
    try:
        app.settle()  # the prompt, then the two top candidates' children, in the background
        passes = engine.forward_passes
        app.press("right")
        app.settle()
        assert engine.forward_passes == passes + 2  # nothing for the append; the new tip's prefetch
        assert "from cache" in lines(app)[-1]
    finally:
        app.worker.shutdown()


def test_a_fill_never_says_no_distribution_for_a_token_its_parent_scored(store):
    """Mid-fill, the new tip's own pass is still running; its probability is known from its
    parent's cached top-K, and the prompt pane shows it (never "no distribution before it")."""
    app = make_app(store)
    app.press("f")  # the fill appends the top candidate; its node's output is not delivered yet
    assert app.explorer.busy and app.explorer.busy.startswith("filling")
    info = next(line for line in lines(app) if "last token p" in line)
    assert "no distribution" not in info and "%" in info and "rank 1" in info, info
    app.settle()
    assert "filled" in app.explorer.message


def test_the_status_bar_says_request_on_a_server(store):
    from tokentree.outputs import Capabilities

    local = make_app(store)
    local.press("right")
    local.settle()
    assert any("forward pass" in line for line in lines(local))
    remote = FakeEngine(FakeLoaded(fingerprint="fake-model|server"))  # its own cache: computed afresh
    remote.capabilities = Capabilities(remote=True, influence=False, layer_lens=False)
    app = make_app(store, engine=remote)
    app.press("right")
    app.settle()
    screen = "\n".join(lines(app))
    assert "request " in screen and " ms" in screen and "forward pass" not in screen

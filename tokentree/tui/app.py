"""The urwid application: layout, key dispatch through the keymap, the model worker loop.

`ExplorerApp` is the whole screen as a widget tree and can be driven without a terminal
(tests press keys and render it). `run_tui` puts it on the real terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable

import urwid

from tokentree.commands import PICKER
from tokentree.errors import TokentreeError
from tokentree.logs import setup_logging
from tokentree.tui.compare import BranchPicker, DiffView
from tokentree.tui.keymap import EXPLORER, GLOBAL, TEXT, Keymap, build_keymap, display_key
from tokentree.tui.palette import build_palette, pick_colors
from tokentree.tui.branch_list import BranchList
from tokentree.tui.candidate_table import CandidateTable
from tokentree.tui.help import HelpOverlay, HelpView
from tokentree.tui.interrupts import Interrupted, ctrl_c_stops
from tokentree.tui.layout import FitColumns, FitPile, prompt_height
from tokentree.tui.prompt_pane import PromptPane
from tokentree.tui.status_bar import StatusBar
from tokentree.tui.text_field import LineField
from tokentree.tui.tree_pane import TreePane
from tokentree.core.worker import Worker

log = logging.getLogger(__name__)

FOLLOW_SECONDS = 0.5  # how often the screen checks for changes made by another window
# A key's own model work (an uncached append's pass) that ends within this is drawn with the
# key: one frame with the result, not a "waiting" frame whose drawing slows the pass, then it.
QUICK_WAIT = 0.1


class KeyRouter(urwid.WidgetWrap):
    """The top widget: every key goes to the keymap first; the panes never see keys."""

    def __init__(self, app: "ExplorerApp", child: urwid.Widget) -> None:
        self.app = app
        super().__init__(child)

    def selectable(self) -> bool:
        return True

    def keypress(self, size, key):
        return None if self.app.handle_key(key) else key


class ExplorerApp:
    def __init__(self, explorer, keymap: Keymap, *, worker=None, prefetch_worker=None) -> None:
        """`worker`: a Worker or InlineWorker; None holds model work until `set_worker`.
        `prefetch_worker`: a pool for a server's speculative requests (None: `worker`)."""
        self.explorer = explorer
        self.keymap = keymap
        self.worker = worker
        self.prefetch_worker = prefetch_worker
        self.show_tree = False
        self.show_help = False

        self.draw: Callable[[], None] | None = None  # draws the screen now (the terminal's main loop)
        self.quick_wait = QUICK_WAIT
        self.prompt = PromptPane()
        self.table = CandidateTable()
        self.branches = BranchList()
        self.tree = TreePane()
        self.status = StatusBar(f"{keymap.hint('help')}: help  {keymap.hint('quit')}: quit",
                                cancel_hint=keymap.hint("cancel"))
        # A text field (rename, search) while one is open: keys go to it (the TEXT context).
        self.field: LineField | None = None
        self.field_kind: str | None = None
        # The compare picker (c) while it is open, then the diff view of the pair it chose.
        self.picker: BranchPicker | None = None
        self.diff_pair: tuple[int, int] | None = None
        self.diffview = DiffView()
        # Pane sizes follow their content when drawn (see the _plan_* methods).
        self.right = FitPile([self.branches], self._plan_right)
        self.columns = FitColumns([self.table, self.right], self._plan_columns)
        self.body = FitPile([self.prompt, self.columns], self._plan_body)
        self.frame = urwid.Frame(self.body, footer=self.status)
        self.help = HelpView(keymap.help_rows())
        self.overlay = HelpOverlay(self.help, self.frame, "center", ("relative", 80), "middle", ("relative", 80))
        self.root = KeyRouter(self, self.frame)
        for name in keymap.commands:  # a handler the registry misnames fails now, not on its key
            self.handler(name)
        self.pump()
        self.refresh()

    # ---------------------------------------------------------------- keys
    def handle_key(self, key: str) -> bool:
        if self.show_help:
            # Over the help only global commands run (help closes it, quit quits); the
            # scroll keys move it; any other key just closes it.
            command = self.keymap.command_for(key, GLOBAL)
            if command is not None:
                self.handler(command)()
            elif key in HelpView.SCROLL_KEYS:
                self.help.scroll(key)
            else:
                self.toggle_help()
            return True
        if self.picker is not None or self.diff_pair is not None:
            return self._picker_key(key)
        if self.field is not None:
            # A text field is open: its commands (enter, esc) and the global ctrl-keys run;
            # every other key is the field's (letters type, never run commands).
            command = self.keymap.command_for(key, TEXT)
            if command is not None:
                self.run_command(command)
            else:
                self.field.keypress((self.FIELD_COLS,), key)  # a key it cannot use is dropped
            return True
        command = self.keymap.command_for(key, EXPLORER)
        if command is None:
            # No key is silently dropped: say where the keys are.
            self.explorer.message = (f"{display_key(key)} does nothing here: press {self.keymap.hint('help')} "
                                     f"for help, {self.keymap.hint('quit')} to quit")
            self.refresh()
            return True
        self.run_command(command, key)
        return True

    def handler(self, command: str) -> Callable[[], object]:
        """The registry's handler for a command, bound to this app, its explorer or a feature."""
        return self.keymap.commands[command].handler({**self.explorer.targets(), "app": self})

    def run_command(self, command: str, key: str | None = None) -> None:
        running = self.explorer.in_flight  # work from before the key (a model load) is not waited for
        self.explorer.message = None
        try:
            done = self.handler(command)()
        except TokentreeError as exc:  # e.g. a store refusal: say it, keep going
            self.explorer.message = str(exc)
        else:
            if done is False and self.explorer.message is None:  # e.g. esc with nothing to cancel
                shown = display_key(key) if key else command
                self.explorer.message = (f"{shown}: nothing to {command.replace('_', ' ')} "
                                         f"(press {self.keymap.hint('help')} for help)")
        self.pump(speculate=False)
        self._await_quick_work(running)
        self.refresh()
        self.pump(work=False, draw_first=True)  # the key's jobs are taken: only prefetches are left

    def _await_quick_work(self, running) -> None:
        """Give the key's own model work up to `quick_wait` s to finish before the screen is
        drawn (a threaded worker only; the inline one never waits). Only that task: a fill's
        next tokens are drawn as they come, and work `running` before the key is not waited for."""
        task = self.explorer.in_flight
        if self.worker is None or task is None or task is running:
            return
        deadline = time.monotonic() + self.quick_wait
        while self.explorer.in_flight is task and (left := deadline - time.monotonic()) > 0:
            if not self.worker.wait(left):
                return
            self.worker.deliver()
        self.pump(speculate=False)

    def press(self, *keys: str) -> None:
        """Feed keys as the terminal would (tests)."""
        for key in keys:
            if self.root.keypress((80, 24), key) is not None:
                self.explorer.message = f"unbound key: {key}"

    # ---------------------------------------------------------------- compare (c)
    def _picker_key(self, key: str) -> bool:
        """A picker or the diff view is open: its commands and the global ones run; the
        diff view also scrolls with page up/down, home, end; other keys say how to close."""
        command = self.keymap.command_for(key, PICKER)
        if command is not None:
            self.run_command(command, key)
        elif self.diff_pair is not None and key in DiffView.SCROLL_KEYS:
            self.diffview.scroll(key)
        else:
            what = "picker" if self.picker is not None else "diff view"
            self.explorer.message = (f"{display_key(key)} does nothing here: "
                                     f"{self.keymap.hint('pick_cancel')} closes the {what}")
            self.refresh()
        return True

    def open_compare(self) -> None:
        """Pick the branch to compare the focused one with, in the branch pane."""
        choices = self.explorer.features.compare.diff_choices()
        if not choices:
            self.explorer.message = (f"only one branch: nothing to compare it with "
                                     f"({self.keymap.hint('duplicate_branch')} duplicates it)")
            return
        self.picker = BranchPicker(self.explorer.features.branches.focused_branch_name, choices)
        self.status.field_hint = (f"{self._first_key('pick_up')} {self._first_key('pick_down')}: pick  "
                                  f"{self._first_key('pick_commit')}: compare  "
                                  f"{self._first_key('pick_cancel')}: cancel")
        self._show_pick()

    def _first_key(self, command: str) -> str:
        keys = self.keymap.keys.get(command, ())
        return display_key(keys[0]) if keys else "unbound"

    def _show_pick(self) -> None:
        self.branches.set_picking(self.picker.chosen[0])
        self.explorer.message = f"compare {self.picker.name} with {self.picker.chosen[1]}?"

    def pick_move(self, step: int) -> None:
        if self.picker is not None:
            self.picker.move(step)
            self._show_pick()
        elif self.diff_pair is not None:
            self.diffview.scroll("up" if step < 0 else "down")

    def pick_commit(self) -> None:
        if self.picker is None:
            self._close_diff()
            return
        chosen = self.picker.chosen[0]
        focused = next((b.id for b in self.snapshot.branches if b.focused), None)
        self._close_picker()
        if focused is None or focused == chosen:
            self.explorer.message = "the branches changed: press c again"
            return
        self.diff_pair = (focused, chosen)
        self.frame.body = self.diffview
        self.status.field_hint = (f"{self._first_key('pick_up')} {self._first_key('pick_down')} pgup pgdn: "
                                  f"scroll  {self._first_key('pick_cancel')}: close")

    def pick_cancel(self) -> None:
        if self.picker is not None:
            self._close_picker()
        else:
            self._close_diff()

    def _close_picker(self) -> None:
        self.picker = None
        self.branches.set_picking(None)
        self.status.field_hint = None

    def _close_diff(self) -> None:
        self.diff_pair = None
        self.frame.body = self.body
        self.status.field_hint = None

    # ---------------------------------------------------------------- text fields
    FIELD_COLS = 1000  # the width a field's keypress assumes (one logical line; home/end are ours)

    def open_rename(self) -> None:
        """Rename: a field in place of the focused branch's row, holding its name."""
        self._open_field("rename", LineField("name", self.explorer.features.branches.focused_branch_name))
        self.branches.editor = self.field
        self.body.focus_position = 1  # focus path to the field: the terminal cursor sits in it
        self.columns.focus_position = 1
        self.right.focus_position = 0

    def open_search(self) -> None:
        """Search: a field in the footer, in place of the message line."""
        self._open_field("search", LineField("search"))
        self.status.set_editor(self.field)
        self.frame.focus_position = "footer"

    def open_message(self) -> None:
        """A chat turn: a field in the footer for the next user message."""
        if not self.explorer.features.chat.active:
            self.explorer.features.chat.add_user_turn("")  # says what m is for
            return
        self._open_field("message", LineField("user"))
        self.status.set_editor(self.field)
        self.frame.focus_position = "footer"

    def _open_field(self, kind: str, field: LineField) -> None:
        self.field, self.field_kind = field, kind
        # The field's keys lead the status line (the rest of it may be clipped).
        self.status.field_hint = (f"{self.keymap.hint('text_commit')}: {kind}  "
                                  f"{self.keymap.hint('text_cancel')}: cancel")

    def _close_field(self) -> tuple[str | None, str]:
        kind, text = self.field_kind, self.field.edit_text if self.field is not None else ""
        self.field = self.field_kind = None
        self.branches.editor = None
        self.status.set_editor(None)
        self.status.field_hint = None
        self.frame.focus_position = "body"
        return kind, text

    def commit_text(self) -> None:
        """Enter in a field: close it, then rename or search (an error shows in the status line)."""
        kind, text = self._close_field()
        if kind == "rename":
            self.explorer.features.branches.rename_branch(text)
        elif kind == "search":
            self.explorer.features.search.search(text)
        elif kind == "message":
            self.explorer.features.chat.add_user_turn(text)

    def cancel_text(self) -> None:
        """Esc in a field: close it; nothing is recorded."""
        self._close_field()

    def quit(self) -> None:
        raise urwid.ExitMainLoop()

    def page(self, direction: int) -> None:
        """Move the table's selection by the rows it shows (page up / page down)."""
        self.explorer.cursor(direction * max(1, self.table.page_rows))

    def toggle_tree(self) -> None:
        self.show_tree = not self.show_tree
        parts = [(self.branches, ("weight", 1))]
        if self.show_tree:
            parts.append((self.tree, ("weight", 1)))
        self.right.contents[:] = parts
        self.right.focus_position = 0

    # ---------------------------------------------------------------- layout
    PROMPT_SHARE = 0.4  # the prompt pane grows with its text up to this share of the rows

    def _plan_body(self, size):
        """The prompt pane as tall as its text (up to PROMPT_SHARE), the rest to the table."""
        cols, rows = size
        self.prompt.fit_screen(cols * prompt_height(rows, rows, self.PROMPT_SHARE))  # the most it shows
        return [("given", prompt_height(self.prompt.rows_needed(cols), rows, self.PROMPT_SHARE)), ("weight", 1)]

    def _plan_columns(self, size):
        """The table as wide as its columns want; the branch list (and tree) the rest, never
        less than what shows all of its columns (the table keeps 3/5 of a narrower screen)."""
        cols = size[0]
        right = max(cols - self.table.want_width(), min(BranchList.MIN_WIDTH, cols * 2 // 5))
        return [("given", cols - right, False), ("weight", 1, False)]

    def _plan_right(self, size):
        """With the tree: the branch list as tall as its rows, at most a third; the tree the rest."""
        if len(self.right.contents) == 1:
            return [("weight", 1)]
        rows = size[1]
        return [("given", min(self.branches.rows_needed(), max(5, rows // 3))), ("weight", 1)]

    def toggle_help(self) -> None:
        self.show_help = not self.show_help
        self.root._w = self.overlay if self.show_help else self.frame

    # ---------------------------------------------------------------- model work
    def set_worker(self, worker) -> None:
        self.worker = worker
        self.pump()
        self.refresh()

    def pump(self, *, work: bool = True, speculate: bool = True, draw_first: bool = False) -> None:
        """Hand the explorer's next model job to the worker (one at a time; `work`), then, with
        `speculate`, the prefetches; `draw_first`: the screen is drawn before the first
        prefetch starts (a key's screen first: speculative passes would slow its drawing)."""
        if self.worker is None:
            return
        while work and (job := self.explorer.take_job()) is not None:
            self.worker.submit(job)
        while speculate and (job := self.explorer.take_prefetch()) is not None:
            if draw_first and self.draw is not None:
                self.draw()
                draw_first = False
            # A server's prefetches go to their own pool, beside the keys' own work; a local
            # model's one at a time on the model thread, taken only when it is idle.
            pool = self.prefetch_worker if job.beside and self.prefetch_worker else self.worker
            pool.submit(job)

    def on_results(self) -> None:
        """UI thread: apply finished jobs, start the next, redraw."""
        delivered = self.worker.deliver() if self.worker is not None else 0
        if self.prefetch_worker is not None:
            delivered += self.prefetch_worker.deliver()
        if delivered:
            self.pump(speculate=False)
            self.refresh()
            self.pump(work=False, draw_first=True)

    def settle(self, timeout: float = 60.0) -> None:
        """Run model work until idle (tests). Works with the inline and the threaded worker."""
        deadline = time.monotonic() + timeout
        workers = [w for w in (self.worker, self.prefetch_worker) if w is not None]
        while True:
            for w in workers:
                w.deliver()
            self.pump()
            if all(w.pending == 0 for w in workers) and self.explorer.busy is None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("model work did not finish")
            time.sleep(0.005)
        self.refresh()

    # ---------------------------------------------------------------- drawing
    def refresh(self) -> None:
        if self.diff_pair is not None:  # numbers fill in as the model computes them
            diff = self.explorer.features.compare.branch_diff(*self.diff_pair)
            if diff is None:
                self._close_diff()
                self.explorer.message = "a compared branch was removed: the diff is closed"
            else:
                self.diffview.update(diff)
        snap = self.explorer.snapshot(with_tree=self.show_tree)
        self.prompt.update(snap)
        self.table.update(snap)
        self.branches.update(snap)
        if self.show_tree:
            self.tree.update(snap.tree)
        self.status.update(snap)
        self.snapshot = snap

    def render(self, size=(100, 30)):
        return self.root.render(size, focus=True)


@contextlib.contextmanager
def _stderr_to_log(path):
    """Send fd 2 to the log file while the screen is up: libraries must not draw on it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:
        yield
        return
    target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def run_tui(explorer, config, *, load_engine: Callable[[], object] | None = None) -> int:
    """Run the explorer on the terminal until ctrl+q. Returns the exit code.

    With `load_engine`, the model loads in the worker while the cached tree is already shown.
    The terminal is restored on every exit; an unexpected error's traceback goes to the log file.
    """
    keymap = build_keymap(config)  # a bad [keys] table fails before the screen starts
    log_file = setup_logging()
    screen = urwid.display.raw.Screen()
    screen.set_terminal_properties(colors=pick_colors(os.environ))
    app = ExplorerApp(explorer, keymap)
    loop = urwid.MainLoop(app.root, build_palette(), screen=screen, handle_mouse=False)
    app.draw = loop.draw_screen

    def wake(data: bytes) -> bool:
        if not data:
            return False
        app.on_results()
        return True

    wake_fd = loop.watch_pipe(wake)
    worker = Worker(notify=lambda: os.write(wake_fd, b"!"))
    # Threads for a server's prefetch requests (idle on a local model: it runs one at a time).
    app.prefetch_worker = Worker(notify=lambda: os.write(wake_fd, b"!"), threads=max(1, config.explore.prefetch),
                                 name="tokentree-prefetch")
    if load_engine is not None:
        worker.submit(explorer.loading_job(load_engine))
    app.set_worker(worker)
    def follow_other_windows(loop_, _data) -> None:
        # Another tokentree on this session: show its changes, so keys here act on what is
        # on screen (a command built from a stale screen is refused by the store).
        if app.explorer.changed_elsewhere() or app.explorer.retry_due():
            app.pump()
            app.refresh()
        loop_.set_alarm_in(FOLLOW_SECONDS, follow_other_windows)

    loop.set_alarm_in(FOLLOW_SECONDS, follow_other_windows)
    # Let ctrl+q / ctrl+s reach the app instead of the tty's XON/XOFF (restored on exit).
    loop.set_alarm_in(0, lambda *_: screen.tty_signal_keys(start="undefined", stop="undefined"))

    failure: BaseException | None = None
    code = 0
    with _stderr_to_log(log_file):
        try:
            with ctrl_c_stops(loop):
                loop.run()
        except (Interrupted, KeyboardInterrupt):  # KeyboardInterrupt: before the handler is set
            code = 130
        except Exception as exc:  # noqa: BLE001 -- restore the terminal, log, one line
            log.exception("the explorer stopped on an error")
            failure, code = exc, 1
        finally:
            worker.shutdown()
            app.prefetch_worker.shutdown()
            with contextlib.suppress(OSError):
                os.close(wake_fd)
    if failure is not None:
        print(f"tokentree: internal error: {failure!r} (details in {log_file})", file=sys.stderr)
    elif code == 130:
        print("tokentree: interrupted (the session is saved)", file=sys.stderr)
    return code

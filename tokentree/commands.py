"""The command registry: every command the screen runs is declared here, once.

A declaration names the command (what `[keys]` in config.toml and the help call it), its
default keys (urwid's key names), its help text, the context it works in, and its handler as
a target object ("explorer": the Explorer core; "app": the urwid ExplorerApp; a feature's
name: that feature), a method name and
fixed arguments. The keymap (tui/keymap.py), the `[keys]` validation, the help overlay and
dispatch (ExplorerApp.run_command) all read this table (mitmproxy's console is the model).

Urwid-free on purpose: the launcher validates `[keys]` against it before the model loads and
before urwid is imported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# Contexts: where a command's keys work.
GLOBAL = "global"  # everywhere, also over the help overlay
EXPLORER = "explorer"  # the main screen
TEXT = "text"  # a text field: printable keys type; text commands and global ctrl-keys run
PICKER = "picker"  # a picker or a view over the screen (compare): its commands and global ones run
CONTEXTS = (GLOBAL, EXPLORER, TEXT, PICKER)

# Targets: the object whose method handles the command: the explorer core, the urwid app,
# or a feature by its name (tokentree/features/, each a `Feature.name`).
TARGETS = ("explorer", "app", "branches", "fill", "sample", "forks", "search", "sampler", "constraint", "compare",
           "views", "chat")


@dataclass(frozen=True)
class Command:
    name: str
    keys: tuple[str, ...]  # defaults, in urwid's key names
    help: str
    target: str  # one of TARGETS
    method: str
    args: tuple = ()
    context: str = EXPLORER

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"command {self.name}: unknown target {self.target!r} (targets: {TARGETS})")
        if self.context not in CONTEXTS:
            raise ValueError(f"command {self.name}: unknown context {self.context!r} (contexts: {CONTEXTS})")
        if not self.method.isidentifier():
            raise ValueError(f"command {self.name}: bad method name {self.method!r}")

    def handler(self, targets: Mapping[str, object]) -> Callable[[], object]:
        """The bound handler, e.g. `explorer.cursor(-1)` as a call without arguments."""
        method = getattr(targets[self.target], self.method)
        return functools.partial(method, *self.args) if self.args else method


COMMANDS: tuple[Command, ...] = (
    Command("cursor_up", ("up", "k"), "move the selection up",
            target="explorer", method="cursor", args=(-1,)),
    Command("cursor_down", ("down", "j"), "move the selection down",
            target="explorer", method="cursor", args=(1,)),
    Command("page_up", ("page up",), "move the selection up by the rows the table shows",
            target="app", method="page", args=(-1,)),
    Command("page_down", ("page down",), "move the selection down by the rows the table shows",
            target="app", method="page", args=(1,)),
    Command("first_row", ("home",), "select the first row of the table",
            target="explorer", method="cursor", args=(-10**6,)),
    Command("last_row", ("end",), "select the last row of the table",
            target="explorer", method="cursor", args=(10**6,)),
    Command("append", ("right", "l"), "append the selected token (follow the child if explored)",
            target="explorer", method="append"),
    Command("pop", ("left", "h"), "pop the last token (it stays selected: right re-appends it)",
            target="explorer", method="pop"),
    Command("walk_forward", ("shift right", "L"), "walk forward along the explored path to its leaf",
            target="explorer", method="walk_forward"),
    Command("prev_branch", ("w",), "previous branch",
            target="branches", method="switch_branch", args=(-1,)),
    Command("next_branch", ("s",), "next branch",
            target="branches", method="switch_branch", args=(1,)),
    Command("duplicate_branch", ("d",), "duplicate the current branch and focus it",
            target="branches", method="duplicate_branch"),
    Command("remove_branch", ("a",), "remove the current branch from the list (nodes stay)",
            target="branches", method="remove_branch"),
    Command("undo", ("u",), "undo the last change (a run of the same key, e.g. held right or left, "
            "is one change)",
            target="explorer", method="undo"),
    Command("cycle_view", ("e",), "prompt view: plain, probability, entropy, attention influence",
            target="views", method="cycle_prompt_view"),
    Command("cycle_layer_view", ("p",), "layer view: off, layer probabilities, layer-normalized",
            target="views", method="cycle_layer_view"),
    Command("toggle_tree", ("t",), "show or hide the tree overview",
            target="app", method="toggle_tree"),
    Command("save_branch", ("x",), "save the branch text under the saved-prompts dir",
            target="branches", method="save_branch"),
    Command("reset_branch", ("ctrl r",), "reset the branch to its root prompt",
            target="branches", method="reset_branch"),
    Command("fill", ("f",), "fill: append the top candidate repeatedly (one undoable step)",
            target="fill", method="start"),
    Command("sample", ("g",), "sample continuations with the [sampling] settings, each a new branch",
            target="sample", method="start"),
    Command("next_fork", ("]",), "next fork point on the branch (high entropy or a tree fork)",
            target="forks", method="fork_point", args=(1,)),
    Command("prev_fork", ("[",), "previous fork point on the branch",
            target="forks", method="fork_point", args=(-1,)),
    Command("next_candidate", (".",), "replace the last token with the next candidate",
            target="forks", method="counterfactual", args=(1,)),
    Command("prev_candidate", (",",), "replace the last token with the previous candidate",
            target="forks", method="counterfactual", args=(-1,)),
    Command("rename_branch", ("n",), "rename the current branch (type the name, enter)",
            target="app", method="open_rename"),
    Command("search", ("/",), "search branches and explored nodes (type, enter)",
            target="app", method="open_search"),
    Command("search_next", ("ctrl n",), "next search match",
            target="search", method="step", args=(1,)),
    Command("search_prev", ("ctrl p",), "previous search match",
            target="search", method="step", args=(-1,)),
    Command("toggle_sampler", ("v",), "sampler column: candidates that survive the sampling settings",
            target="sampler", method="toggle"),
    Command("cancel", ("esc",), "cancel a running fill",
            target="explorer", method="cancel"),
    Command("toggle_constraint", ("r",), "regex constraint on from here, or off: only tokens that keep a match",
            target="constraint", method="toggle"),
    Command("cycle_constraint", ("R",), "next regex constraint (prompts/structs, [structs]), in place of one on",
            target="constraint", method="cycle"),
    Command("add_turn", ("m",), "chat: type the next user message (enter): the assistant answers after it",
            target="app", method="open_message"),
    Command("fold_turns", ("z",), "chat: fold the turns before the last user message, or show them",
            target="chat", method="toggle_fold"),
    Command("compare", ("c",), "compare the branch with another, token by token (pick it, enter)",
            target="app", method="open_compare"),
    Command("pick_up", ("up", "k", "w"), "picker: previous item; a view: scroll up",
            target="app", method="pick_move", args=(-1,), context=PICKER),
    Command("pick_down", ("down", "j", "s"), "picker: next item; a view: scroll down",
            target="app", method="pick_move", args=(1,), context=PICKER),
    Command("pick_commit", ("enter",), "picker: choose the item; a view: close it",
            target="app", method="pick_commit", context=PICKER),
    Command("pick_cancel", ("esc",), "picker or view: close it",
            target="app", method="pick_cancel", context=PICKER),
    Command("text_commit", ("enter",), "text field: commit",
            target="app", method="commit_text", context=TEXT),
    Command("text_cancel", ("esc",), "text field: cancel",
            target="app", method="cancel_text", context=TEXT),
    Command("help", ("?",), "show or hide this help",
            target="app", method="toggle_help", context=GLOBAL),
    Command("quit", ("ctrl q",), "quit (everything is already saved)",
            target="app", method="quit", context=GLOBAL),
)


def contexts_overlap(a: str, b: str) -> bool:
    """Two commands' keys can clash: same context, or one is global (works everywhere).

    An explorer command and a text command may share a key (esc: cancel a fill on the main
    screen, close the field in a text field)."""
    return a == b or GLOBAL in (a, b)


def check_registry(commands: Sequence[Command]) -> None:
    """Command names are unique (a registry is a table, not a list of wishes), and no default
    key runs two commands in one context."""
    seen: dict[str, Command] = {}
    by_key: dict[str, list[Command]] = {}
    for command in commands:
        if command.name in seen:
            raise ValueError(f"command {command.name} is declared twice")
        seen[command.name] = command
        for key in command.keys:
            for other in by_key.get(key, ()):
                if contexts_overlap(other.context, command.context):
                    raise ValueError(f"key {key!r} is the default of both {other.name} and {command.name}")
            by_key.setdefault(key, []).append(command)


check_registry(COMMANDS)

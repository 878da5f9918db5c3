"""Named commands and the keys bound to them (mitmproxy style).

Every key press goes through the keymap: key -> command name -> handler. `[keys]` in
config.toml replaces a command's default keys; an unknown command or key name is a
ConfigError before the screen starts. The help overlay is generated from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokentree.errors import ConfigError

GLOBAL = "global"  # works everywhere, also over the help overlay
EXPLORER = "explorer"  # the main screen


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    keys: tuple[str, ...]  # defaults, in urwid's key names
    context: str = EXPLORER


COMMANDS: tuple[Command, ...] = (
    Command("cursor_up", "move the selection up", ("up", "k")),
    Command("cursor_down", "move the selection down", ("down", "j")),
    Command("append", "append the selected token (follow the child if explored)", ("right", "l")),
    Command("pop", "pop the last token (it stays selected: right re-appends it)", ("left", "h")),
    Command("walk_forward", "walk forward along the explored path to its leaf", ("shift right", "L")),
    Command("prev_branch", "previous branch", ("w",)),
    Command("next_branch", "next branch", ("s",)),
    Command("duplicate_branch", "duplicate the current branch and focus it", ("d",)),
    Command("remove_branch", "remove the current branch from the list (nodes stay)", ("a",)),
    Command("undo", "undo the last change", ("u",)),
    Command("cycle_view", "prompt view: plain, probability, entropy, attention influence", ("e",)),
    Command("cycle_layer_view", "layer view: off, layer probabilities, layer-normalized", ("p",)),
    Command("toggle_tree", "show or hide the tree overview", ("t",)),
    Command("save_branch", "save the branch text under the saved-prompts dir", ("x",)),
    Command("reset_branch", "reset the branch to its root prompt", ("ctrl r",)),
    Command("help", "show or hide this help", ("?",), GLOBAL),
    Command("quit", "quit (everything is already saved)", ("ctrl q",), GLOBAL),
)

_NAMED = {
    "up", "down", "left", "right", "home", "end", "page up", "page down", "insert", "delete",
    "backspace", "enter", "esc", "tab", " ", *(f"f{i}" for i in range(1, 13)),
}
_ALIASES = {
    "space": " ", "escape": "esc", "return": "enter", "del": "delete", "ins": "insert",
    "pgup": "page up", "pageup": "page up", "page_up": "page up", "pgdn": "page down",
    "pagedown": "page down", "page_down": "page down", "bs": "backspace",
}
_MODIFIERS = {"shift": "shift", "ctrl": "ctrl", "control": "ctrl", "meta": "meta", "alt": "meta"}


def normalize_key(name: str) -> str:
    """A config key name ('ctrl+q', 'Shift-Right', 'L', 'space') in urwid's form ('ctrl q').

    Raises ValueError for a name urwid never produces.
    """
    if len(name) == 1:
        if not name.isprintable():
            raise ValueError(name)
        return name
    mods: set[str] = set()
    rest = name.strip()
    while m := re.match(r"(shift|ctrl|control|meta|alt)[ +-](?=.)", rest, re.IGNORECASE):
        mods.add(_MODIFIERS[m.group(1).lower()])
        rest = rest[m.end():]
    if len(rest) == 1:
        base = rest
    else:
        base = rest.lower().replace("+", " ").replace("-", " ")
        base = _ALIASES.get(base.replace(" ", ""), _ALIASES.get(base, base))
        if base not in _NAMED:
            raise ValueError(name)
    if len(base) == 1 and base != " ":
        if "shift" in mods and base.isalpha():
            mods.discard("shift")  # urwid reports shift+l as 'L'
            base = base.upper()
        if "ctrl" in mods or "meta" in mods:
            base = base.lower()
    if not mods:
        return base
    # urwid's order of modifiers: shift, meta, ctrl.
    return " ".join([m for m in ("shift", "meta", "ctrl") if m in mods] + [base])


def display_key(key: str) -> str:
    """How the help shows a key: 'ctrl q' -> 'ctrl+q', ' ' -> 'space'."""
    if key == " ":
        return "space"
    parts = key.split(" ")
    if parts[0] in ("shift", "meta", "ctrl") and len(parts) > 1:
        mods, base = [], parts
        while base and base[0] in ("shift", "meta", "ctrl"):
            mods.append(base.pop(0))
        return "+".join(mods + [" ".join(base)])
    return key


class Keymap:
    def __init__(self, commands: Sequence[Command] = COMMANDS,
                 overrides: Mapping[str, Sequence[str]] | None = None) -> None:
        self.commands = {c.name: c for c in commands}
        keys = {c.name: list(c.keys) for c in commands}
        overridden: dict[str, str] = {}  # key -> command the user bound it to
        for name, names in (overrides or {}).items():
            if name not in self.commands:
                known = ", ".join(self.commands)
                raise ConfigError(f"[keys] unknown command {name!r} (commands: {known})")
            bound = []
            for raw in names:
                try:
                    key = normalize_key(raw)
                except ValueError:
                    raise ConfigError(f"[keys] {name}: unknown key name {raw!r}") from None
                if key in overridden and overridden[key] != name:
                    raise ConfigError(f"[keys] key {raw!r} is bound to both {overridden[key]} and {name}")
                overridden[key] = name
                bound.append(key)
            keys[name] = bound
        # A key the user bound elsewhere leaves its default command.
        for name, bound in keys.items():
            keys[name] = [k for k in bound if overridden.get(k, name) == name]
        self.keys = {name: tuple(dict.fromkeys(bound)) for name, bound in keys.items()}
        self._by_key: dict[str, str] = {}
        for name, bound in self.keys.items():
            for key in bound:
                self._by_key[key] = name

    def command_for(self, key: str, context: str = EXPLORER) -> str | None:
        name = self._by_key.get(key)
        if name is None:
            return None
        command_context = self.commands[name].context
        return name if command_context in (GLOBAL, context) else None

    def hint(self, name: str) -> str:
        return "/".join(display_key(k) for k in self.keys.get(name, ())) or "unbound"

    def help_rows(self) -> list[tuple[str, str, str]]:
        """(keys, command, help) for every command, in registry order."""
        return [(self.hint(c.name), c.name, c.help) for c in self.commands.values()]


def build_keymap(config) -> Keymap:
    """The keymap for a Config; raises ConfigError for a bad [keys] table."""
    return Keymap(COMMANDS, config.keys)

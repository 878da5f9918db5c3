"""The keys bound to the registry's commands (mitmproxy style).

Every key press goes through the keymap: key -> command name -> the handler the registry
(tokentree/commands.py) declares. `[keys]` in config.toml replaces a command's default keys;
an unknown command or key name is a ConfigError before the screen starts. The help overlay is
generated from here. Urwid-free: the launcher builds a keymap before urwid is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tokentree.commands import COMMANDS, EXPLORER, GLOBAL, TEXT, Command, check_registry, contexts_overlap
from tokentree.errors import ConfigError

__all__ = ["COMMANDS", "EXPLORER", "GLOBAL", "TEXT", "Command", "Keymap", "build_keymap",
           "display_key", "is_printable", "normalize_key"]

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


def is_printable(key: str) -> bool:
    """A key that types a character (urwid reports those as the character itself)."""
    return len(key) == 1 and key.isprintable()


def _is_ctrl(key: str) -> bool:
    return "ctrl" in key.split(" ")[:-1]


class Keymap:
    def __init__(self, commands: Sequence[Command] = COMMANDS,
                 overrides: Mapping[str, Sequence[str]] | None = None) -> None:
        check_registry(commands)
        self.commands = {c.name: c for c in commands}
        context = {c.name: c.context for c in commands}
        keys = {c.name: list(c.keys) for c in commands}
        overridden: dict[str, list[str]] = {}  # key -> the commands the user bound it to
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
                if context[name] == TEXT and is_printable(key):
                    raise ConfigError(f"[keys] {name}: {raw!r} types a character in a text field; "
                                      "bind a named or ctrl key")
                for other in overridden.get(key, ()):
                    if other != name and contexts_overlap(context[other], context[name]):
                        raise ConfigError(f"[keys] key {raw!r} is bound to both {other} and {name}")
                overridden.setdefault(key, []).append(name)
                bound.append(key)
            keys[name] = bound
        # A key the user bound to another command of an overlapping context leaves its
        # default command (esc can stay a text command when a main-screen command takes it).
        for name, bound in keys.items():
            keys[name] = [k for k in bound
                          if all(other == name or not contexts_overlap(context[other], context[name])
                                 for other in overridden.get(k, ()))]
        self.keys = {name: tuple(dict.fromkeys(bound)) for name, bound in keys.items()}
        self._by_key: dict[str, list[str]] = {}
        for name, bound in self.keys.items():
            for key in bound:
                self._by_key.setdefault(key, []).append(name)

    def command_for(self, key: str, context: str = EXPLORER) -> str | None:
        """The command a key runs in a context, or None (the key is not a command there).

        A command works in its own context; a global one works in every context, except that
        in a text field (TEXT) only its ctrl-keys do. In a text field a printable key is never
        a command, so the field can type it. Asking for GLOBAL gives the global commands only
        (the help overlay). One key may name an explorer and a text command (esc).
        """
        if context == TEXT and is_printable(key):
            return None
        for name in self._by_key.get(key, ()):
            command_context = self.commands[name].context
            if context == TEXT and command_context == GLOBAL:
                if _is_ctrl(key):
                    return name
            elif command_context in (GLOBAL, context):
                return name
        return None

    def hint(self, name: str) -> str:
        return "/".join(display_key(k) for k in self.keys.get(name, ())) or "unbound"

    def help_rows(self) -> list[tuple[str, str, str]]:
        """(keys, command, help) for every command, in registry order."""
        return [(self.hint(c.name), c.name, c.help) for c in self.commands.values()]


def build_keymap(config, commands: Sequence[Command] = COMMANDS) -> Keymap:
    """The keymap for a Config; raises ConfigError for a bad [keys] table."""
    return Keymap(commands, config.keys)

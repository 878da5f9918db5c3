"""The tree pane (t): the overview of the session's tree, one line per segment, built lazily
as the list box scrolls and cut to the pane's width with the focused branch in view.
"""

from __future__ import annotations

import urwid

from tokentree.tui.layout import Box

from tokentree.core.snapshot import TreeLine
from tokentree.tui.cells import fit, safe, width_of

__all__ = ["TreePane"]


class _LineWalker(urwid.ListWalker):
    """The tree pane's rows, built when the list box asks for them (a tree of 100k nodes has
    thousands of lines; only those in view become widgets), at the pane's current width."""

    def __init__(self, make) -> None:
        self._make = make  # (TreeLine, width) -> widget
        self.lines: tuple[TreeLine, ...] = ()
        self.focus = 0
        self.width = 0
        self._cache: dict[int, urwid.Widget] = {}

    def set_lines(self, lines: tuple[TreeLine, ...], focus: int) -> None:
        self.lines, self.focus = lines, focus
        self._cache.clear()
        self._modified()

    def set_width(self, width: int) -> None:
        if width != self.width:
            self.width = width
            self._cache.clear()
            self._modified()

    def __getitem__(self, position: int) -> urwid.Widget:
        if not 0 <= position < len(self.lines):
            raise IndexError(position)
        widget = self._cache.get(position)
        if widget is None:
            if len(self._cache) > 512:
                self._cache.clear()
            widget = self._cache[position] = self._make(self.lines[position], self.width)
        return widget

    def next_position(self, position: int) -> int:
        if position + 1 >= len(self.lines):
            raise IndexError(position)
        return position + 1

    def prev_position(self, position: int) -> int:
        if position <= 0:
            raise IndexError(position)
        return position - 1

    def set_focus(self, position: int) -> None:
        self.focus = position
        self._modified()


class TreePane(urwid.WidgetWrap):
    """The tree overview (t): forks and branch positions, single-child chains collapsed.

    The focused branch's line is always in view (the pane scrolls to it). A line is its
    guides, the names of the branches that end there, then the segment's text, in that
    order of need:
    - guides deeper than a third of the pane are cut to their last levels after the depth
      (`‹7›└─ ` is a line 7 levels deep);
    - the names take at most half of what is left; the focused one (`*`) always shows, the
      others may be counted (`+2`);
    - the text keeps as much of its END as fits: the end is the text that leads into the
      fork or branch tip on the next line, which is what the overview is for; a child
      segment also keeps a short head (the token chosen at the fork above, which tells it
      from its siblings), and the middle is cut ('…'); a root keeps only its end (its
      start is the prompt's, in the prompt pane and the branch's name).
    """

    HEAD = 10  # columns of a segment's start kept when its text is cut

    def __init__(self) -> None:
        self.walker = _LineWalker(self._line)
        self.listbox = urwid.ListBox(self.walker)
        super().__init__(Box(self.listbox, title="tree"))

    def update(self, lines: tuple[TreeLine, ...]) -> None:
        focus = next((i for i, line in enumerate(lines) if line.current), 0)
        self.walker.set_lines(tuple(lines), focus)
        self._invalidate()

    def render(self, size, focus: bool = False):
        self.walker.set_width(max(1, size[0] - 2))
        if len(size) == 2 and self.walker.lines:
            self.listbox.set_focus_valign("middle")
        return super().render(size, focus)

    @classmethod
    def _guides(cls, indent: str, width: int) -> str:
        """The guides, or where they are wider than a third of the pane: the depth, then
        the last levels' guides, exactly that third wide (deep lines stay aligned)."""
        budget = max(7, width // 3)
        if width_of(indent) <= budget:
            return indent
        units = [indent[i : i + 3] for i in range(0, len(indent), 3)]
        marker = f"\u2039{len(units)}\u203a"
        keep = max(1, (budget - width_of(marker)) // 3)
        return fit(marker, max(width_of(marker), budget - 3 * keep), align="right") + "".join(units[-keep:])

    @staticmethod
    def _names(names: tuple[str, ...], budget: int) -> str:
        """'[a, b*] ' in at most `budget` columns: the focused name (`*`) always, the others
        while they fit, then how many did not ('+2'); a name too long is cut in the middle."""
        if not names:
            return ""
        names = tuple(safe(n) for n in names)
        whole = "[" + ", ".join(names) + "] "
        if width_of(whole) <= budget:
            return whole
        focused = [n for n in names if n.endswith("*")]
        shown = focused or [names[0]]
        rest = len(names) - len(shown)
        for n in names:  # the others, while they fit
            if n in shown:
                continue
            trial = "[" + ", ".join([*shown, n]) + (f", +{rest - 1}] " if rest > 1 else "] ")
            if width_of(trial) > budget:
                break
            shown.append(n)
            rest -= 1
        more = f", +{rest}" if rest else ""
        room = max(1, budget - width_of(more) - 3)  # "[", "] "
        label = ", ".join(shown)
        if width_of(label) > room:
            label = fit(label, room, keep="middle", head=max(1, (room - 1) // 2)).rstrip()
        return "[" + label + more + "] "

    def _line(self, line: TreeLine, width: int) -> urwid.Widget:
        guides = self._guides(line.indent, width)
        room = width - width_of(guides)
        text = safe(line.text)
        # The names take what the text leaves, at least half where both are long, and the
        # focused branch's whole name where it leaves the text a few columns.
        focus = [n for n in line.branches if n.endswith("*")]
        need = width_of("[" + safe(focus[0]) + f", +{len(line.branches) - 1}] ") if focus else 0
        names = self._names(line.branches, max(6, room // 2, min(need, room - 8), room - width_of(text)))
        room -= width_of(names)
        if width_of(text) > room:
            head = min(self.HEAD, room // 3) if line.indent else 0  # a root: its end only
            text = fit(text, room, keep="middle", head=head).rstrip()
        markup = [("tree_line", guides)]
        if names:
            markup.append(("tree_branch", names))
        if text:
            markup.append(("tree_current" if line.current else "tree_text", text))
        return urwid.Text(markup, wrap="clip")

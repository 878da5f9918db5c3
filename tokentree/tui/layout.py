"""Shared layout pieces of the explorer screen: the `Reflow` mixin of a pane whose rows are
laid out at the width it is drawn at, `BottomText` (wrapped text that keeps its end in view),
`FitPile` and `FitColumns` (heights and widths chosen when drawn) and `prompt_height`.
"""

from __future__ import annotations

import math

import urwid

__all__ = ["BottomText", "FitColumns", "FitPile", "Reflow", "prompt_height"]


class Reflow:
    """Mixin for a pane whose rows depend on its width: `_reflow(width)` builds them when the
    pane is drawn at another width than last time or after `update` (`_stale()`)."""

    _built_at: int | None = None

    def _stale(self) -> None:
        self._built_at = None
        self._invalidate()

    def _reflow_for(self, maxcol: int) -> None:
        if self._built_at != maxcol:
            self._reflow(maxcol)
            self._built_at = maxcol

    def _reflow(self, maxcol: int) -> None:  # pragma: no cover - every pane defines it
        raise NotImplementedError


class BottomText(urwid.Widget):
    """A box of wrapped text that shows its end: the newest token is always in view."""

    _sizing = frozenset([urwid.BOX])
    ignore_focus = True

    def __init__(self) -> None:
        super().__init__()
        self._text = urwid.Text("")

    def set_markup(self, markup) -> None:
        self._text.set_text(markup)
        self._invalidate()

    def rows_needed(self, maxcol: int) -> int:
        return self._text.rows((maxcol,))

    def render(self, size, focus: bool = False):
        maxcol, maxrow = size
        canvas = urwid.CompositeCanvas(self._text.render((maxcol,)))
        rows = canvas.rows()
        if rows > maxrow:
            canvas.trim(rows - maxrow)
        elif rows < maxrow:
            canvas.pad_trim_top_bottom(0, maxrow - rows)
        return canvas


class FitPile(urwid.Pile):
    """A Pile whose items' heights are chosen when it is drawn: `plan(size)` gives one
    options tuple per item."""

    def __init__(self, items, plan) -> None:
        super().__init__(items)
        self._plan = plan

    def _apply(self, size) -> None:
        if len(size) != 2:
            return
        for i, options in enumerate(self._plan(size)):
            widget, old = self.contents[i]
            if old != options:
                self.contents[i] = (widget, options)

    def render(self, size, focus: bool = False):
        self._apply(size)
        return super().render(size, focus)


class FitColumns(urwid.Columns):
    """Columns whose widths are chosen when drawn: `plan(size)` gives one options tuple per
    column."""

    def __init__(self, items, plan) -> None:
        super().__init__(items)
        self._plan = plan

    def render(self, size, focus: bool = False):
        for i, options in enumerate(self._plan(size)):
            widget, old = self.contents[i]
            if old != options:
                self.contents[i] = (widget, options)
        return super().render(size, focus)


def prompt_height(want: int, rows: int, share: float = 0.4) -> int:
    """Rows for the prompt pane: what its text needs, at most `share` of the screen (never
    less than 4 rows where the screen has them)."""
    return max(min(rows, 4), min(want, max(4, math.floor(rows * share))))

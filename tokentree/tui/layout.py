"""Shared layout pieces of the explorer screen: the `Reflow` mixin of a pane whose rows are
laid out at the width it is drawn at, `BottomText` (wrapped text that keeps its end in view),
`FitPile` and `FitColumns` (heights and widths chosen when drawn) and `prompt_height`.
"""

from __future__ import annotations

import math

import urwid

from tokentree.tui.rows_view import encode_row

__all__ = ["BottomText", "Box", "FitColumns", "FitPile", "Reflow", "prompt_height"]


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


class Box(urwid.Widget):
    """A line box with a left-aligned title, drawn as a few canvases around its child's.

    urwid's LineBox builds its border from ~20 widgets (Columns, Dividers, SolidFills,
    Texts) and renders all of them whenever the child changes; here the border is three
    canvases and the title is redrawn only when it changes (`set_title`)."""

    _sizing = frozenset([urwid.BOX])

    def __init__(self, child: urwid.Widget, title: str = "") -> None:
        super().__init__()
        self.original_widget = child
        self.title = title
        self._borders: dict[tuple, tuple] = {}  # (cols, rows, title) -> (top, side, bottom) canvases

    def set_title(self, title: str) -> None:
        if title != self.title:
            self.title = title
            self._invalidate()

    def selectable(self) -> bool:
        return self.original_widget.selectable()

    def keypress(self, size, key):
        maxcol, maxrow = size
        return self.original_widget.keypress((max(0, maxcol - 2), max(0, maxrow - 2)), key)

    def _border(self, maxcol: int, maxrow: int):
        """(top, side, bottom) canvases: the top row has the title, cut to fit."""

        key = (maxcol, maxrow, self.title)
        got = self._borders.get(key)
        if got is None:
            inner = maxcol - 2
            title = f" {self.title} " if self.title else ""
            top = encode_row([(None, "\u250c" + title + "\u2500" * inner)], maxcol - 1)
            corner = encode_row([(None, "\u2510")], 1)
            got = self._borders[key] = (
                (top[0] + corner[0], top[1] + corner[1], top[2] + corner[2]),
                (encode_row([(None, "\u2502")], 1), maxrow - 2),
                encode_row([(None, "\u2514" + "\u2500" * inner + "\u2518")], maxcol),
            )
            if len(self._borders) > 16:  # sizes and titles come and go
                self._borders = {key: got}
        (ttext, tattr, tcs), side, (btext, battr, bcs) = got

        def row(text, attr, cs):
            return urwid.TextCanvas([text], [list(attr)], [list(cs)], maxcol=maxcol, check_width=False)

        def column():
            (text, attr, cs), n = side
            return urwid.TextCanvas([text] * n, [list(attr) for _ in range(n)], [list(cs) for _ in range(n)],
                                    maxcol=1, check_width=False)

        return row(ttext, tattr, tcs), column, row(btext, battr, bcs)

    def render(self, size, focus: bool = False):
        maxcol, maxrow = size
        if maxcol < 2 or maxrow < 2:
            return urwid.SolidFill(" ").render(size)
        top, column, bottom = self._border(maxcol, maxrow)
        inner = self.original_widget.render((maxcol - 2, maxrow - 2), focus)
        middle = urwid.CanvasJoin([(column(), None, False, 1), (inner, None, True, maxcol - 2),
                                   (column(), None, False, 1)]) if maxrow > 2 else None
        parts = [(top, None, False)] + ([(middle, None, True)] if middle is not None else []) + [(bottom, None, False)]
        return urwid.CanvasCombine(parts)

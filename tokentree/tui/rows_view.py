"""`RowsView`: a box of one-line rows drawn straight onto a canvas.

A table of 30 candidates as a ListBox of AttrMap(Text) widgets costs ~120 widget renders and
as many runtime protocol checks (urwid's AttrMap) per key press. Here a row is a list of
(attribute, text) runs, the rows in view are encoded into one TextCanvas, and the widget is
invalidated only when its rows or focus change, so urwid's canvas cache keeps an unchanged
pane as it was.
"""

from __future__ import annotations

import urwid
from urwid.str_util import calc_text_pos, calc_width
from urwid.util import apply_target_encoding

__all__ = ["Run", "RowsView", "encode_row"]

Run = tuple[object, str]  # (palette attribute, text)


def encode_row(runs: list[Run], maxcol: int, pad_attr=None) -> tuple[bytes, list, list]:
    """One screen row: (bytes, attribute runs, charset runs), clipped or padded to maxcol."""
    text, attrs, css, cols = [], [], [], 0
    for attr, piece in runs:
        if not piece or cols >= maxcol:
            continue
        width = calc_width(piece, 0, len(piece))
        if cols + width > maxcol:  # clip, as a Text with wrap="clip" does
            end, width = calc_text_pos(piece, 0, len(piece), maxcol - cols)
            piece = piece[:end]
        raw, cs = apply_target_encoding(piece)
        text.append(raw)
        attrs.append((attr, len(raw)))
        css.extend(cs)
        cols += width
    if cols < maxcol:
        text.append(b" " * (maxcol - cols))
        attrs.append((pad_attr, maxcol - cols))
        css.append((None, maxcol - cols))
    return b"".join(text), attrs, css


class RowsView(urwid.Widget):
    """Rows of runs with a focus row that is kept in view (scrolling by the least, as a
    ListBox does). `set_rows` with the same rows and focus keeps the cached canvas."""

    _sizing = frozenset([urwid.BOX])
    _selectable = False
    ignore_focus = True

    def __init__(self) -> None:
        super().__init__()
        self._rows: tuple = ()
        self._pads: tuple = ()
        self._focus = 0
        self._top = 0

    @property
    def rows(self) -> tuple:
        return self._rows

    def set_rows(self, rows, pads=None, focus: int = 0) -> None:
        """`rows`: a sequence of run lists; `pads`: each row's attribute for its padding."""
        rows = tuple(tuple(r) for r in rows)
        pads = tuple(pads) if pads is not None else (None,) * len(rows)
        if rows == self._rows and pads == self._pads and focus == self._focus:
            return
        self._rows, self._pads, self._focus = rows, pads, focus
        self._invalidate()

    def top_for(self, maxrow: int) -> int:
        """The first row in view at this height, with the focus row in view."""
        top, focus, n = self._top, self._focus, len(self._rows)
        if focus < top:
            top = focus
        elif focus >= top + maxrow:
            top = focus - maxrow + 1
        return max(0, min(top, n - maxrow)) if n > maxrow else 0

    def render(self, size, focus: bool = False):
        maxcol, maxrow = size
        self._top = top = self.top_for(maxrow)
        text, attrs, css = [], [], []
        for runs, pad in zip(self._rows[top: top + maxrow], self._pads[top: top + maxrow]):
            t, a, c = encode_row(runs, maxcol, pad)
            text.append(t)
            attrs.append(a)
            css.append(c)
        for _ in range(maxrow - len(text)):
            text.append(b" " * maxcol)
            attrs.append([(None, maxcol)])
            css.append([(None, maxcol)])
        return urwid.TextCanvas(text, attrs, css, maxcol=maxcol, check_width=False)

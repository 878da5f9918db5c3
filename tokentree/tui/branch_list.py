"""The branch pane: every branch with its length, appended tokens, log-probability and
perplexity; a rename's text field takes the focused branch's row.
"""

from __future__ import annotations

import urwid

from tokentree.core.snapshot import BranchRow, Snapshot
from tokentree.tui.cells import fit, safe, width_of
from tokentree.tui.layout import Box, Reflow
from tokentree.tui.rows_view import RowsView

__all__ = ["BranchList"]


class BranchList(Reflow, urwid.WidgetWrap):
    """Every branch: depth, appended tokens, their total log-probability and perplexity.
    While a branch is renamed, its row is the text field (`editor`).

    The number columns are as wide as their values (and headers); the name column gets the
    rest, and a long name is cut in the middle (its end tells "branch 21" from "branch 22")."""

    MIN_NAME = 4
    WANT_NAME = 16
    MIN_WIDTH = 34  # every column visible with 7-column names (an 80-column terminal)

    def __init__(self) -> None:
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        self.editor: urwid.Widget | None = None
        self.header = urwid.Text("", wrap="clip")
        self.rows_view = RowsView()  # the rows without a rename field: one canvas, no widget per row
        self.pile = urwid.Pile([("pack", self.header), self.rows_view])
        self.box = Box(self.pile, title="branches")
        self._branches: tuple[BranchRow, ...] = ()
        self.picking: int | None = None  # the branch a picker (compare) points at
        super().__init__(self.box)

    def set_picking(self, branch_id: int | None) -> None:
        self.picking = branch_id
        self._stale()

    def rows_needed(self) -> int:
        return len(self._branches) + 3  # rows, header, borders

    def update(self, snap: Snapshot) -> None:
        self._branches = snap.branches
        self.box.set_title(f"branches \u00b7 {len(snap.branches)}")
        self._stale()

    def render(self, size, focus: bool = False):
        self._reflow_for(size[0])
        return super().render(size, focus)

    @staticmethod
    def _numbers(b: BranchRow) -> tuple[str, str, str, str]:
        if b.logprob is not None:
            logprob, ppl = f"{b.logprob:.1f}", f"{b.perplexity:.3g}"
        elif b.appended:
            logprob = ppl = "\u2026"  # still computing
        else:
            logprob = ppl = ""
        return str(b.depth), f"+{b.appended}", logprob, ppl

    def _reflow(self, maxcol: int) -> None:
        inner = max(1, maxcol - 2)
        numbers = [self._numbers(b) for b in self._branches]
        heads = ["len", "+app", "logprob", "ppl"]
        cols = [max([width_of(h)] + [width_of(n[i]) for n in numbers]) for i, h in enumerate(heads)]
        names = [width_of(safe(b.name)) for b in self._branches]
        longest = max([4, *names])
        name_w = inner - 2 - sum(c + 1 for c in cols)
        if name_w < min(longest, 10) and cols[2] > 4:  # short of room: "logprob" becomes "logp"
            heads[2] = "logp"
            cols[2] = max([4] + [width_of(n[2]) for n in numbers])
            name_w = inner - 2 - sum(c + 1 for c in cols)
        # The names' own width where there is room (the numbers follow them), cut where not.
        name_w = max(self.MIN_NAME, min(name_w, longest))
        self.header.set_text(("header", "  " + fit("name", name_w) + "".join(
            " " + fit(h, c, align="left" if h == "+app" else "right") for h, c in zip(heads, cols))))
        rows = [self._row(b, n, name_w, cols, picked=b.id == self.picking) for b, n in zip(self._branches, numbers)]
        focus = next((i for i, b in enumerate(self._branches) if b.focused), 0)
        if self.picking is not None:  # the picked row stays in view
            focus = next((i for i, b in enumerate(self._branches) if b.id == self.picking), focus)
        if self.editor is None:
            self.rows_view.set_rows([[(attr, text)] for text, attr in rows], [attr for _, attr in rows], focus)
            self._show(self.rows_view)
            return
        # A rename: the rows as widgets, the field in place of the focused one (it takes the cursor).
        widgets = [urwid.AttrMap(urwid.Text(text, wrap="clip"), attr) for text, attr in rows]
        field = urwid.AttrMap(self.editor, "edit")
        if widgets:
            widgets[focus] = field
        else:
            widgets.append(field)
        self.walker[:] = widgets
        self.listbox.set_focus(focus)
        self._show(self.listbox)

    def _show(self, body: urwid.Widget) -> None:
        if self.pile.contents[1][0] is not body:
            self.pile.contents[1] = (body, self.pile.options())
            self.pile.focus_position = 1

    @staticmethod
    def _row(b: BranchRow, numbers, name_w: int, cols: list[int], picked: bool = False) -> tuple[str, str]:
        depth, appended, logprob, ppl = numbers
        name = fit(safe(b.name), name_w, keep="middle", head=max(1, (name_w - 1) // 2))
        mark = "\u25b6 " if b.focused else "\u25c6 " if picked else "  "
        text = mark + name + " " + fit(depth, cols[0], align="right")
        text += " " + fit(appended, cols[1]) + " " + fit(logprob, cols[2], align="right")
        text += " " + fit(ppl, cols[3], align="right")
        return text, "branch_focus" if b.focused else "branch_pick" if picked else "branch"

"""The screen's comparisons: the branch diff view (c), and the compare model's cells.

The numbers come from tokentree.features.compare (the same table `tokentree export --diff`
prints); here they are laid out in terminal columns and coloured.
"""

from __future__ import annotations

from dataclasses import dataclass

import urwid

from tokentree.tui.layout import Box

from tokentree.features.compare.diff import BranchDiff, DiffTable, diff_table
from tokentree.features.compare.divergence import fmt_divergence
from tokentree.core.snapshot import CandidateRow, CompareInfo
from tokentree.tui.cells import fit, safe, width_of


def short_name(model: str) -> str:
    """A model path's last part (a hub name keeps its owner: the last part is enough)."""
    return model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or model


def compare_cell(row: CandidateRow) -> str | None:
    """The compare column's text for a row: '12.34%', '<0.05%' (an upper bound), or None."""
    if row.compare is None:
        return None
    pct = row.compare * 100
    text = f"{pct:.2f}%" if pct >= 0.01 or pct == 0 else f"{pct:.0e}%"
    return ("<" + text) if row.compare_bound else text


def compare_status(info: CompareInfo | None) -> str:
    """The status bar's part: 'vs NAME: KL ≥ 0.412 · TV 0.21–0.25' (see features/compare)."""
    if info is None:
        return ""
    name = safe(short_name(info.model))
    if info.divergence is not None:
        return f"vs {name}: {fmt_divergence(info.divergence)}"
    if info.failed:
        return f"vs {name}: unavailable"
    if info.loading:
        return f"vs {name}: loading\u2026"
    return f"vs {name}: computing\u2026"


@dataclass
class BranchPicker:
    """The compare picker: the focused branch's name and the others, (id, name), the one
    after the focused branch first (so the list's order is kept, cyclically)."""

    name: str
    choices: list[tuple[int, str]]
    index: int = 0

    def move(self, step: int) -> None:
        self.index = (self.index + step) % len(self.choices)

    @property
    def chosen(self) -> tuple[int, str]:
        return self.choices[self.index]


class DiffView(urwid.WidgetWrap):
    """Two branches side by side from their fork point (c, then pick the other branch): each
    token with its log-probability, the difference, the totals and perplexities. Scrolls
    with the picker's up/down keys and page up/down, home, end; esc closes it."""

    SCROLL_KEYS = ("page up", "page down", "home", "end")
    LOGP_W = 8  # "-12.345", "n/a"
    DELTA_W = 8  # "+12.345"

    def __init__(self) -> None:
        self.title = urwid.Text("", wrap="clip")
        self.context = urwid.Text("", wrap="clip")
        self.header = urwid.Text("", wrap="clip")
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        self.footer = urwid.Text("", wrap="clip")
        self.note = urwid.Text("")
        self.pile = urwid.Pile([("pack", self.title), ("pack", self.context), ("pack", self.header),
                                self.listbox, ("pack", self.footer), ("pack", self.note)])
        self.box = Box(self.pile, title="branch diff")
        self.diff: BranchDiff | None = None
        self.table: DiffTable | None = None
        self._built_at: int | None = None
        self._size: tuple[int, int] | None = None
        self._focus = 0  # the top row in view, kept across updates of the same pair
        self.keys_hint = "esc: close"
        super().__init__(self.box)

    def update(self, diff: BranchDiff) -> None:
        same = self.diff is not None and (self.diff.a.branch_id, self.diff.b.branch_id) == (
            diff.a.branch_id, diff.b.branch_id)
        self.diff, self.table = diff, diff_table(diff)
        self.box.set_title(f"branch diff \u00b7 {safe(diff.a.name)} vs {safe(diff.b.name)}")
        focus = self.listbox.focus_position if same and len(self.walker) else 0
        self._built_at = None
        self._focus = focus
        self._invalidate()

    def render(self, size, focus: bool = False):
        if len(size) == 2:
            self._size = (max(1, size[0] - 2), max(1, size[1] - 2))
        if self.table is not None and self._built_at != size[0]:
            self._reflow(max(1, size[0] - 2))
            self._built_at = size[0]
        return super().render(size, focus)

    def scroll(self, key: str) -> None:
        """Move the rows: 'up', 'down', or one of SCROLL_KEYS."""
        if not len(self.walker):
            return
        rows = max(1, (self._size[1] - 6) if self._size else 10)
        last = len(self.walker) - 1
        at = self.listbox.focus_position
        target = {"up": at - 1, "down": at + 1, "page up": at - rows, "page down": at + rows,
                  "home": 0, "end": last}.get(key, at)
        self.listbox.set_focus(max(0, min(last, target)))
        self._focus = self.listbox.focus_position

    # ---------------------------------------------------------------- layout
    def _widths(self, inner: int) -> list[int]:
        table = self.table
        cells = [*table.rows, *table.totals]
        pos = max(width_of(r[0]) for r in cells)
        logp_a = max([self.LOGP_W] + [width_of(r[2]) for r in cells])
        logp_b = max([self.LOGP_W] + [width_of(r[4]) for r in cells])
        delta = max([self.DELTA_W] + [width_of(r[5]) for r in cells])
        fixed = pos + logp_a + logp_b + delta + 7  # the blanks between columns and the bar
        token = max(6, (inner - fixed) // 2)
        return [pos, token, logp_a, token, logp_b, delta]

    def _line(self, cells, widths, attrs) -> list:
        markup = []
        for k, (cell, w, attr) in enumerate(zip(cells, widths, attrs)):
            right = k in (0, 2, 4, 5)
            text = fit(safe(cell), w, align="right" if right else "left")
            markup.append((attr, (" " if k else "") + text))
            if k in (2,):
                markup.append(("legend", " \u2502"))
        return markup

    def _reflow(self, inner: int) -> None:
        table, diff = self.table, self.diff
        widths = self._widths(inner)
        self.title.set_text(("title", safe(table.title)))
        self.context.set_text([("legend", "after: "), ("prompt", safe(diff.context[-max(1, inner - 8):]))]
                              if diff.context else ("legend", "the branches start with different tokens"))
        self.header.set_text(self._line(table.columns, widths, ["header"] * 6))
        rows = []
        for cells, row in zip(table.rows, diff.rows):
            delta = row.delta
            delta_attr = ("na" if delta is None else "diff_more" if delta > 0 else "diff_less" if delta < 0
                          else "prob_text")
            attrs = ["rank", "token", _logp_attr(cells[2]), "token", _logp_attr(cells[4]), delta_attr]
            rows.append(urwid.Text(self._line(cells, widths, attrs), wrap="clip"))
        if not rows:
            rows.append(urwid.Text(("na", "  (no tokens after the fork point)")))
        self.walker[:] = rows
        self.listbox.set_focus(min(self._focus, len(rows) - 1))
        total, ppl = table.totals
        self.footer.set_text([*self._line(total, widths, ["header"] * 6), "\n",
                              *self._line(ppl, widths, ["header"] * 6)])
        self.note.set_text([("legend", safe(table.note)), ("legend", "   "), ("help_key", self.keys_hint)])


def _logp_attr(cell: str) -> str:
    return "na" if cell in ("n/a", "\u2026") else "prob_text"

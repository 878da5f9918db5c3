"""The panes of the explorer screen. Each one is redrawn from a Snapshot by `update()`;
none of them handles keys (the app's keymap does), so they never swallow a binding.

Panes whose columns depend on their width (the table, the branch list, the tree, the status
line) lay their rows out when they are drawn, at the width they get. Text is measured,
cut and padded in terminal columns through `tokentree.tui.cells`, never with `len()`.
"""

from __future__ import annotations

import math

import urwid

from tokentree.core.snapshot import BranchRow, CandidateRow, Snapshot, TreeLine
from tokentree.tui.cells import cut, fit, safe, safe_markup, width_of
from tokentree.tui.compare import compare_cell as _compare_cell, compare_status, short_name as _short_name
from tokentree.tui.constraint import constraint_legend, constraint_tag, empty_note, filters, raw_cell
from tokentree.tui.palette import LEVELS, gradient_attr, level

__all__ = ["BottomText", "BranchList", "CandidateTable", "HelpView", "LineField", "PromptPane",
           "StatusBar", "TreePane", "fit", "width_of"]

_VIEW_GRADIENT = {"probability": "prob", "entropy": "ent", "influence": "inf", "disagreement": "dis"}
_VIEW_LEGEND = {
    "probability": ("token probability", "0", "1"),
    "entropy": ("entropy it was chosen from", "certain", "uncertain"),
    "influence": ("on next token", "none", "most"),
    "disagreement": ("|\u0394 log p| between the two models", "0", "\u22653 nats"),
}
_LAYER_TITLE = {"layer": "layer probabilities", "layer_norm": "layer-normalized"}


class _Reflow:
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


class PromptPane(urwid.WidgetWrap):
    """The current branch's text, coloured by the prompt view, and a legend line."""

    def __init__(self) -> None:
        self.body = BottomText()
        self.info = urwid.Text("", wrap="clip")
        self.legend = urwid.Text("")  # wraps: a long sampler description stays readable
        self.box = urwid.LineBox(urwid.Pile([self.body, ("pack", self.info), ("pack", self.legend)]),
                                 title="prompt", title_align="left")
        super().__init__(self.box)

    def rows_needed(self, maxcol: int) -> int:
        """The pane's height with all of its text in view: the wrapped prompt, the info and
        legend lines, the borders."""
        inner = (max(1, maxcol - 2),)
        return self.body.rows_needed(inner[0]) + self.info.rows(inner) + self.legend.rows(inner) + 2

    def update(self, snap: Snapshot) -> None:
        kind = _VIEW_GRADIENT.get(snap.prompt_view)
        markup = []
        for tok in snap.prompt:
            if not tok.text:
                continue  # the first bytes of a character completed by a later token
            if kind is None:
                attr = "appended" if tok.appended else "prompt"
            else:
                attr = gradient_attr(kind, tok.value)
            markup.append((attr, tok.text))
        markup = safe_markup(markup)  # judged as one text: a sequence split across tokens
        markup.append(("cursor", "\u258f"))
        self.body.set_markup(markup)
        self.legend.set_text(self._legend(snap))
        self.info.set_text(self._info(snap))
        self.box.set_title(f"prompt \u00b7 {snap.prompt_view} view")

    @staticmethod
    def _info(snap: Snapshot):
        """The last token's own numbers; a first token has no distribution: n/a."""
        if not snap.prompt:
            return ""
        if snap.last_prob is None:
            own = [("legend", "last token p "), ("na", "n/a"), ("legend", " (no distribution before it)")]
        else:
            own = [("legend", f"last token p {snap.last_prob * 100:.2f}%  rank {snap.last_rank}")]
        if snap.entropy is not None:
            # A server's top-k gives a lower bound only: never shown as if exact.
            bound = "" if snap.entropy_exact else "\u2265 "
            own.append(("legend", f"   next: entropy {bound}{snap.entropy:.2f} nats ({snap.norm_entropy:.2f} of max)"))
        return own

    @staticmethod
    def _legend(snap: Snapshot):
        pending = [("message", "  (computing\u2026)")] if snap.view_pending else []
        if snap.prompt_view == "plain":
            return [("legend", "plain view: "), ("prompt", "prompt"), ("legend", " "),
                    ("appended", "your tokens"), ("legend", "   e: next view")]
        kind = _VIEW_GRADIENT[snap.prompt_view]
        what, low, high = _VIEW_LEGEND[snap.prompt_view]
        ramp = [(f"{kind}_{i}", "  ") for i in range(LEVELS)]
        sink = []
        if snap.prompt_view == "influence" and not snap.view_pending:
            # The first token (the usual attention sink) is n/a; its share is a number.
            share = [("legend", f"{snap.sink_share:.2f}")] if snap.sink_share is not None else [("na", "n/a")]
            sink = [("legend", " \u00b7 sink "), *share]
        return [("legend", f"{snap.prompt_view} view, {what}: {low} "), *ramp, ("legend", f" {high}  "),
                ("na", "n/a"), *sink, *pending]


class CandidateTable(_Reflow, urwid.WidgetWrap):
    """The next-token table: selection marker, rank, token, probability, sampler column (v),
    explored marker (tree), layer heat map.

    Every column but the token has a fixed width that fits its values (a rank of up to any
    number of digits keeps a blank after the selection marker); the token column takes the
    rest of the pane. `WANT` is the pane width it asks for (an 80-column terminal gets it)."""

    PROB_W = 7  # "100.00%"
    SAMPLE_W = 6  # "100.0%"
    COMPARE_W = 7  # "100.00%", "<0.012%"
    MIN_TOKEN = 6
    TOKEN_WANT = 24  # token columns wider than this are mostly blank
    WANT = 2 + 1 + 4 + 1 + TOKEN_WANT + 1 + PROB_W + 1 + 5  # borders, columns: 46

    def __init__(self) -> None:
        self.header = urwid.Text("", wrap="clip")
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        self.legend = urwid.Text("")  # wraps: a long sampler description stays readable
        self.pile = urwid.Pile([("pack", self.header), self.listbox])
        self.box = urwid.LineBox(self.pile, title="next token", title_align="left")
        self._snap: Snapshot | None = None
        self.page_rows = 10  # candidate rows in view at the last draw (page up / page down)
        super().__init__(self.box)

    def want_width(self) -> int:
        """The pane width that shows every column with a TOKEN_WANT-wide token column."""
        snap = self._snap
        want = self.WANT
        if snap is not None and snap.sampler is not None:
            want += 1 + self.SAMPLE_W
        if snap is not None and snap.compare is not None:
            want += 1 + self.COMPARE_W
        if filters(snap):  # a regex constraint's raw column
            want += 1 + self.PROB_W
        if snap is not None and snap.layer_view != "off" and snap.num_layers:
            want += 1 + snap.num_layers
        return want

    def update(self, snap: Snapshot) -> None:
        self._snap = snap
        title = f"next token \u00b7 {len(snap.candidates)} shown"
        if snap.sampler is not None:
            title += " \u00b7 sampler"
        if snap.layer_view != "off":
            title += f" \u00b7 {_LAYER_TITLE[snap.layer_view]}"
        if filters(snap):
            title += f" \u00b7 regex {safe(snap.constraint.name)}"
        self.box.set_title(title)
        # The sampler's settings on a legend line under the table (a title would be clipped).
        parts = [(self.header, ("pack", None)), (self.listbox, ("weight", 1))]
        legend = []
        if snap.sampler is not None:
            legend += [("legend", "sampler "), ("sampled", safe(snap.sampler)),
                       ("legend", " \u00b7 "), ("filtered", "dim"), ("legend", ": filtered out")]
        if snap.compare is not None:
            legend += ["\n"] if legend else []
            legend += [("legend", "cmp: p under "), ("compare", safe(_short_name(snap.compare.model))),
                       ("legend", " \u00b7 <x: outside its top K, at most x")]
        if rx := constraint_legend(snap.constraint):
            legend += (["\n"] if legend else []) + rx
        if legend:
            self.legend.set_text(legend)
            parts.append((self.legend, ("pack", None)))
        if len(self.pile.contents) != len(parts):
            self.pile.contents[:] = parts
            self.pile.focus_position = 1
        self._stale()

    def render(self, size, focus: bool = False):
        self._reflow_for(size[0])
        if len(size) == 2:
            legend = self.legend.rows((max(1, size[0] - 2),)) if len(self.pile.contents) > 2 else 0
            self.page_rows = max(1, size[1] - 3 - legend)
        return super().render(size, focus)

    # ---------------------------------------------------------------- layout
    def _widths(self, inner: int) -> dict[str, int]:
        snap = self._snap
        rows = snap.candidates
        rank = max([4] + [width_of(str(r.rank)) + 1 for r in rows if r.rank is not None])
        tree = max([4] + [width_of(str(r.subtree)) + 1 for r in rows if r.explored])
        fixed = 1 + rank + 1 + 1 + self.PROB_W + 1 + tree
        if snap.sampler is not None:
            fixed += 1 + self.SAMPLE_W
        if snap.compare is not None:
            fixed += 1 + self.COMPARE_W
        if filters(snap):
            fixed += 1 + self.PROB_W
        layers = snap.num_layers if snap.layer_view != "off" else 0
        token = max(self.MIN_TOKEN, inner - fixed - (1 + layers if layers else 0))
        heat = max(0, inner - fixed - token - 1) if layers else 0
        return {"rank": rank, "tree": tree, "token": token, "heat": min(layers, heat)}

    def _reflow(self, maxcol: int) -> None:
        snap = self._snap
        if snap is None:
            return
        w = self._widths(max(1, maxcol - 2))
        sampler = snap.sampler is not None
        head = " " + fit("#", w["rank"], align="right") + " " + fit("token", w["token"]) + " "
        head += fit("prob", self.PROB_W, align="right")
        if filters(snap):
            head += " " + fit("raw", self.PROB_W, align="right")
        if sampler:
            head += " " + fit("sample", self.SAMPLE_W, align="right")
        if snap.compare is not None:
            head += " " + fit("cmp", self.COMPARE_W, align="right")
        head += " " + fit("tree", w["tree"])
        if snap.layer_view != "off":
            if snap.view_pending and not snap.num_layers:
                head += " layers (computing\u2026)"
            elif w["heat"]:  # first layer left; a narrow pane shows the first ones
                shown, total = w["heat"], snap.num_layers
                of = f" of {total}" if shown < total else ""
                room = max(1, maxcol - 2 - width_of(head) - 1)
                labels = (f"layers 1\u2192{shown}{of}", f"1\u2192{shown}{of}", f"1\u2192{shown}")
                head += " " + next((t for t in labels if width_of(t) <= room), cut(labels[-1], room))
        self.header.set_text(("header", head))
        rows: list[urwid.Widget] = []
        compare = None if snap.compare is None else ("\u2026" if snap.compare.waiting and not snap.compare.failed
                                                     else "n/a")
        for i, row in enumerate(snap.candidates):
            rows.append(self._row(row, w, selected=i == snap.selected, sampler=sampler, compare=compare,
                                  raw=filters(snap)))
        if filters(snap) and not snap.candidates and not snap.waiting:
            rows.append(urwid.Text(("na", f"  {empty_note(snap.constraint)}")))
        if snap.waiting:
            note = "waiting for the model\u2026" if snap.status.engine_ready or snap.status.busy else "model not loaded"
            rows.append(urwid.Text(("na", f"  {note}")))
        self.walker[:] = rows
        if snap.candidates:
            self.listbox.set_focus(min(snap.selected, len(rows) - 1))

    def _row(self, row: CandidateRow, w: dict[str, int], *, selected: bool, sampler: bool,
             compare: str | None = None, raw: bool = False) -> urwid.Widget:
        """`compare`: what the compare column shows without a value (None: no column)."""
        rank = str(row.rank) if row.rank is not None else "?"
        prob = f"{row.prob * 100:6.2f}%" if row.prob is not None else "n/a"
        marker = f"\u25b8{row.subtree}" if row.explored else ""
        filtered = sampler and row.sampled is None
        plain = "selected" if selected else ("filtered" if filtered else None)
        markup = [
            (plain or "rank", ("\u25b6" if selected else " ") + fit(rank, w["rank"], align="right") + " "),
            (plain or "token", fit(safe(row.text, mark_combining=True), w["token"])),
            (plain or ("na" if row.prob is None else "prob_text"), " " + fit(prob, self.PROB_W, align="right")),
        ]
        if raw:  # a regex constraint: prob is renormalized over the allowed tokens, this is the model's
            markup.append((plain or ("na" if row.raw is None else "legend"), " " + fit(raw_cell(row), self.PROB_W,
                                                                                    align="right")))
        if sampler:
            cell = f"{row.sampled * 100:5.1f}%" if row.sampled is not None else "\u00b7"
            markup.append((plain or "sampled", " " + fit(cell, self.SAMPLE_W, align="right")))
        if compare is not None:
            markup.append((plain or ("na" if row.compare is None else "compare"),
                           " " + fit(_compare_cell(row) or compare, self.COMPARE_W, align="right")))
        markup += [(plain or "prob_text", " "), (plain or "explored", fit(marker, w["tree"]))]
        if w["heat"] and row.layers:
            markup.append(" ")
            markup += [(f"heat_{level(v)}", "\u2588") for v in row.layers[: w["heat"]]]
        return urwid.AttrMap(urwid.Text(markup, wrap="clip"), plain)


class LineField(urwid.Edit):
    """A one-line text field (rename, search). Home and end go to the ends of the text,
    even where a long text wraps on screen."""

    def __init__(self, caption: str, text: str = "") -> None:
        super().__init__([("edit_caption", f" {caption} "), " "], text)
        self.set_edit_pos(len(text))

    def keypress(self, size, key):
        if key == "home":
            self.set_edit_pos(0)
            return None
        if key == "end":
            self.set_edit_pos(len(self.edit_text))
            return None
        return super().keypress(size, key)


class BranchList(_Reflow, urwid.WidgetWrap):
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
        self.box = urwid.LineBox(urwid.Pile([("pack", self.header), self.listbox]), title="branches",
                                 title_align="left")
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
        if self.editor is not None:
            field = urwid.AttrMap(self.editor, "edit")
            if rows:
                rows[focus] = field
            else:
                rows.append(field)
        self.walker[:] = rows
        if rows:
            self.listbox.set_focus(focus)

    @staticmethod
    def _row(b: BranchRow, numbers, name_w: int, cols: list[int], picked: bool = False) -> urwid.Widget:
        depth, appended, logprob, ppl = numbers
        name = fit(safe(b.name), name_w, keep="middle", head=max(1, (name_w - 1) // 2))
        mark = "\u25b6 " if b.focused else "\u25c6 " if picked else "  "
        text = mark + name + " " + fit(depth, cols[0], align="right")
        text += " " + fit(appended, cols[1]) + " " + fit(logprob, cols[2], align="right")
        text += " " + fit(ppl, cols[3], align="right")
        return urwid.AttrMap(urwid.Text(text, wrap="clip"),
                             "branch_focus" if b.focused else "branch_pick" if picked else "branch")


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
        super().__init__(urwid.LineBox(self.listbox, title="tree", title_align="left"))

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


class _StatusLine(urwid.WidgetWrap):
    """The status bar's one line, laid out at its width by priority: the lead (a text
    field's keys) and the busy state first, the key hint always at the right end; between
    them what fits of: where the numbers come from, the model, device, dtype and session.
    The model path shortens first (to its last part), then session, dtype and device go,
    then the origin, then the model's name is cut."""

    SEP = " \u2502 "

    def __init__(self) -> None:
        self.text = urwid.Text("", wrap="clip")
        self.parts: dict | None = None
        self._built_at: tuple | None = None
        super().__init__(urwid.AttrMap(self.text, "status"))

    def set_parts(self, **parts) -> None:
        self.parts = parts
        self._built_at = None
        self._invalidate()

    def render(self, size, focus: bool = False):
        if self.parts is not None and self._built_at != size[0]:
            self.text.set_text(self.layout(size[0], **self.parts))
            self._built_at = size[0]
        return super().render(size, focus)

    @classmethod
    def layout(cls, width: int, *, lead, busy, busy_attr, origin, model, details, hint, compare: str = "",
               regex: str = "", regex_attr: str = "status") -> list:
        """`compare`: the compare model's numbers (KL, TV); they go after the origin and give
        way only after the model's details."""
        sep = cls.SEP
        short_model = model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or model
        short_origin = {"from cache": "cache", "not computed yet": "not computed"}.get(
            origin, origin.replace("forward pass", "fwd"))
        middles = [[origin, " \u00b7 ".join([model, *details])]]
        middles += [[origin, " \u00b7 ".join([short_model, *details[:keep]])]
                    for keep in range(len(details), -1, -1)]
        middles += [[short_origin, short_model], [short_model]]
        if compare:
            middles = [[*m[:-1], compare, m[-1]] for m in middles] + [[compare], *middles]
        lead_parts = [("edit_caption", lead), " "] if lead else []
        lead_w = width_of(lead) + 1 if lead else 0
        must = lead_w + width_of(busy) + width_of(regex) + width_of(sep) + width_of(hint)  # never left out
        middle = ""
        for parts in middles:
            text = sep.join(parts) + sep
            if must + width_of(text) <= width:
                middle = text
                break
        else:
            room = width - must - width_of(sep)
            if room >= 4:  # the model's name, cut
                middle = fit(short_model, room) + sep
            elif must > width:  # the busy state cut (it stays, if short): the hint still shows
                busy = fit(busy, max(2, width - (must - width_of(busy)))).rstrip()
        used = lead_w + width_of(busy) + width_of(regex) + width_of(sep) + width_of(middle) + width_of(hint)
        tag = [(regex_attr, regex)] if regex else []  # a regex constraint and its state, after busy
        return [*lead_parts, (busy_attr, busy), *tag, sep + middle, " " * max(0, width - used), hint]


class StatusBar(urwid.WidgetWrap):
    """Message line (or the search field while it is open), then: busy, cache or forward
    pass, model, device, dtype, session, hint (see `_StatusLine` for what gives way on a
    narrow screen). A search's position leads the message line."""

    def __init__(self, hint: str, cancel_hint: str = "esc") -> None:
        self.hint = hint
        self.cancel_hint = cancel_hint  # the key that stops a fill, as bound
        self.message = urwid.Text("")
        self.line = _StatusLine()
        self.pile = urwid.Pile([self.message, self.line])
        self.editor: urwid.Widget | None = None
        self.field_hint: str | None = None  # while a text field is open: its keys, shown first
        super().__init__(self.pile)

    def set_editor(self, editor: urwid.Widget | None) -> None:
        """Show a text field in place of the message line (None: the message line again)."""
        self.editor = editor
        top = self.message if editor is None else urwid.AttrMap(editor, "edit")
        self.pile.contents[0] = (top, ("pack", None))
        self.pile.focus_position = 0

    def update(self, snap: Snapshot) -> None:
        st = snap.status
        search = [("search", safe(snap.search)), "  "] if snap.search else []
        if st.error:
            self.message.set_text(search + [("error", safe(st.error))])
        elif search or snap.message:
            self.message.set_text(search + [("message", safe(snap.message or ""))])
        else:
            self.message.set_text("")
        if st.origin == "forward":
            origin = f"forward pass {st.ms:.0f} ms" if st.ms is not None else "forward pass"
        elif st.origin == "cache":
            origin = "from cache"
        else:
            origin = "not computed yet"
        # Busy state first: it is what a user waits on.
        stop = f" \u00b7 {self.cancel_hint} stops" if st.cancellable else ""
        busy = f" \u23f3 {safe(st.busy)}{stop}\u2026" if st.busy else " idle"
        regex, regex_attr = constraint_tag(snap.constraint)
        self.line.set_parts(
            lead=f" {self.field_hint} " if self.field_hint else "",
            busy=busy, busy_attr="status_busy" if st.busy else "status", origin=origin,
            model=safe(st.model), details=[st.device, st.dtype, f"session {st.session_id}"],
            hint=self.hint + " ", compare=compare_status(snap.compare), regex=regex, regex_attr=regex_attr)


def _hanging(key_markup, text_markup, key_width: int) -> urwid.Widget:
    """A help row: the key column, then text whose wrapped lines start under its first."""
    return urwid.Columns([(key_width, urwid.Text(key_markup)), urwid.Text(text_markup)], dividechars=1)


# The notation the screen uses, for the help's legend: (symbol, meaning).
LEGEND: tuple[tuple[str, str], ...] = (
    ("\u00b7", "a leading space of a token (table)"),
    ("\u23ce  \u21e5", "a newline, a tab"),
    ("\\x8e", ("a byte that is not valid UTF-8 on its own (the rest of its character is in "
              "another token)")),
    ("\\u200d", ("an invisible format character (zero-width joiner, direction mark, ...), "
                "written out; emoji skin tones and variation selectors are not drawn")),
    ("\u25cc\u0301", "a token that starts with a combining mark, on a dotted circle"),
    ("\u27e8123\u27e9", "a token whose text is not known yet (its id)"),
    ("<|endoftext|>", "a special token, by name"),
    ("\u25b6", "the selected row (right appends it)"),
    ("#", "table: rank of the token in the distribution (1 = most likely)"),
    ("\u25b870", "table, tree column: explored, with 70 nodes in its subtree (itself included)"),
    ("\u2588\u2588\u2588\u2588", ("layer heat map (p): one cell per layer, first layer left; shade = "
                                 "the token's probability at that layer; in the layer-normalized "
                                 "view each row is divided by its own maximum")),
    ("n/a", "no value: a first token has no distribution before it, or the model cannot say"),
    ("len", "branches: tokens on the branch"),
    ("+app", "branches: tokens appended after the root prompt"),
    ("logprob", ("branches: sum of the natural log-probabilities of the appended tokens "
                "(logp when narrow)")),
    ("ppl", "branches: perplexity of the appended tokens, exp(-logprob / +app)"),
    ("\u25c6", "branches: the branch a picker points at (c: compare with it, enter)"),
    ("cmp", ("table: the token's probability under the compare model (--compare-model); <x: it is "
             "outside that model's cached top K, so at most x")),
    ("KL \u2265", ("status: KL(main \u2016 compare) at this node over the two cached top-K lists, a "
                   "lower bound (exact, without \u2265, when they hold the whole distribution); TV: "
                   "the range of the total-variation distance")),
    ("raw", ("table, under a regex constraint (r): the model's own probability; prob is then "
             "renormalized over the allowed tokens among the cached top K")),
    ("regex", ("status: the regex constraint (r on/off, R next) and its state: live (a prefix of a "
               "match), complete (a whole match), dead (no match possible)")),
    ("[name*]", "tree: the branches that end on this line (* the focused one, +2 two more)"),
    ("\u20397\u203a", "tree: a line 7 levels deep (its guides are cut)"),
    ("\u2026", "text cut to fit (tree: the middle of a segment; branches: still computing)"),
    ("\u23f3", "status: the model is working (idle when not)"),
)


class HelpView(urwid.WidgetWrap):
    """The help overlay, generated from the keymap, then the legend of the screen's
    notation. The scroll keys move it (it is longer than a small terminal); any other key
    closes it. Long lines wrap under their text (a hanging indent), not to the left edge."""

    SCROLL_KEYS = ("up", "down", "page up", "page down", "home", "end")

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        self.entries = rows
        self.body = urwid.ListBox(urwid.SimpleListWalker([]))
        self._size: tuple[int, int] | None = None
        self._built_at: int | None = None
        self.box = urwid.LineBox(self.body, title="help")
        super().__init__(urwid.AttrMap(self.box, "help"))

    def _build(self, inner: int) -> None:
        key_width = min(max(width_of(k) for k, _, _ in self.entries), max(4, inner // 3))
        sym_width = min(max(width_of(s) for s, _ in LEGEND), max(4, inner // 3))
        lines: list[urwid.Widget] = [
            urwid.Text(("title", "tokentree keys  (\u2191\u2193 pgup pgdn home end scroll, any other key closes)")),
            urwid.Divider(),
        ]
        for keys, name, text in self.entries:
            lines.append(_hanging(("help_key", keys), f"{name}: {text}", key_width))
        lines += [urwid.Divider(), urwid.Text(("title", "notation")), urwid.Divider()]
        for symbol, meaning in LEGEND:
            lines.append(_hanging(("help_key", symbol), meaning, sym_width))
        self.body.body[:] = lines
        self.body.set_focus(0)

    def render(self, size, focus: bool = False):
        self._size = (max(1, size[0] - 2), max(1, size[1] - 2))  # the list inside the box's borders
        if self._built_at != self._size[0]:
            self._build(self._size[0])
            self._built_at = self._size[0]
        ends = self.body.ends_visible(self._size)  # where it is in the list, in the title
        title = "help" if "top" in ends and "bottom" in ends else (
            "help \u00b7 more below \u2193" if "top" in ends else
            "help \u00b7 end \u2191" if "bottom" in ends else "help \u00b7 scroll \u2191\u2193")
        if self.box.title_widget.text.strip() != title:
            self.box.set_title(title)
        return super().render(size, focus)

    def scroll(self, key: str) -> None:
        if self._built_at is None:
            self._build(78)
            self._built_at = 78
        self.body.keypress(self._size or (78, 20), key)


class HelpOverlay(urwid.Overlay):
    """The help over the screen, sized to the terminal: it leaves a margin where there is
    room and takes the whole screen where there is not; its list scrolls."""

    MAX_WIDTH = 120

    def render(self, size, focus: bool = False):
        cols, rows = size
        width = cols if cols < 44 else min(cols - 4, self.MAX_WIDTH)
        height = rows if rows < 12 else rows - 2
        if (width, height) != getattr(self, "_fitted", None):
            self.set_overlay_parameters("center", width, "middle", height)
            self._fitted = (width, height)
        return super().render(size, focus)


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

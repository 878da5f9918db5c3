"""The next-token table: every candidate of the current node with its rank, probability and
the sampler, compare, regex and layer columns that are on, laid out at the pane's width.
"""

from __future__ import annotations

import urwid

from tokentree.core.snapshot import CandidateRow, Snapshot
from tokentree.tui.cells import cut, fit, safe, width_of
from tokentree.tui.compare import compare_cell as _compare_cell, short_name as _short_name
from tokentree.tui.constraint import constraint_legend, empty_note, filters, raw_cell
from tokentree.tui.layout import Box, Reflow
from tokentree.tui.palette import level
from tokentree.tui.rows_view import RowsView

__all__ = ["CandidateTable"]

_LAYER_TITLE = {"layer": "layer probabilities", "layer_norm": "layer-normalized"}


class CandidateTable(Reflow, urwid.WidgetWrap):
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
        self.listbox = RowsView()  # the candidate rows, drawn onto one canvas
        self.legend = urwid.Text("")  # wraps: a long sampler description stays readable
        self.pile = urwid.Pile([("pack", self.header), self.listbox])
        self.box = Box(self.pile, title="next token")
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
        rows, pads = [], []
        compare = None if snap.compare is None else ("\u2026" if snap.compare.waiting and not snap.compare.failed
                                                     else "n/a")
        for i, row in enumerate(snap.candidates):
            runs, pad = self._row(row, w, selected=i == snap.selected, sampler=sampler, compare=compare,
                                  raw=filters(snap))
            rows.append(runs)
            pads.append(pad)
        if filters(snap) and not snap.candidates and not snap.waiting:
            rows.append([("na", f"  {empty_note(snap.constraint)}")])
            pads.append(None)
        if snap.waiting:
            note = "waiting for the model\u2026" if snap.status.engine_ready or snap.status.busy else "model not loaded"
            rows.append([("na", f"  {note}")])
            pads.append(None)
        focus = min(snap.selected, len(rows) - 1) if snap.candidates else 0
        self.listbox.set_rows(rows, pads, focus)

    def _row(self, row: CandidateRow, w: dict[str, int], *, selected: bool, sampler: bool,
             compare: str | None = None, raw: bool = False) -> tuple[list, str | None]:
        """The row's runs and its padding's attribute. `compare`: what the compare column
        shows without a value (None: no column)."""
        rank = str(row.rank) if row.rank is not None else "?"
        prob = f"{row.prob * 100:6.2f}%" if row.prob is not None else "n/a"
        marker = f"\u25b8{row.subtree}" if row.explored else ""
        filtered = sampler and row.sampled is None
        plain = "selected" if selected else ("filtered" if filtered else None)
        markup = [
            (plain or "rank", ("\u25b6" if selected else " ") + fit(rank, w["rank"], align="right") + " "),
            (plain or ("special" if row.special else "token"), fit(safe(row.text, mark_combining=True), w["token"])),
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
            markup.append((plain, " "))
            markup += [(f"heat_{level(v)}", "\u2588") for v in row.layers[: w["heat"]]]
        return markup, plain

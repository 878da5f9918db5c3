"""The panes of the explorer screen. Each one is redrawn from a Snapshot by `update()`;
none of them handles keys (the app's keymap does), so they never swallow a binding.
"""

from __future__ import annotations

import urwid

from tokentree.core.snapshot import BranchRow, CandidateRow, Snapshot, TreeLine
from tokentree.tui.palette import LEVELS, gradient_attr, level

_VIEW_GRADIENT = {"probability": "prob", "entropy": "ent", "influence": "inf"}
_VIEW_LEGEND = {
    "probability": ("token probability", "0", "1"),
    "entropy": ("entropy it was chosen from", "certain", "uncertain"),
    "influence": ("on next token", "none", "most"),
}
_LAYER_TITLE = {"layer": "layer probabilities", "layer_norm": "layer-normalized"}


def width_of(text: str) -> int:
    return sum(urwid.str_util.get_width(ord(ch)) for ch in text)


def fit(text: str, width: int) -> str:
    """Cut or pad text to exactly `width` terminal columns (wide characters count 2)."""
    used = width_of(text)
    if used <= width:
        return text + " " * (width - used)
    out, used = [], 0
    for ch in text:
        w = urwid.str_util.get_width(ord(ch))
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "\u2026" + " " * (width - 1 - used)


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
        self.legend = urwid.Text("", wrap="clip")
        self.box = urwid.LineBox(urwid.Pile([self.body, ("pack", self.info), ("pack", self.legend)]),
                                 title="prompt", title_align="left")
        super().__init__(self.box)

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
            own.append(("legend", f"   next: entropy {snap.entropy:.2f} nats ({snap.norm_entropy:.2f} of max)"))
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


class CandidateTable(urwid.WidgetWrap):
    """The next-token table: rank, token, probability, explored marker, layer heat map."""

    TOKEN_WIDTH = 18

    def __init__(self) -> None:
        self.header = urwid.Text("")
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        self.box = urwid.LineBox(urwid.Pile([("pack", self.header), self.listbox]), title="next token",
                                 title_align="left")
        super().__init__(self.box)

    def update(self, snap: Snapshot) -> None:
        layers = snap.num_layers if snap.layer_view != "off" else 0
        head = f"    # {fit('token', self.TOKEN_WIDTH)}    prob  tree"
        if snap.layer_view != "off":
            head += "   layers" + (" (computing\u2026)" if snap.view_pending and not layers else "")
        self.header.set_text(("header", head))
        rows: list[urwid.Widget] = []
        for i, row in enumerate(snap.candidates):
            rows.append(self._row(row, selected=i == snap.selected, layers=layers))
        if snap.waiting:
            note = "waiting for the model\u2026" if snap.status.engine_ready or snap.status.busy else "model not loaded"
            rows.append(urwid.Text(("na", f"  {note}")))
        self.walker[:] = rows
        if snap.candidates:
            self.listbox.set_focus(min(snap.selected, len(rows) - 1))
        title = f"next token \u00b7 {len(snap.candidates)} shown"
        if snap.layer_view != "off":
            title += f" \u00b7 {_LAYER_TITLE[snap.layer_view]}"
        self.box.set_title(title)

    def _row(self, row: CandidateRow, *, selected: bool, layers: int) -> urwid.Widget:
        rank = f"{row.rank:>4}" if row.rank is not None else "   ?"
        prob = f"{row.prob * 100:6.2f}%" if row.prob is not None else "    n/a"
        marker = f"\u25b8{row.subtree:<4}" if row.explored else "     "
        plain = "selected" if selected else None
        markup = [
            (plain or "rank", ("\u25b6" if selected else " ") + rank + " "),
            (plain or "token", fit(row.text, self.TOKEN_WIDTH)),
            (plain or "prob_text", " " + prob + "  "),
            (plain or "explored", marker),
        ]
        if layers and row.layers:
            markup.append(" ")
            markup += [(f"heat_{level(v)}", "\u2588") for v in row.layers]
        return urwid.AttrMap(urwid.Text(markup, wrap="clip"), plain)


class BranchList(urwid.WidgetWrap):
    """Every branch: depth, appended tokens, their total log-probability and perplexity."""

    def __init__(self) -> None:
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        header = urwid.Text(("header", f"  {fit('name', 10)} {'len':>4} {'+app':<4} {'logprob':>7} {'ppl':>7}"),
                            wrap="clip")
        self.box = urwid.LineBox(urwid.Pile([("pack", header), self.listbox]), title="branches",
                                 title_align="left")
        super().__init__(self.box)

    def update(self, snap: Snapshot) -> None:
        self.walker[:] = [self._row(b) for b in snap.branches]
        focus = next((i for i, b in enumerate(snap.branches) if b.focused), 0)
        if snap.branches:
            self.listbox.set_focus(focus)
        self.box.set_title(f"branches \u00b7 {len(snap.branches)}")

    @staticmethod
    def _row(b: BranchRow) -> urwid.Widget:
        stats = f"{b.depth:>4} +{b.appended:<3}"
        if b.logprob is not None:
            stats += f" {b.logprob:7.1f} {b.perplexity:7.3g}"
        elif b.appended:
            stats += "       \u2026       \u2026"
        pointer = "\u25b6" if b.focused else " "
        text = f"{pointer} {fit(b.name, 10)} {stats}"
        return urwid.AttrMap(urwid.Text(text, wrap="clip"), "branch_focus" if b.focused else "branch")


class TreePane(urwid.WidgetWrap):
    """The tree overview (t): forks and branch positions, single-child chains collapsed."""

    def __init__(self) -> None:
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        super().__init__(urwid.LineBox(self.listbox, title="tree", title_align="left"))

    def update(self, lines: tuple[TreeLine, ...]) -> None:
        rows = []
        focus = 0
        for i, line in enumerate(lines):
            # Branch names before the text: the pane is narrow and clips long segments, and
            # which branch ends where is what the overview is for.
            markup = [("tree_line", line.indent)]
            if line.branches:
                markup.append(("tree_branch", "[" + ", ".join(line.branches) + "] "))
            markup.append(("tree_current" if line.current else "tree_text", line.text))
            if line.current:
                focus = i
            rows.append(urwid.Text(markup, wrap="clip"))
        self.walker[:] = rows
        if rows:
            self.listbox.set_focus(focus)


class StatusBar(urwid.WidgetWrap):
    """Message line, then: model, device, dtype, session, cache or forward pass, busy, hint."""

    def __init__(self, hint: str) -> None:
        self.hint = hint
        self.message = urwid.Text("")
        self.line = urwid.Text("", wrap="clip")
        self.line_map = urwid.AttrMap(self.line, "status")
        super().__init__(urwid.Pile([self.message, self.line_map]))

    def update(self, snap: Snapshot) -> None:
        st = snap.status
        if st.error:
            self.message.set_text(("error", st.error))
        else:
            self.message.set_text(("message", snap.message or ""))
        if st.origin == "forward":
            origin = f"forward pass {st.ms:.0f} ms" if st.ms is not None else "forward pass"
        elif st.origin == "cache":
            origin = "from cache"
        else:
            origin = "not computed yet"
        # Busy state first: it is what a user waits on, and the line may be clipped.
        busy = f" \u23f3 {st.busy}\u2026" if st.busy else " idle"
        model = " \u00b7 ".join([st.model, st.device, st.dtype, f"session {st.session_id}"])
        self.line.set_text([("status_busy" if st.busy else "status", busy),
                            f" \u2502 {origin} \u2502 {model} \u2502 {self.hint}"])


class HelpView(urwid.WidgetWrap):
    """The help overlay, generated from the keymap."""

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        width = max(len(k) for k, _, _ in rows) + 2
        lines = [urwid.Text(("title", "tokentree keys  (any key closes this)")), urwid.Divider()]
        for keys, name, text in rows:
            lines.append(urwid.Text([("help_key", keys.ljust(width)), f"{name}: {text}"]))
        body = urwid.ListBox(urwid.SimpleListWalker(lines))
        super().__init__(urwid.AttrMap(urwid.LineBox(body, title="help"), "help"))

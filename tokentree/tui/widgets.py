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
        self.legend = urwid.Text("")  # wraps: a long sampler description stays readable
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
    """The next-token table: rank, token, probability, sampler column (v), explored marker,
    layer heat map. Fits a 48-column pane (an 80-column terminal) with the sampler column on."""

    TOKEN_WIDTH = 18

    def __init__(self) -> None:
        self.header = urwid.Text("")
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        self.legend = urwid.Text("")  # wraps: a long sampler description stays readable
        self.pile = urwid.Pile([("pack", self.header), self.listbox])
        self.box = urwid.LineBox(self.pile, title="next token", title_align="left")
        super().__init__(self.box)

    def update(self, snap: Snapshot) -> None:
        layers = snap.num_layers if snap.layer_view != "off" else 0
        sampler = snap.sampler is not None
        head = f"    # {fit('token', self.TOKEN_WIDTH)}    prob" + (" sample" if sampler else "") + "  tree"
        if snap.layer_view != "off":
            head += "   layers" + (" (computing\u2026)" if snap.view_pending and not layers else "")
        self.header.set_text(("header", head))
        rows: list[urwid.Widget] = []
        for i, row in enumerate(snap.candidates):
            rows.append(self._row(row, selected=i == snap.selected, layers=layers, sampler=sampler))
        if snap.waiting:
            note = "waiting for the model\u2026" if snap.status.engine_ready or snap.status.busy else "model not loaded"
            rows.append(urwid.Text(("na", f"  {note}")))
        self.walker[:] = rows
        if snap.candidates:
            self.listbox.set_focus(min(snap.selected, len(rows) - 1))
        title = f"next token \u00b7 {len(snap.candidates)} shown"
        if sampler:
            title += " \u00b7 sampler"
        if snap.layer_view != "off":
            title += f" \u00b7 {_LAYER_TITLE[snap.layer_view]}"
        self.box.set_title(title)
        # The sampler's settings on a legend line under the table (a title would be clipped).
        parts = [(self.header, ("pack", None)), (self.listbox, ("weight", 1))]
        if sampler:
            self.legend.set_text([("legend", "sampler "), ("sampled", snap.sampler),
                                  ("legend", " \u00b7 "), ("filtered", "dim"), ("legend", ": filtered out")])
            parts.append((self.legend, ("pack", None)))
        if len(self.pile.contents) != len(parts):
            self.pile.contents[:] = parts
            self.pile.focus_position = 1

    def _row(self, row: CandidateRow, *, selected: bool, layers: int, sampler: bool = False) -> urwid.Widget:
        rank = f"{row.rank:>4}" if row.rank is not None else "   ?"
        prob = f"{row.prob * 100:6.2f}%" if row.prob is not None else "    n/a"
        marker = f"\u25b8{row.subtree:<4}" if row.explored else "     "
        filtered = sampler and row.sampled is None
        plain = "selected" if selected else ("filtered" if filtered else None)
        markup = [
            (plain or "rank", ("\u25b6" if selected else " ") + rank + " "),
            (plain or "token", fit(row.text, self.TOKEN_WIDTH)),
            (plain or "prob_text", " " + prob + " "),
        ]
        if sampler:
            cell = f"{row.sampled * 100:5.1f}%" if row.sampled is not None else "     \u00b7"
            markup.append((plain or "sampled", cell))
        markup += [(plain or "prob_text", " "), (plain or "explored", marker)]
        if layers and row.layers:
            markup.append(" ")
            markup += [(f"heat_{level(v)}", "\u2588") for v in row.layers]
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


class BranchList(urwid.WidgetWrap):
    """Every branch: depth, appended tokens, their total log-probability and perplexity.
    While a branch is renamed, its row is the text field (`editor`)."""

    def __init__(self) -> None:
        self.walker = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        self.editor: urwid.Widget | None = None
        header = urwid.Text(("header", f"  {fit('name', 10)} {'len':>4} {'+app':<4} {'logprob':>7} {'ppl':>7}"),
                            wrap="clip")
        self.box = urwid.LineBox(urwid.Pile([("pack", header), self.listbox]), title="branches",
                                 title_align="left")
        super().__init__(self.box)

    def update(self, snap: Snapshot) -> None:
        rows = [self._row(b) for b in snap.branches]
        focus = next((i for i, b in enumerate(snap.branches) if b.focused), 0)
        if self.editor is not None:
            field = urwid.AttrMap(self.editor, "edit")
            if rows:
                rows[focus] = field
            else:
                rows.append(field)
        self.walker[:] = rows
        if rows:
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
    """Message line (or the search field while it is open), then: busy, cache or forward
    pass, model, device, dtype, session, hint. A search's position leads the message line."""

    def __init__(self, hint: str, cancel_hint: str = "esc") -> None:
        self.hint = hint
        self.cancel_hint = cancel_hint  # the key that stops a fill, as bound
        self.message = urwid.Text("")
        self.line = urwid.Text("", wrap="clip")
        self.line_map = urwid.AttrMap(self.line, "status")
        self.pile = urwid.Pile([self.message, self.line_map])
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
        search = [("search", snap.search), "  "] if snap.search else []
        if st.error:
            self.message.set_text(search + [("error", st.error)])
        elif search or snap.message:
            self.message.set_text(search + [("message", snap.message or "")])
        else:
            self.message.set_text("")
        if st.origin == "forward":
            origin = f"forward pass {st.ms:.0f} ms" if st.ms is not None else "forward pass"
        elif st.origin == "cache":
            origin = "from cache"
        else:
            origin = "not computed yet"
        # Busy state first: it is what a user waits on, and the line may be clipped.
        stop = f" \u00b7 {self.cancel_hint} stops" if st.cancellable else ""
        busy = f" \u23f3 {st.busy}{stop}\u2026" if st.busy else " idle"
        model = " \u00b7 ".join([st.model, st.device, st.dtype, f"session {st.session_id}"])
        lead = [("edit_caption", f" {self.field_hint} "), " "] if self.field_hint else []
        self.line.set_text([*lead, ("status_busy" if st.busy else "status", busy),
                            f" \u2502 {origin} \u2502 {model} \u2502 {self.hint}"])


class HelpView(urwid.WidgetWrap):
    """The help overlay, generated from the keymap. The scroll keys move it (the list is
    longer than a small terminal); any other key closes it."""

    SCROLL_KEYS = ("up", "down", "page up", "page down", "home", "end")

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        width = max(len(k) for k, _, _ in rows) + 2
        lines = [urwid.Text(("title", "tokentree keys  (\u2191\u2193 pgup pgdn scroll, any other key closes)")),
                 urwid.Divider()]
        for keys, name, text in rows:
            lines.append(urwid.Text([("help_key", keys.ljust(width)), f"{name}: {text}"]))
        self.lines = lines
        self.body = urwid.ListBox(urwid.SimpleListWalker(lines))
        self._size: tuple[int, int] | None = None
        super().__init__(urwid.AttrMap(urwid.LineBox(self.body, title="help"), "help"))

    def render(self, size, focus: bool = False):
        self._size = (size[0] - 2, size[1] - 2)  # the list inside the box's borders
        return super().render(size, focus)

    def scroll(self, key: str) -> None:
        self.body.keypress(self._size or (78, 20), key)

"""The prompt pane: the current branch's text, coloured by the prompt view (plain,
probability, entropy, influence, disagreement), the last token's numbers and a legend line.
"""

from __future__ import annotations

import urwid

from tokentree.core.snapshot import Snapshot, Turn
from tokentree.tui.cells import safe_markup
from tokentree.tui.layout import BottomText, Box
from tokentree.tui.palette import LEVELS, gradient_attr

__all__ = ["PromptPane", "line_tail"]


def line_tail(markup: list, chars: int) -> list:
    """The end of `markup` (attribute, text) from the start of a line, holding at least
    `chars` characters; all of it where no line starts early enough. A cut at a line start
    wraps the rest exactly as the whole text wraps it."""
    total = 0
    for i in range(len(markup) - 1, -1, -1):
        total += len(markup[i][1])
        if total < chars:
            continue
        for j in range(i - 1, -1, -1):
            attr, text = markup[j]
            nl = text.rfind("\n")
            if nl >= 0:
                rest = text[nl + 1:]
                return ([(attr, rest)] if rest else []) + list(markup[j + 1:])
        return markup
    return markup

_VIEW_GRADIENT = {"probability": "prob", "entropy": "ent", "influence": "inf", "disagreement": "dis"}
_VIEW_LEGEND = {
    "probability": ("token probability", "0", "1"),
    "entropy": ("entropy it was chosen from", "certain", "uncertain"),
    "influence": ("on next token", "none", "most"),
    "disagreement": ("|\u0394 log p| between the two models", "0", "\u22653 nats"),
}


class PromptPane(urwid.WidgetWrap):
    """The current branch's text, coloured by the prompt view, and a legend line."""

    def __init__(self) -> None:
        self.body = BottomText()
        self.info = urwid.Text("", wrap="clip")
        self.legend = urwid.Text("")  # wraps: a long sampler description stays readable
        self.box = Box(urwid.Pile([self.body, ("pack", self.info), ("pack", self.legend)]), title="prompt")
        self._shown: tuple = (None, None, None)  # the body, legend and info markup last set
        # The pane shows the end of the text: only a tail that would fill it twice is laid out
        # (a 1,000-token prompt costs as much as the part in view). `screen_cells`: the most
        # cells the pane had at the last draw; `_cut_for`: the size the text set was cut for.
        self.screen_cells: int | None = None
        self._full: list = []
        self._cut_for: int | None = None
        super().__init__(self.box)

    def fit_screen(self, cells: int) -> None:
        """The pane may take up to `cells` cells: a text cut for a smaller pane is cut again."""
        self.screen_cells = cells
        if self._cut_for is not None and cells > self._cut_for:
            self._cut_for = cells
            self.body.set_markup(line_tail(self._full, 2 * cells))

    def rows_needed(self, maxcol: int) -> int:
        """The pane's height with all of its text in view: the wrapped prompt, the info and
        legend lines, the borders."""
        inner = (max(1, maxcol - 2),)
        return self.body.rows_needed(inner[0]) + self.info.rows(inner) + self.legend.rows(inner) + 2

    def update(self, snap: Snapshot) -> None:
        kind = _VIEW_GRADIENT.get(snap.prompt_view)
        markup = []
        starts = {turn.start: turn for turn in snap.turns}
        skip_to = 0
        for k, tok in enumerate(snap.prompt):
            turn = starts.get(k)
            if turn is not None:
                skip_to = self._turn_header(markup, snap, turn)
            if k < skip_to or not tok.text:
                continue  # a folded turn, or the first bytes of a character completed by a later token
            if kind is None:
                attr = "special" if tok.special else "appended" if tok.appended else "prompt"
            else:
                attr = gradient_attr(kind, tok.value)
            markup.append((attr, tok.text))
        markup = safe_markup(markup)  # judged as one text: a sequence split across tokens
        markup.append(("cursor", "\u258f"))
        # Set only what changed: a new text is laid out again and the pane drawn again.
        if markup != self._shown[0]:
            self._full, self._cut_for = markup, self.screen_cells
            self.body.set_markup(line_tail(markup, 2 * self.screen_cells) if self.screen_cells else markup)
        legend, info = self._legend(snap), self._info(snap)
        if legend != self._shown[1]:
            self.legend.set_text(legend)
        if info != self._shown[2]:
            self.info.set_text(info)
        self._shown = (markup, legend, info)
        self.box.set_title(f"prompt \u00b7 {snap.prompt_view} view")

    @staticmethod
    def _turn_header(markup: list, snap: Snapshot, turn: Turn) -> int:
        """A turn's role label on a line of its own; a folded turn is that line alone, with
        its size and start. Returns the index of the first token still to draw."""
        if markup and not markup[-1][1].endswith("\n"):
            markup.append(("prompt", "\n"))
        if not turn.folded:
            markup.append(("role", f" {turn.role} "))
            markup.append(("prompt", "\n"))
            return turn.start
        later = [t.start for t in snap.turns if t.start > turn.start]
        end = later[0] if later else len(snap.prompt)
        text = " ".join("".join(t.text for t in snap.prompt[turn.start:end] if not t.special).split())
        text = text.removeprefix(turn.role).lstrip()  # the header's own role word
        preview = text[:60] + ("\u2026" if len(text) > 60 else "")
        markup.append(("role_folded", f"\u25b8 {turn.role} \u00b7 {end - turn.start} tokens \u00b7 {preview}\n"))
        return end

    @staticmethod
    def _info(snap: Snapshot):
        """The last token's own numbers; a first token has no distribution: n/a."""
        if not snap.prompt:
            return ""
        if snap.last_pending:  # its node is being computed: not "n/a", just not yet
            own = [("legend", "last token p "), ("message", "computing\u2026")]
        elif snap.last_prob is None:
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

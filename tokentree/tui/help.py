"""The help overlay (?): the keys generated from the keymap, then `LEGEND`, the notation the
screen uses; it scrolls, and is sized to the terminal.
"""

from __future__ import annotations

import urwid

from tokentree.tui.cells import width_of

__all__ = ["LEGEND", "HelpOverlay", "HelpView"]


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

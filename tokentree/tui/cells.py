"""Terminal cells: how wide text is on screen, cutting and padding it, and text a terminal
draws as wide as urwid counts it.

Every place in the TUI that pads or cuts text goes through here, never `len()`: widths are
urwid's (`calc_width`, grapheme clusters through wcwidth), which is how urwid lays out a row.

Terminals disagree with urwid (and with each other) on a few sequences; a row that holds
one then pushes the pane's right border, or leaves a stray border cell after a redraw.
`safe` rewrites those for the screen only (the store, exports and searches keep the real
text), so the terminal's count and urwid's agree:

- format characters (category Cf: zero-width joiner and space, bidi controls, soft hyphen,
  BOM, tag characters) are written out as escapes, ``\\u200d``, like control characters
  are: they are invisible, may reorder a line, and join emoji that tmux draws 2 columns
  wide and urwid counts 2, but other terminals and pyte draw 6;
- a variation selector (U+FE00..FE0F) after a character is dropped: it picks emoji or text
  presentation, and ❤️ is 1 column in tmux, 2 in urwid; on its own it is an escape;
- an emoji skin-tone modifier (U+1F3FB..1F3FF) after a wide character is dropped: tmux
  draws 👍🏽 4 columns wide, urwid counts 2; on its own it is an ordinary wide emoji;
- a regional indicator without its pair (half a flag, as a token often is) is an escape:
  tmux draws it 1 column wide, urwid counts 2; a pair (a flag, 🇫🇷) stays;
- with `mark_combining`, a combining mark with nothing before it (a token that starts with
  one) sits on a dotted circle ◌, as in Unicode charts, instead of on the cell before it.

CJK and plain emoji are wide everywhere and stay as they are.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence

from urwid.str_util import calc_text_pos, calc_width

ELLIPSIS = "\u2026"
DOTTED_CIRCLE = "\u25cc"

_MODIFIERS = range(0x1F3FB, 0x1F400)
_REGIONAL = range(0x1F1E6, 0x1F200)
_SELECTORS = range(0xFE00, 0xFE10)


def width_of(text: str) -> int:
    """Terminal columns of `text`, as urwid counts them (wide characters 2, marks 0)."""
    return calc_width(text, 0, len(text)) if text else 0


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _is_wide(ch: str) -> bool:
    return width_of(ch) == 2


def _safe_chars(text: str, *, mark_combining: bool) -> list[str]:
    """One output string per character of `text` (see the module doc)."""
    out: list[str] = []
    prev = ""  # the last character drawn (not dropped)
    run = 0  # regional indicators in a row so far
    n = len(text)
    for i, ch in enumerate(text):
        code = ord(ch)
        if code in _REGIONAL:
            run += 1
            paired = run % 2 == 0 or (i + 1 < n and ord(text[i + 1]) in _REGIONAL)
            piece = ch if paired else _escape(ch)
        else:
            run = 0
            if code in _SELECTORS:
                piece = "" if prev and not prev.isspace() else _escape(ch)
            elif code in _MODIFIERS and prev and _is_wide(prev):
                piece = ""
            elif code < 0x80:
                piece = ch
            elif unicodedata.category(ch) == "Cf":
                piece = _escape(ch)
            elif mark_combining and (not prev or prev == "\n") and unicodedata.combining(ch):
                piece = DOTTED_CIRCLE + ch
            else:
                piece = ch
        out.append(piece)
        if piece:
            prev = piece[-1]
    return out


def safe(text: str, *, mark_combining: bool = False) -> str:
    """`text` as the screen shows it: a terminal draws it exactly `width_of` columns wide."""
    if text.isascii():
        return text
    return _safe_text(text, mark_combining)


@functools.lru_cache(maxsize=8192)  # token texts repeat on every key press; the function is pure
def _safe_text(text: str, mark_combining: bool) -> str:
    return "".join(_safe_chars(text, mark_combining=mark_combining))


@functools.lru_cache(maxsize=16)
def _safe_whole(whole: str) -> tuple[str, ...]:
    return tuple(_safe_chars(whole, mark_combining=False))


def safe_markup(pieces: Sequence[tuple[object, str]]) -> list[tuple[object, str]]:
    """`safe` over (attribute, text) pieces that read as one text (the prompt pane's tokens):
    a sequence split across pieces is judged whole, and each piece keeps its attribute."""
    whole = "".join(text for _, text in pieces)
    if whole.isascii():
        return list(pieces)
    chars = _safe_whole(whole)
    out, at = [], 0
    for attr, text in pieces:
        out.append((attr, "".join(chars[at : at + len(text)])))
        at += len(text)
    return out


def cut(text: str, width: int) -> str:
    """The longest start of `text` at most `width` columns wide (never half a character)."""
    if width <= 0:
        return ""
    pos, _ = calc_text_pos(text, 0, len(text), width)
    return text[:pos]


def cut_start(text: str, width: int) -> str:
    """The longest end of `text` at most `width` columns wide (never half a character)."""
    if width <= 0:
        return ""
    if width_of(text) <= width:
        return text
    lo, hi = 0, len(text)  # the smallest start whose rest fits
    while lo < hi:
        mid = (lo + hi) // 2
        if width_of(text[mid:]) <= width:
            hi = mid
        else:
            lo = mid + 1
    return text[lo:]


def fit(text: str, width: int, *, keep: str = "start", align: str = "left", head: int = 0) -> str:
    """`text` cut or padded to exactly `width` columns; '…' marks a cut.

    keep: "start" cuts the end, "end" cuts the start, "middle" keeps up to `head` columns of
    the start and as much of the end as fits. align: where the padding goes ("left": after)."""
    if width <= 0:
        return ""
    used = width_of(text)
    if used > width:
        if keep == "end":
            text = ELLIPSIS + cut_start(text, width - 1)
        elif keep == "middle" and head > 0 and width > head + 2:
            start = cut(text, head)
            text = start + ELLIPSIS + cut_start(text, width - 1 - width_of(start))
        elif keep == "middle":
            text = ELLIPSIS + cut_start(text, width - 1)
        else:
            text = cut(text, width - 1) + ELLIPSIS
        used = width_of(text)
        if used > width:  # a mark after the cut joined the '…' differently: cut it off
            text = cut(text, width)
            used = width_of(text)
    pad = " " * (width - used)  # a wide character that did not fit leaves one blank cell
    return pad + text if align == "right" else text + pad

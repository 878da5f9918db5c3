"""The one place token bytes become visible text. No torch, no urwid.

Tokens are byte strings: a byte-level BPE token can end in the middle of a UTF-8 character,
so bytes are decoded in runs (a split character shows whole) and only for display. Every
view escapes alike, as Python's repr does: bytes that never form a character and control
characters as \\xNN (never U+FFFD or a raw control code), the line and paragraph separators
as \\u2028 / \\u2029. Views differ only in how they show whitespace.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping

NEWLINE, TAB, SPACE = "\u23ce", "\u21e5", "\u00b7"  # ⏎ ⇥ ·
ELLIPSIS = "\u2026"


def placeholder(token_id: int) -> str:
    """A token's text while its bytes are unknown: ⟨id⟩ (the same on screen and in exports)."""
    return f"\u27e8{token_id}\u27e9"


SPECIAL_OPEN, SPECIAL_CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧


def special_piece(piece: bytes) -> bytes:
    """A special token's bytes as every view shows them: its name in ⟦ ⟧, so <|im_end|> the
    token never reads like the characters <|im_end|> typed in a prompt."""
    return (SPECIAL_OPEN + piece.decode("utf-8", "replace") + SPECIAL_CLOSE).encode("utf-8")


def shown_bytes(piece: bytes | None, token_id: int) -> bytes:
    """A token's bytes, or its placeholder's when they are unknown.

    The placeholder starts with a UTF-8 lead byte, so it also ends an unfinished character
    before it, exactly as decoding the runs on either side separately would."""
    return piece if piece is not None else placeholder(token_id).encode()


# Invalid bytes are decoded to lone surrogates (surrogateescape) and escaped in the same
# translate pass that escapes control characters, so an escape is never re-escaped.
_ESCAPES: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}  # all of Cc
_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029)})
_ESCAPES.update({0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)})

_KEEP_BREAKS = {c: e for c, e in _ESCAPES.items() if c not in (0x0A, 0x09)}  # prompt pane, markdown
_MARKED = {**_ESCAPES, 0x0A: NEWLINE, 0x09: TAB}  # one-line views: tree pane, candidate table
_EXPORT = {**_MARKED, 0x20: SPACE}  # text and dot exports: every space visible
_QUOTED = {**_ESCAPES, 0x5C: "\\\\", 0x22: '\\"', 0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}  # export --ascii


def decode(data: bytes) -> str:
    """Bytes as text, invalid bytes as \\xNN and nothing else changed (for JSON, which
    escapes control characters itself)."""
    return data.decode("utf-8", "backslashreplace")


def token_text(piece: bytes | None, token_id: int) -> str:
    """One token on its own as data: `decode`, or its placeholder."""
    return placeholder(token_id) if piece is None else piece.decode("utf-8", "backslashreplace")


def show_controls(text: str) -> str:
    """Text with newlines and tabs kept, other control characters escaped (the prompt pane)."""
    if text.isprintable():  # the common case: nothing to do
        return text
    return text.translate(_KEEP_BREAKS)


def one_line(text: str) -> str:
    """Text on one line: newline ⏎, tab ⇥, other control characters escaped."""
    if text.isprintable():
        return text
    return text.translate(_MARKED)


def visible(piece: bytes) -> str:
    """One token for the candidate table: leading spaces '·', then `one_line`.

    Special-token names such as '<|endoftext|>' are plain text and come out as is."""
    text = piece.decode("utf-8", "surrogateescape")
    body = text.lstrip(" ")
    return SPACE * (len(text) - len(body)) + body.translate(_MARKED)


def join_pieces(ids: Iterable[int], pieces: Mapping[int, bytes]) -> str:
    """Several tokens' text as one string (a tree pane segment), as the prompt pane shows it.

    Their bytes are decoded together, so a character split across them shows whole; an id
    missing from `pieces` shows as its placeholder; then `show_controls`."""
    get = pieces.get
    data = b"".join([shown_bytes(get(i), i) for i in ids])
    return show_controls(data.decode("utf-8", "surrogateescape"))


def shorten(text: str, width: int, *, keep_end: bool = False) -> str:
    """At most `width` characters, '…' marking the cut (at the start with `keep_end`)."""
    if len(text) <= width:
        return text
    return ELLIPSIS + text[-(width - 1):] if keep_end else text[: width - 1] + ELLIPSIS


class SegmentDecoder:
    """Decodes the segments of a tree parent first (exports): a character split across a
    fork point is shown whole in each child segment. Its leading bytes show as escapes only
    at a leaf, or where the segment would otherwise be empty."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")

    def __call__(self, data: bytes, carry: bytes, *, leaf: bool) -> tuple[str, bytes]:
        """(text, carry for the child segments); the text is for `label` (invalid bytes are
        still lone surrogates), `carry` the parent's unfinished character."""
        decoder = self._decoder
        decoder.setstate((carry, 0))
        text = decoder.decode(data)
        carry = decoder.getstate()[0]
        if carry and (leaf or not text):
            text += carry.decode("utf-8", "surrogateescape")
        return text, carry


def label(text: str, *, quoted: bool = False) -> str:
    """A `SegmentDecoder` text in a text or dot export: every space, newline and tab visible
    (· ⏎ ⇥), or with `quoted` a double-quoted string with backslash escapes (ASCII drawing)."""
    if quoted:
        return '"' + text.translate(_QUOTED) + '"'
    return text.translate(_EXPORT)

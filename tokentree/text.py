"""Pure display helpers for token pieces (raw bytes). No torch, no urwid.

Tokens are byte strings: a byte-level BPE token can end in the middle of a UTF-8 character,
so a piece is only decoded for display, never stored as text.
"""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Sequence

_MARKS = {"\n": "\u23ce", "\t": "\u21e5"}  # ⏎ ⇥
_LEADING_SPACE = "\u00b7"  # ·


def _escape(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04x}"


def visible(piece: bytes) -> str:
    """One token for the candidate table: whitespace and controls made visible.

    Leading spaces become '·', newlines '⏎', tabs '⇥'; other control characters and bytes
    that are not valid UTF-8 on their own become \\xNN escapes (never '�'). Special-token
    names such as '<|endoftext|>' are plain text and come out as is.
    """
    # backslashreplace turns each invalid byte into the literal text '\xNN'.
    text = piece.decode("utf-8", errors="backslashreplace")
    stripped = text.lstrip(" ")
    out = [_LEADING_SPACE * (len(text) - len(stripped))]
    for ch in stripped:
        if ch in _MARKS:
            out.append(_MARKS[ch])
        elif unicodedata.category(ch) == "Cc":
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


def prompt_pieces(pieces: Sequence[bytes]) -> list[str]:
    """Per-token text for the prompt pane, so each token can be coloured on its own.

    A character split across tokens appears whole on the token that completes it (the earlier
    fragments are ''), so for valid UTF-8 ''.join(result) equals the decoded text. Bytes that
    never form a character, and control characters other than newline and tab, show as \\xNN
    escapes rather than '\ufffd' or invisible codes.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
    out = [decoder.decode(piece, final=False) for piece in pieces]
    tail = decoder.decode(b"", final=True)  # an unfinished character at the very end
    if tail:
        out[-1] += tail
    return [show_controls(text) for text in out]


def show_controls(text: str) -> str:
    """Control characters other than newline and tab as \\xNN escapes (prompt-pane text)."""
    if text.isprintable():  # the common case: nothing to do
        return text
    return "".join(
        _escape(ch) if ch not in _MARKS and unicodedata.category(ch) == "Cc" else ch for ch in text
    )


def placeholder(token_id: int) -> str:
    """A token's text until its bytes are known: ⟨id⟩."""
    return f"\u27e8{token_id}\u27e9"

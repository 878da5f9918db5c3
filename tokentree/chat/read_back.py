"""A branch's tokens read back as the conversation they hold: each turn's role and text (the
JSON export's `conversation`), so an exploration's answers leave tokentree as messages."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tokentree.chat.format import ChatFormat, turns


def conversation_of(ids: Sequence[int], fmt: ChatFormat, piece: Callable[[int], bytes],
                    special: frozenset[int]) -> list[dict[str, str]]:
    """[{"role", "content"}] for each turn in `ids`: the turn's text without its special
    tokens and its header line (`user\\n`, Llama-3's `user` + `\\n\\n`), stripped. The last
    turn is the one being explored: an assistant answer still open is its text so far."""
    found = turns(ids, fmt, piece)
    out = []
    for k, (start, role) in enumerate(found):
        end = found[k + 1][0] if k + 1 < len(found) else len(ids)
        data = b"".join(piece(t) for t in ids[start + 1:end] if t not in special and t not in fmt.closers)
        text = data.decode("utf-8", "replace")
        head, newline, rest = text.partition("\n")
        if newline and head.strip() == role:
            text = rest  # the header's role line
        out.append({"role": role, "content": text.strip()})
    return out

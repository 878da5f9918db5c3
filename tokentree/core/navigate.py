"""Where to go: fork points along a path, and search matches in a session's tree. Pure
functions over plain data (no store, no model), so they are tested on their own."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Mapping, Sequence


def is_fork(norm_entropy: float | None, children: int, threshold: float) -> bool:
    """A node is a fork point when the model was unsure what comes next (its next-token
    distribution's normalized entropy is above `threshold`) or the tree branches there."""
    return children > 1 or (norm_entropy is not None and norm_entropy > threshold)


def next_fork(path: Sequence, start: int, step: int, fork: Callable[[object], bool]) -> int | None:
    """Index in `path` of the first fork point after (step +1) or before (step -1) `start`,
    or None. Only fork points strictly on that side count."""
    k = start + step
    while 0 <= k < len(path):
        if fork(path[k]):
            return k
        k += step
    return None


def search_matches(nodes: Iterable, pieces: Mapping[int, bytes], query: str) -> list[int]:
    """Ids of the nodes where `query` (case-insensitive) first appears in the text from the
    root to the node: the node whose token completes the match. Parents come before their
    children in `nodes` (records with id, parent_id, token_id); the result keeps that order.

    Streams each path's last few characters instead of whole texts: O(nodes x query)."""
    needle = query.casefold()
    if not needle:
        return []
    keep = len(needle) - 1
    tails: dict[int, tuple[str, object]] = {}  # node id -> (its path's last chars, decoder state)
    found: set[int] = set()  # nodes whose path already contains the query
    out: list[int] = []
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for node in nodes:
        parent = node.parent_id
        if parent is not None and parent in found:
            found.add(node.id)  # the match is higher up: only its first node counts
            continue
        tail, state = tails.get(parent, ("", (b"", 0))) if parent is not None else ("", (b"", 0))
        decoder.setstate(state)
        text = tail + decoder.decode(pieces.get(node.token_id, b""), final=False).casefold()
        if needle in text:
            found.add(node.id)
            out.append(node.id)
            continue
        tails[node.id] = (text[-keep:] if keep else "", decoder.getstate())
    return out

"""The JSON export: the `tokentree-export` document (version 2), one node per line.

Version 2 added each node's own next-token distribution, "next" (README: format versions).
(Within the package, `import json` still finds the standard library: imports are absolute.)
"""

from __future__ import annotations

import json
import math

from tokentree.chat.read_back import conversation_of
from tokentree.chat.format import ChatFormat
from tokentree.export.loader import ExportTree, constraint_state, gc_paused
from tokentree.tree.text import decode, shown_bytes, token_text

FORMAT_NAME = "tokentree-export"
VERSION = 2


def _json_num(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return repr(value) if math.isfinite(value) else "null"


@gc_paused()
def render_json(tree: ExportTree, *, top_k: int | None = None) -> str:
    """`top_k` cuts each node's candidate lists, "top" and "next"'s (default: every cached
    candidate)."""
    dump = lambda obj: json.dumps(obj, ensure_ascii=False)  # noqa: E731
    pieces = tree.pieces
    by_id = {n.id: n for n in tree.nodes}
    stored = tree.session.get("chat")
    chat = None if stored is None else ChatFormat(frozenset(stored["end_of_turn"]), frozenset(stored["openers"]),
                                                  frozenset(stored.get("closers", ())))
    branches = []
    for b in tree.branches:
        data = b"".join(shown_bytes(by_id[i].piece, by_id[i].token_id) for i in b.node_ids if i in by_id)
        branches.append(
            {"id": b.id, "name": b.name, "focused": b.focused, "token_ids": list(b.token_ids), "text": decode(data)}
        )
        if b.messages is not None:  # a chat root: the conversation its tokens were rendered from
            branches[-1]["messages"] = [dict(m) for m in b.messages]
        if chat is not None:  # the whole conversation on the branch, answers and added turns too
            get = lambda t: pieces.get(t, b"")  # noqa: E731
            branches[-1]["conversation"] = conversation_of(b.token_ids, chat, get, tree.special)
        if b.constraint is not None:  # the regex constraint in force (r), and where the text stands
            branches[-1]["constraint"] = {**b.constraint, "state": constraint_state(b, by_id)}
    lines = [
        "{",
        f'"format": {dump(FORMAT_NAME)},',
        f'"version": {VERSION},',
        f'"session": {dump(dict(tree.session))},',
        f'"model": {dump(dict(tree.model))},',
        '"branches": [',
    ]
    if branches:
        lines.append(",\n".join(dump(b) for b in branches))
    lines += ["],", '"nodes": [', ""]
    # Built by hand rather than json.dumps per node: the same bytes, several times faster
    # (a 100,000-node tree with 64 candidates per node is millions of entries). One flat
    # list joined once: the document can be hundreds of MB, and every copy of it costs.
    class _TopPrefix(dict):
        def __missing__(self, tid: int) -> str:
            value = self[tid] = f'{{"token_id": {tid}, "text": {dump(token_text(pieces.get(tid), tid))}, "prob": '
            return value

    prefix = _TopPrefix()
    isfinite = math.isfinite

    # A node's "next" list is its children's "top" list: the loader shares one cache record's
    # tuples between them, so each list is written once (keyed by identity: the tree keeps
    # every tuple alive while this runs).
    written: dict[tuple[int, int], str] = {}

    def candidates(ids: tuple[int, ...], probs: tuple[float, ...]) -> str:
        key = (id(ids), id(probs))
        if (text := written.get(key)) is not None:
            return text
        cut_ids, cut_probs = (ids, probs) if top_k is None else (ids[:top_k], probs[:top_k])
        if all(map(isfinite, cut_probs)):
            text = ", ".join([f"{prefix[tid]}{p!r}}}" for tid, p in zip(cut_ids, cut_probs)])
        else:
            text = ", ".join([f"{prefix[tid]}{_json_num(p)}}}" for tid, p in zip(cut_ids, cut_probs)])
        written[key] = text
        return text

    parts = ["\n".join(lines)]
    add = parts.extend
    special = tree.special
    for i, n in enumerate(tree.nodes):
        add((",\n" if i else "",
             f'{{"id": {n.id}, "parent": {_json_num(n.parent)}, "token_id": {n.token_id}, '
             f'"text": {dump(token_text(n.piece, n.token_id))}, '
             + ('"special": true, ' if n.token_id in special else "") + f'"prob": {_json_num(n.prob)}, '
             f'"rank": {_json_num(n.rank)}, "entropy": {_json_num(n.entropy)}, "top": [',
             candidates(n.top_ids, n.top_probs), '], "next": '))
        dist = n.next_dist
        if dist is None:
            parts.append("null}")
        else:
            # getattr: a cache written before Distribution.exact existed reads back without it
            exact = "true" if getattr(dist, "exact", True) else "false"
            add((f'{{"entropy": {_json_num(dist.entropy)}, "entropy_exact": {exact}, "top": [',
                 candidates(dist.top_ids, dist.top_probs), "]}}"))
    parts.append("\n]\n}\n" if tree.nodes else "]\n}\n")
    return "".join(parts)

"""The JSON export: the `tokentree-export` document (version 1), one node per line.

(Within the package, `import json` still finds the standard library: imports are absolute.)
"""

from __future__ import annotations

import json
import math

from tokentree.export.loader import ExportTree, gc_paused
from tokentree.tree.text import decode, shown_bytes, token_text

FORMAT_NAME = "tokentree-export"
VERSION = 1


def _json_num(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return repr(value) if math.isfinite(value) else "null"


@gc_paused()
def render_json(tree: ExportTree, *, top_k: int | None = None) -> str:
    """`top_k` cuts each node's "top" list (default: every cached candidate)."""
    dump = lambda obj: json.dumps(obj, ensure_ascii=False)  # noqa: E731
    pieces = tree.pieces
    by_id = {n.id: n for n in tree.nodes}
    branches = []
    for b in tree.branches:
        data = b"".join(shown_bytes(by_id[i].piece, by_id[i].token_id) for i in b.node_ids if i in by_id)
        branches.append(
            {"id": b.id, "name": b.name, "focused": b.focused, "token_ids": list(b.token_ids), "text": decode(data)}
        )
    lines = [
        "{",
        f'"format": {dump(FORMAT_NAME)},',
        f'"version": {VERSION},',
        f'"session": {dump(dict(tree.session))},',
        f'"model": {dump(dict(tree.model))},',
        '"branches": [',
    ]
    lines.append(",\n".join(dump(b) for b in branches))
    lines.append("],")
    lines.append('"nodes": [')
    # Built by hand rather than json.dumps per node: the same bytes, several times faster
    # (a 100,000-node tree with 64 candidates per node is millions of entries).
    class _TopPrefix(dict):
        def __missing__(self, tid: int) -> str:
            value = self[tid] = f'{{"token_id": {tid}, "text": {dump(token_text(pieces.get(tid), tid))}, "prob": '
            return value

    prefix = _TopPrefix()
    isfinite = math.isfinite
    node_lines = []
    for n in tree.nodes:
        ids, probs = (n.top_ids, n.top_probs) if top_k is None else (n.top_ids[:top_k], n.top_probs[:top_k])
        if all(map(isfinite, probs)):
            entries = ", ".join([f"{prefix[tid]}{p!r}}}" for tid, p in zip(ids, probs)])
        else:
            entries = ", ".join([f"{prefix[tid]}{_json_num(p)}}}" for tid, p in zip(ids, probs)])
        node_lines.append(
            f'{{"id": {n.id}, "parent": {_json_num(n.parent)}, "token_id": {n.token_id}, '
            f'"text": {dump(token_text(n.piece, n.token_id))}, "prob": {_json_num(n.prob)}, '
            f'"rank": {_json_num(n.rank)}, "entropy": {_json_num(n.entropy)}, "top": [{entries}]}}'
        )
    lines.append(",\n".join(node_lines))
    lines.append("]")
    lines.append("}")
    return "\n".join(line for line in lines if line) + "\n"

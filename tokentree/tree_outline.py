"""The exploration tree as indented lines for the overview pane (t).

Chains of single-child nodes collapse into one line, so the outline shows only where the
tree forks and where branches point, like the text export.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from tokentree.snapshot import TreeLine

SEGMENT_CHARS = 48


def _shorten(text: str, *, keep_end: bool) -> str:
    text = text.replace("\n", "\u23ce").replace("\t", "\u21e5")
    if len(text) <= SEGMENT_CHARS:
        return text
    return "\u2026" + text[-(SEGMENT_CHARS - 1):] if keep_end else text[: SEGMENT_CHARS - 1] + "\u2026"


def outline(
    nodes: Sequence,  # store Node objects: id, parent_id, token_id
    branch_names: Mapping[int, Sequence[str]],  # node id -> names of branches currently there
    current_node_id: int,
    segment_text: Callable[[list[int]], str],  # token ids -> text
) -> list[TreeLine]:
    ids = {n.id for n in nodes}
    children: dict[int | None, list] = defaultdict(list)
    for n in sorted(nodes, key=lambda n: n.id):
        children[n.parent_id if n.parent_id in ids else None].append(n)
    lines: list[TreeLine] = []
    # Explicit stack (node, prefix, is_last, is_root): prompts can be long, forks deep.
    stack = [(n, "", True, True) for n in reversed(children[None])]
    while stack:
        node, prefix, is_last, is_root = stack.pop()
        segment = [node]
        while len(children[segment[-1].id]) == 1 and segment[-1].id not in branch_names:
            segment.append(children[segment[-1].id][0])
        end = segment[-1]
        text = _shorten(segment_text([n.token_id for n in segment]), keep_end=is_root)
        lines.append(
            TreeLine(
                indent=prefix + ("" if is_root else ("\u2514\u2500 " if is_last else "\u251c\u2500 ")),
                text=text,
                branches=tuple(branch_names.get(end.id, ())),
                current=any(n.id == current_node_id for n in segment),
            )
        )
        kids = children[end.id]
        child_prefix = prefix + ("" if is_root else ("   " if is_last else "\u2502  "))
        for i in reversed(range(len(kids))):
            stack.append((kids[i], child_prefix, i == len(kids) - 1, False))
    return lines

"""An export tree as segments between fork points, in the order the exports draw them.

The exports' choices on top of tree.segments: children most probable first, roots in the
order the branches use them, and a segment also ends where a branch or a root prompt ends.
`root_prompts` lists the root prompts themselves, numbered as every export numbers them.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import attrgetter
from typing import NamedTuple

from tokentree.export.loader import ExportBranch, ExportNode, ExportTree
from tokentree.tree.segments import Chains, Style, walk
from tokentree.tree.text import SegmentDecoder, shown_bytes


class Segment(NamedTuple):
    indent: str  # the guides drawn before it (the style passed to `segments`)
    nodes: list[ExportNode]
    text: str  # for tree.text.label (a character split across a fork shows whole below it)
    children: list[int]  # first node ids of the child segments, in display order
    is_root: bool
    tips: list[ExportBranch]  # the branches that end at its last node


def _child_key(node: ExportNode):
    return (node.prob is None, -(node.prob or 0.0), node.token_id, node.id)


def segments(tree: ExportTree, style: Style) -> Iterator[Segment]:
    first_use: dict[int, int] = {}
    for i, branch in enumerate(tree.branches):
        if branch.node_ids:
            first_use.setdefault(branch.node_ids[0], i)
    tips: dict[int, list[ExportBranch]] = {}
    for branch in tree.branches:
        tips.setdefault(branch.node_id, []).append(branch)
    stops = set(tips) | {b.root_node_id for b in tree.branches}
    chains = Chains(tree.nodes, attrgetter("parent"), _child_key,
                    lambda n: (first_use.get(n.id, len(first_use)), n.id), stops)
    decode = SegmentDecoder()
    carried: dict[int, bytes] = {}  # chain id -> its parent's unfinished character
    no_tips: list[ExportBranch] = []
    for indent, sid, _, _, is_root in walk(chains, style):  # no cuts: a chain is a segment
        nodes = chains.chains[sid]
        kids = chains.kids[sid]
        # (the test inline: a call per node would cost more than the join itself)
        data = b"".join([n.piece if n.piece is not None else shown_bytes(None, n.token_id) for n in nodes])
        text, carry = decode(data, carried.pop(sid, b""), leaf=not kids)
        if carry:
            carried.update(dict.fromkeys(kids, carry))
        yield Segment(indent, nodes, text, kids, is_root, tips.get(nodes[-1].id, no_tips))


class Prompt(NamedTuple):
    number: int  # 1.., in the order the branches first use it
    nodes: list[ExportNode]  # the tree root .. the prompt's last token
    branches: list[ExportBranch]  # the branches that start from it, in display order


def root_prompts(tree: ExportTree) -> list[Prompt]:
    """Each root prompt once (branches share one by its last node). A branch whose path
    lacks its root prompt's node (an incomplete store) counts its whole path as the prompt."""
    by_id = {n.id: n for n in tree.nodes}
    prompts: dict[int, Prompt] = {}
    for branch in tree.branches:
        if branch.root_node_id in prompts:
            prompts[branch.root_node_id].branches.append(branch)
            continue
        path = [by_id[i] for i in branch.node_ids if i in by_id]
        ids = [n.id for n in path]
        cut = ids.index(branch.root_node_id) + 1 if branch.root_node_id in ids else len(path)
        if cut:
            prompts[branch.root_node_id] = Prompt(len(prompts) + 1, path[:cut], [branch])
    return list(prompts.values())

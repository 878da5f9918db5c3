"""Fork-point segmentation, for the tree pane and every export.

A tree is drawn as one line (or box) per segment: a run of nodes between fork points, so
only where it forks shows. `Chains` cuts a forest into its longest such runs once; `walk`
visits them in display order, cutting a chain further where a line must end inside it
(where a branch ends, for the tree pane, whose branch tips move with every key press).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

Node = Any  # anything with an `id`; its parent comes from the `parent` accessor


class Style(NamedTuple):
    """The guides drawn before a segment's text."""

    tee: str  # before a child that has a later sibling
    last: str  # before the last child
    pipe: str  # below a tee, beside that child's descendants
    blank: str  # below a last child


class Chains:
    """A forest cut into chains: every node of a chain but the last has exactly one child.

    A node in `stops` also ends its chain. Children come in `child_key` order, roots in
    `root_key` order. `chains` maps a chain's first node id to its nodes, `kids` to the first
    node ids of the chains below its last node, `roots` lists the root chains' first ids.
    """

    __slots__ = ("chains", "kids", "roots")

    def __init__(
        self,
        nodes: Iterable[Node],
        parent: Callable[[Node], int | None],  # a node's parent id (None: a root)
        child_key: Callable[[Node], Any],
        root_key: Callable[[Node], Any] | None = None,
        stops: Collection[int] = (),
    ) -> None:
        nodes = list(nodes)
        ids = {n.id for n in nodes}
        roots: list[Node] = []
        children: dict[int, list[Node]] = {}
        for n in nodes:
            p = parent(n)
            if p is None or p not in ids:  # a node whose parent is not here is a root too
                roots.append(n)
            else:
                children.setdefault(p, []).append(n)
        for kids in children.values():
            if len(kids) > 1:
                kids.sort(key=child_key)
        roots.sort(key=root_key or child_key)

        chains: dict[int, list[Node]] = {}
        kids_of: dict[int, list[int]] = {}
        get_kids = children.get
        no_kids: list[Node] = []
        stack = list(roots)
        while stack:  # explicit stack: prompts can be long and forks deep
            node = stack.pop()
            chain = [node]
            kids = get_kids(node.id, no_kids)
            while len(kids) == 1 and node.id not in stops:
                node = kids[0]
                chain.append(node)
                kids = get_kids(node.id, no_kids)
            chains[chain[0].id] = chain
            kids_of[chain[0].id] = [k.id for k in kids]
            stack.extend(kids)
        self.chains, self.kids, self.roots = chains, kids_of, [r.id for r in roots]


def walk(
    chains: Chains, style: Style, cuts: Mapping[int, Collection[int]] | None = None
) -> Iterator[tuple[str, int, int, int, bool]]:
    """(indent, chain id, first index, last index, is_root) per segment, in display order.

    `cuts` maps a chain id to indices of its nodes that end a segment inside it: the rest of
    the chain is drawn as that segment's only child."""
    tee, last_tee, pipe, blank = style
    all_chains, kids_of = chains.chains, chains.kids
    stack = [(sid, "", True, True) for sid in reversed(chains.roots)]
    pop, push = stack.pop, stack.append
    while stack:
        sid, prefix, is_last, is_root = pop()
        last = len(all_chains[sid]) - 1
        cut = cuts.get(sid) if cuts else None
        begin = 0
        for end in sorted({*cut, last}) if cut else (last,):
            yield (prefix if is_root else prefix + (last_tee if is_last else tee)), sid, begin, end, is_root
            if end != last:
                if not is_root:
                    prefix += blank if is_last else pipe
                is_last, is_root = True, False
            begin = end + 1
        kids = kids_of[sid]
        if kids:
            if not is_root:
                prefix += blank if is_last else pipe
            n = len(kids)
            for i in range(n - 1, -1, -1):
                push((kids[i], prefix, i == n - 1, False))

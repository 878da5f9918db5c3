"""The exploration tree as indented lines for the overview pane (t).

Chains of single-child nodes collapse into one line, so the outline shows only where the
tree forks and where branches point, like the text export.

The pane is redrawn on every key press while it is open, so :class:`Outline` keeps the
expensive part (the chains between forks and their text) from one call to the next and
rebuilds it only when it is given another node list; a call then only cuts the chains
that hold a branch tip and marks the focused node.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

from tokentree.snapshot import TreeLine

SEGMENT_CHARS = 48

_PIECE_TEXTS = 4096  # cut-chain texts kept between calls (branch tips move as keys are pressed)


def _shorten(text: str, *, keep_end: bool) -> str:
    text = text.replace("\n", "\u23ce").replace("\t", "\u21e5")
    if len(text) <= SEGMENT_CHARS:
        return text
    return "\u2026" + text[-(SEGMENT_CHARS - 1):] if keep_end else text[: SEGMENT_CHARS - 1] + "\u2026"


class Outline:
    """:func:`outline` with what does not depend on the branches kept between calls.

    The structure is rebuilt when `nodes` is another object than last time (callers pass
    the same list while the node set is unchanged), and the texts are dropped when
    `text_key` changes (the caller's token text may have changed, e.g. bytes became known).
    """

    def __init__(self) -> None:
        self._nodes: Sequence | None = None
        self._roots: list[int] = []  # chain starts of the roots, by id
        self._chains: dict[int, list] = {}  # chain start id -> its nodes (all but the last have 1 child)
        self._kids: dict[int, list[int]] = {}  # chain start id -> chain starts of its last node's children
        self._where: dict[int, tuple[int, int]] = {}  # node id -> (chain start id, index in it)
        self._text_key: Hashable = None
        self._texts: dict[tuple[int, int, int, bool], str] = {}  # whole chains
        self._piece_texts: dict[tuple[int, int, int, bool], str] = {}  # chains cut at a branch

    def has(self, nodes: Sequence) -> bool:
        """Whether the structure is built from `nodes` already."""
        return nodes is self._nodes

    def _build(self, nodes: Sequence) -> None:
        ids = {n.id for n in nodes}
        children: dict[int | None, list] = {}
        for n in sorted(nodes, key=lambda n: n.id):
            children.setdefault(n.parent_id if n.parent_id in ids else None, []).append(n)
        chains: dict[int, list] = {}
        kids: dict[int, list[int]] = {}
        where: dict[int, tuple[int, int]] = {}
        roots = [n.id for n in children.get(None, ())]
        stack = list(children.get(None, ()))
        while stack:
            start = stack.pop()
            chain = [start]
            nxt = children.get(start.id)
            while nxt is not None and len(nxt) == 1:
                chain.append(nxt[0])
                nxt = children.get(nxt[0].id)
            sid = start.id
            for i, n in enumerate(chain):
                where[n.id] = (sid, i)
            chains[sid] = chain
            kids[sid] = [k.id for k in nxt] if nxt else []
            if nxt:
                stack.extend(nxt)
        self._nodes, self._roots, self._chains, self._kids, self._where = nodes, roots, chains, kids, where
        self._texts.clear()
        self._piece_texts.clear()

    def lines(
        self,
        nodes: Sequence,  # store Node objects: id, parent_id, token_id
        branch_names: Mapping[int, Sequence[str]],  # node id -> names of branches currently there
        current_node_id: int,
        segment_text: Callable[[list[int]], str],  # token ids -> text
        text_key: Hashable = None,
    ) -> list[TreeLine]:
        if nodes is not self._nodes:
            self._build(nodes)
        if text_key != self._text_key:
            self._texts.clear()
            self._piece_texts.clear()
            self._text_key = text_key
        if len(self._piece_texts) > _PIECE_TEXTS:
            self._piece_texts.clear()
        chains, kids_of, where = self._chains, self._kids, self._where
        texts, piece_texts = self._texts, self._piece_texts
        cuts: dict[int, set[int]] = {}  # chain start -> indices of its nodes that hold a branch
        for nid in branch_names:
            w = where.get(nid)
            if w is not None:
                cuts.setdefault(w[0], set()).add(w[1])
        cur = where.get(current_node_id)
        cur_chain, cur_index = cur if cur is not None else (None, -1)
        lines: list[TreeLine] = []
        append = lines.append
        # Explicit stack (chain start, prefix, is_last, is_root): prompts can be long, forks deep.
        stack = [(sid, "", True, True) for sid in reversed(self._roots)]
        while stack:
            sid, prefix, is_last, is_root = stack.pop()
            chain = chains[sid]
            last = len(chain) - 1
            cut = cuts.get(sid)
            ends = sorted(cut | {last}) if cut else (last,)
            begin = 0
            for end in ends:
                key = (sid, begin, end, is_root)
                store = texts if begin == 0 and end == last else piece_texts
                text = store.get(key)
                if text is None:
                    text = store[key] = _shorten(
                        segment_text([n.token_id for n in chain[begin : end + 1]]), keep_end=is_root
                    )
                names = branch_names.get(chain[end].id) if cut else None
                append(
                    TreeLine(
                        indent=prefix + ("" if is_root else ("\u2514\u2500 " if is_last else "\u251c\u2500 ")),
                        text=text,
                        branches=tuple(names) if names else (),
                        current=sid == cur_chain and begin <= cur_index <= end,
                    )
                )
                if end != last:  # a branch tip inside the chain: the rest is its only child
                    prefix = prefix + ("" if is_root else ("   " if is_last else "\u2502  "))
                    is_last, is_root = True, False
                begin = end + 1
            kids = kids_of[sid]
            if kids:
                child_prefix = prefix + ("" if is_root else ("   " if is_last else "\u2502  "))
                n = len(kids)
                for i in range(n - 1, -1, -1):
                    stack.append((kids[i], child_prefix, i == n - 1, False))
        return lines


def outline(
    nodes: Sequence,  # store Node objects: id, parent_id, token_id
    branch_names: Mapping[int, Sequence[str]],  # node id -> names of branches currently there
    current_node_id: int,
    segment_text: Callable[[list[int]], str],  # token ids -> text
) -> list[TreeLine]:
    return Outline().lines(nodes, branch_names, current_node_id, segment_text)

"""The exploration tree as indented lines for the tree pane (t).

The pane is redrawn on every key press while it is open, so :class:`Outline` keeps the
expensive part (the chains between forks and their text) from one call to the next and
rebuilds it only when it is given another node list; a call then only cuts the chains
that hold a branch tip and marks the focused node.

A line's text is the whole segment when it is short. A long one keeps its start (for a
child segment, the token chosen at the fork above) and a longer end: the end is the text
that leads into the fork or branch tip on the next line, which is what the overview is for.
The pane cuts it further to its width, the same way (tokentree/tui/tree_pane.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

from tokentree.tree.segments import Chains, Style, walk
from tokentree.tree.text import ELLIPSIS, one_line

HEAD_CHARS = 24  # characters kept of a long segment's start
TAIL_CHARS = 240  # and of its end (wider than any pane that shows it)
STYLE = Style("\u251c\u2500 ", "\u2514\u2500 ", "\u2502  ", "   ")

_PIECE_TEXTS = 4096  # cut-chain texts kept between calls (branch tips move as keys are pressed)
_by_id = attrgetter("id")


@dataclass(frozen=True)
class TreeLine:
    """One line of the tree pane: a segment between fork points."""

    indent: str  # box-drawing prefix
    text: str
    branches: tuple[str, ...]  # names of branches whose current node ends this segment
    current: bool  # the focused branch's node is in this segment


def keep_ends(text: str, head: int = HEAD_CHARS, tail: int = TAIL_CHARS) -> str:
    """A long text as its first `head` and last `tail` characters, '…' between."""
    if len(text) <= head + tail + 1:
        return text
    return text[:head] + ELLIPSIS + text[-tail:]


class Outline:
    """Tree pane lines, with what does not depend on the branches kept between calls.

    The structure is rebuilt when `nodes` is another object than last time (callers pass
    the same list while the node set is unchanged), and the texts are dropped when
    `text_key` changes (the caller's token text may have changed, e.g. bytes became known).
    """

    def __init__(self) -> None:
        self._nodes: Sequence | None = None
        self._chains: Chains | None = None
        self._where: dict[int, tuple[int, int]] = {}  # node id -> (chain id, index in it)
        self._text_key: Hashable = None
        self._texts: dict[tuple[int, int, int, bool], str] = {}  # whole chains
        self._piece_texts: dict[tuple[int, int, int, bool], str] = {}  # chains cut at a branch

    def has(self, nodes: Sequence) -> bool:
        """Whether the structure is built from `nodes` already."""
        return nodes is self._nodes

    def _build(self, nodes: Sequence) -> None:
        chains = Chains(nodes, attrgetter("parent_id"), _by_id)
        where: dict[int, tuple[int, int]] = {}
        for sid, chain in chains.chains.items():
            for i, n in enumerate(chain):
                where[n.id] = (sid, i)
        self._nodes, self._chains, self._where = nodes, chains, where
        self._texts.clear()
        self._piece_texts.clear()

    def lines(
        self,
        nodes: Sequence,  # store Node objects: id, parent_id, token_id
        branch_names: Mapping[int, Sequence[str]],  # node id -> names of branches currently there
        current_node_id: int,
        segment_text: Callable[[list[int]], str],  # token ids -> text (tree.text.join_pieces)
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
        chains, where = self._chains.chains, self._where
        texts, piece_texts = self._texts, self._piece_texts
        cuts: dict[int, set[int]] = {}  # chain id -> indices of its nodes that hold a branch
        for nid in branch_names:
            w = where.get(nid)
            if w is not None:
                cuts.setdefault(w[0], set()).add(w[1])
        cur_chain, cur_index = where.get(current_node_id, (None, -1))
        lines: list[TreeLine] = []
        append = lines.append
        for indent, sid, begin, end, is_root in walk(self._chains, STYLE, cuts):
            chain = chains[sid]
            cut = sid in cuts
            key = (sid, begin, end, is_root)
            store = texts if begin == 0 and end == len(chain) - 1 else piece_texts
            text = store.get(key)
            if text is None:
                text = store[key] = keep_ends(one_line(segment_text([n.token_id for n in chain[begin : end + 1]])))
            names = branch_names.get(chain[end].id) if cut else None
            append(TreeLine(indent=indent, text=text, branches=tuple(names) if names else (),
                            current=sid == cur_chain and begin <= cur_index <= end))
        return lines

"""Read a session from the store into plain, immutable data for the renderers.

Per node, "prob", "rank", "entropy" and "top" all describe the choice of that node's token:
its probability and rank under the distribution that predicted it (the parent's next-token
distribution), that distribution's entropy, and its top candidates. The first token of a
prompt has no predicting distribution, so these are None (JSON null) and "top" is empty.
"next" is the node's own next-token distribution (what its children are chosen from).
Values are taken from the model-output cache of the session's own fingerprint only.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Mapping, NamedTuple

from tokentree.listing import iso_utc
from tokentree.outputs import Distribution
from tokentree.tree.text import special_piece

__all__ = ["ExportBranch", "ExportNode", "ExportTree", "gc_paused", "load_export_tree"]


@contextmanager
def gc_paused():
    """Building hundreds of thousands of small objects that all stay alive makes the cyclic
    garbage collector rescan them again and again; nothing here creates cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- plain data


class ExportNode(NamedTuple):
    """One node (token prefix). A NamedTuple: cheap to build by the hundred thousand."""

    id: int
    parent: int | None
    token_id: int
    depth: int  # root = 1
    piece: bytes | None  # the token's raw bytes; None when the vocabulary table lacks it
    prob: float | None  # probability of this token under the distribution that predicted it
    rank: int | None  # 1 = most likely
    entropy: float | None  # entropy (nats) of that distribution
    norm_entropy: float | None  # entropy / log |V|
    # That distribution's top candidates, most likely first (shared with the cache record,
    # not copied: a session of 100,000 nodes holds millions of them).
    top_ids: tuple[int, ...] = ()
    top_probs: tuple[float, ...] = ()
    # The node's own next-token distribution, the cache record itself; None when it is not
    # cached (or not loaded: `with_top=False`).
    next_dist: Distribution | None = None


@dataclass(frozen=True)
class ExportBranch:
    id: int
    name: str
    position: int
    focused: bool
    node_id: int  # the branch's current node (its tip)
    root_node_id: int  # the last node of its root prompt
    node_ids: tuple[int, ...]  # root .. tip
    token_ids: tuple[int, ...]
    # The regex constraint in force on the branch (r): name, pattern and the depth it was
    # switched on at (it covers the tokens after it); None: none.
    constraint: Mapping[str, Any] | None = None
    messages: tuple[Mapping[str, str], ...] | None = None  # a chat root's messages


@dataclass(frozen=True)
class ExportTree:
    session: Mapping[str, Any]  # id, created_at, last_used_at, model_name, prompt_sources
    model: Mapping[str, Any]  # name, fingerprint, vocab_key
    branches: tuple[ExportBranch, ...]  # display order
    nodes: tuple[ExportNode, ...]  # parents before children (sorted by depth, then id)
    pieces: Mapping[int, bytes]  # token id -> bytes, for node tokens and top candidates
    special: frozenset[int] = frozenset()  # the vocabulary's special tokens (store-marked)

    def marked(self) -> ExportTree:
        """The tree with each special token's bytes as every text view shows them (⟦name⟧)."""
        if not self.special:
            return self
        pieces = {i: special_piece(p) if i in self.special else p for i, p in self.pieces.items()}
        nodes = tuple(n._replace(piece=pieces.get(n.token_id)) if n.token_id in self.special else n
                      for n in self.nodes)
        return dataclasses.replace(self, nodes=nodes, pieces=pieces)


# --------------------------------------------------------------------------- loading


@gc_paused()
def load_export_tree(store, session_id: int, *, with_top: bool = True) -> ExportTree:
    """Read everything an export needs from the store (a handful of queries).

    `with_top=False` leaves the top-candidate lists out (the text, dot and markdown
    renderers do not show them), which saves looking up their token bytes."""
    info = store.session(session_id)
    fingerprint = info.fingerprint
    vocab_key = info.vocab_key
    branches = store.branches(session_id)
    constraints = store.constraints(session_id)

    raw: dict[int, Any] = {n.id: n for n in store.session_nodes(session_id)}
    # Every branch path must be present; session_nodes should already contain it, but a
    # branch tip whose ancestors are missing is completed from the store rather than dropped.
    for branch in branches:
        for node_id in (branch.node_id, branch.root_node_id):
            if node_id not in raw:
                for n in store.path_nodes(node_id):
                    raw.setdefault(n.id, n)
    for node in list(raw.values()):
        if node.parent_id is not None and node.parent_id not in raw:
            for n in store.path_nodes(node.id):
                raw.setdefault(n.id, n)

    order = sorted(raw.values(), key=attrgetter("depth", "id"))
    if with_top:
        outputs = store.get_outputs([n.prefix_key for n in order], fingerprint) if order else {}
        scores = {
            n.id: (o.token_prob, o.token_rank, o.next.entropy, o.next.norm_entropy)
            for n in order
            if (o := outputs.get(n.prefix_key)) is not None
        }
    else:  # the light columns only: a big tree exports without decoding any top-K lists
        outputs, scores = {}, store.node_scores(session_id, fingerprint)

    # The distribution that chose each node's token is its parent's "next" distribution, so
    # every node's own candidates cover its children's "top" lists too.
    ids: set[int] = set()
    for n in order:
        ids.add(n.token_id)
        if with_top and (out := outputs.get(n.prefix_key)) is not None:
            ids.update(out.next.top_ids)
    pieces = {i: bytes(b) for i, b in store.token_bytes(vocab_key, ids).items()} if ids else {}

    nodes: list[ExportNode] = []
    append = nodes.append
    get_score = scores.get
    get_piece = pieces.get
    get_output = outputs.get  # empty without `with_top`
    for n in order:
        own_out = get_output(n.prefix_key)
        own = get_score(n.id) if n.parent_id is not None else None
        parent_score = get_score(n.parent_id) if n.parent_id is not None else None
        if parent_score is None:
            entropy = norm_entropy = None
            top_ids = top_probs = ()
        else:
            entropy, norm_entropy = _finite(parent_score[2]), _finite(parent_score[3])
            top_ids = top_probs = ()
            if with_top:
                dist = outputs[raw[n.parent_id].prefix_key].next
                top_ids, top_probs = dist.top_ids, dist.top_probs
        append(
            ExportNode(
                n.id,
                n.parent_id,
                n.token_id,
                n.depth,
                get_piece(n.token_id),
                None if own is None else _finite(own[0]),
                None if own is None else own[1],
                entropy,
                norm_entropy,
                top_ids,
                top_probs,
                None if own_out is None else own_out.next,
            )
        )

    by_id = {n.id: n for n in nodes}
    export_branches = []
    for branch in branches:
        path = _path(by_id, branch.node_id)
        export_branches.append(
            ExportBranch(
                id=branch.id,
                name=branch.name,
                position=branch.position,
                focused=bool(branch.focused),
                node_id=branch.node_id,
                root_node_id=branch.root_node_id,
                node_ids=tuple(n.id for n in path),
                token_ids=tuple(n.token_id for n in path),
                constraint=_constraint(constraints.get(branch.id)),
                messages=branch.messages,
            )
        )
    export_branches.sort(key=lambda b: (b.position, b.id))

    session = {
        "id": info.id,
        "created_at": iso_utc(info.created_at),
        "last_used_at": iso_utc(info.last_used_at),
        "model_name": info.model_name,
        "prompt_sources": list(info.prompt_sources or ()),
    }
    if info.chat is not None:
        session["chat"] = dict(info.chat)
    model = {"name": info.model_name, "fingerprint": fingerprint, "vocab_key": vocab_key}
    return ExportTree(
        session=session, model=model, branches=tuple(export_branches), nodes=tuple(nodes), pieces=pieces,
        special=store.special_ids(vocab_key),
    )


def _constraint(rule) -> dict[str, Any] | None:
    if rule is None:
        return None
    return {"name": rule.name, "pattern": rule.pattern, "after_depth": rule.depth}


def constraint_text(branch: ExportBranch, by_id: Mapping[int, ExportNode]) -> bytes | None:
    """The bytes the branch's constraint covers (its tokens after `after_depth`); None
    without a constraint or when a token's bytes are not known."""
    if branch.constraint is None:
        return None
    pieces = [by_id[i].piece if i in by_id else None for i in branch.node_ids[branch.constraint["after_depth"]:]]
    return None if any(p is None for p in pieces) else b"".join(pieces)


def constraint_state(branch: ExportBranch, by_id: Mapping[int, ExportNode]) -> str | None:
    """live, complete or dead for the branch's text since its constraint was switched on
    (walked byte by byte: no model vocabulary needed); None when unknown or there is none."""
    if branch.constraint is not None and len(branch.node_ids) < branch.constraint["after_depth"]:
        return "before"  # the branch was moved above where it was switched on
    data = constraint_text(branch, by_id)
    if data is None:
        return None
    from tokentree.features.constraint import ConstraintError
    from tokentree.features.constraint.index import text_status

    try:
        return text_status(branch.constraint["pattern"], data)
    except ConstraintError:
        return None


def _path(by_id: Mapping[int, ExportNode], node_id: int) -> list[ExportNode]:
    path = []
    seen = set()
    current = by_id.get(node_id)
    while current is not None and current.id not in seen:
        seen.add(current.id)
        path.append(current)
        current = by_id.get(current.parent) if current.parent is not None else None
    path.reverse()
    return path


def _finite(value: float | None) -> float | None:
    if value is None or (value.__class__ is float and value - value == 0.0):  # fast path: finite float
        return value
    value = float(value)
    return value if math.isfinite(value) else None

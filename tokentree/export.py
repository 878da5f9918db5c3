"""Export a session's branch tree as text, JSON, Graphviz dot or Markdown.

Two halves:

1. `load_export_tree(store, session_id)` reads a session from the store into plain,
   immutable data (`ExportTree`): the session, the model fingerprint whose cached outputs are
   shown, the branches in display order and every node explored in the session with its
   cached probability, rank, entropy and top candidates.
2. `render_text`, `render_json`, `render_dot`, `render_markdown` turn that data into a
   string. They are pure, deterministic and iterative (no recursion, no quadratic string
   building), so a tree of 100,000 nodes renders in well under a second.

`export_session(store, session_id, fmt, ascii=False)` is what `tokentree export` calls.

Per node, "prob", "rank", "entropy" and "top" all describe the choice of that node's token:
its probability and rank under the distribution that predicted it (the parent's next-token
distribution), that distribution's entropy, and its top candidates. The first token of a
prompt has no predicting distribution, so these are None (JSON null) and "top" is empty.
Values are taken from the model-output cache of the session's own fingerprint only.
"""

from __future__ import annotations

import codecs
import gc
import json
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Mapping, NamedTuple, Sequence

from tokentree.errors import InputError
from tokentree.listing import iso_utc

__all__ = [
    "FORMATS",
    "ExportBranch",
    "ExportNode",
    "ExportTree",
    "export_session",
    "load_export_tree",
    "render",
    "render_dot",
    "render_json",
    "render_markdown",
    "render_text",
]

FORMATS = ("text", "json", "dot", "markdown")
EXPORT_FORMAT_NAME = "tokentree-export"
EXPORT_VERSION = 1


@contextmanager
def _gc_paused():
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


@dataclass(frozen=True)
class ExportTree:
    session: Mapping[str, Any]  # id, created_at, last_used_at, model_name, prompt_sources
    model: Mapping[str, Any]  # name, fingerprint, vocab_key
    branches: tuple[ExportBranch, ...]  # display order
    nodes: tuple[ExportNode, ...]  # parents before children (sorted by depth, then id)
    pieces: Mapping[int, bytes]  # token id -> bytes, for node tokens and top candidates


# --------------------------------------------------------------------------- loading


@_gc_paused()
def load_export_tree(store, session_id: int, *, with_top: bool = True) -> ExportTree:
    """Read everything an export needs from the store (a handful of queries).

    `with_top=False` leaves the top-candidate lists out (the text, dot and markdown
    renderers do not show them), which saves looking up their token bytes."""
    info = store.session(session_id)
    fingerprint = info.fingerprint
    vocab_key = info.vocab_key
    branches = store.branches(session_id)

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

    # The distribution that chose each node's token is its parent's "next" distribution.
    ids: set[int] = set()
    for n in order:
        ids.add(n.token_id)
        if with_top and n.parent_id is not None and (parent := raw.get(n.parent_id)) is not None:
            if (parent_out := outputs.get(parent.prefix_key)) is not None:
                ids.update(parent_out.next.top_ids)
    pieces = {i: bytes(b) for i, b in store.token_bytes(vocab_key, ids).items()} if ids else {}

    nodes: list[ExportNode] = []
    append = nodes.append
    get_score = scores.get
    get_piece = pieces.get
    for n in order:
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
    model = {"name": info.model_name, "fingerprint": fingerprint, "vocab_key": vocab_key}
    return ExportTree(
        session=session, model=model, branches=tuple(export_branches), nodes=tuple(nodes), pieces=pieces
    )


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


# --------------------------------------------------------------------------- text helpers

# Text shown in a tree: invalid bytes are decoded to lone surrogates (surrogateescape) and
# turned into \xNN escapes here, in the same single translate pass that makes whitespace
# visible, so an escape is never confused with (or re-escaped as) a real backslash.
_VISIBLE: dict[int, str] = {c: f"\\x{c:02x}" for c in list(range(0x20)) + [0x7F]}
_VISIBLE.update({ord(" "): "·", ord("\n"): "⏎", ord("\t"): "⇥"})
_VISIBLE.update({c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)})
_VISIBLE.update({0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)})

_QUOTED: dict[int, str] = {c: f"\\x{c:02x}" for c in list(range(0x20)) + [0x7F]}
_QUOTED.update({ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})
_QUOTED.update({c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)})
_QUOTED.update({0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)})


def _show(text: str, ascii: bool) -> str:
    """Whitespace made visible: `·` `⏎` `⇥`, or with ascii a double-quoted escaped string."""
    if ascii:
        return '"' + text.translate(_QUOTED) + '"'
    return text.translate(_VISIBLE)


def _piece_of(tree: ExportTree, node: ExportNode) -> bytes:
    if node.piece is not None:
        return node.piece
    return f"<id:{node.token_id}>".encode()


def _token_text(piece: bytes | None, token_id: int) -> str:
    """One token on its own: UTF-8, bytes that are not valid on their own as \\xNN escapes."""
    if piece is None:
        return f"<id:{token_id}>"
    return piece.decode("utf-8", "backslashreplace")


def _fmt_prob(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p >= 0.001 or p == 0:
        return f"{p:.3f}"
    return f"{p:.1e}"


def _fmt_logp(lp: float) -> str:
    if lp == -math.inf:
        return "-inf"
    if abs(lp) < 0.005:
        return "0.00"
    return f"{lp:.2f}"


def _segment_logp(seg: Sequence[ExportNode]) -> str:
    """Sum of log-probabilities of the segment's tokens; unknown ones are left out and counted."""
    total = 0.0
    known = missing = 0
    for node in seg:
        if node.prob is None:
            if node.parent is not None:
                missing += 1
            continue
        known += 1
        total += math.log(node.prob) if node.prob > 0 else -math.inf
    return _logp_text(total, known, missing)


def _logp_text(total: float, known: int, missing: int) -> str:
    if missing and not known:
        return "n/a"
    text = _fmt_logp(total)
    if missing:
        text += f" ({missing} n/a)"
    return text


# --------------------------------------------------------------------------- segments


@dataclass
class _Segment:
    nodes: list[ExportNode]
    text: str  # decoded, not yet made visible (invalid bytes as surrogates)
    children: list[int]  # first node ids of the child segments, in display order
    depth: int  # nesting level (root segment = 0)


class _Tree:
    """The node forest cut into segments between fork points, in display order (pre-order)."""

    def __init__(self, tree: ExportTree):
        self.tree = tree
        nodes = {n.id: n for n in tree.nodes}
        children: dict[int, list[ExportNode]] = {}
        roots: list[ExportNode] = []
        for node in tree.nodes:
            if node.parent is None or node.parent not in nodes:
                roots.append(node)
            else:
                children.setdefault(node.parent, []).append(node)
        for kids in children.values():
            if len(kids) > 1:
                kids.sort(key=_child_key)
        # Roots in the order the branches use them, then the rest by id.
        first_use: dict[int, int] = {}
        for i, branch in enumerate(tree.branches):
            if branch.node_ids:
                first_use.setdefault(branch.node_ids[0], i)
        roots.sort(key=lambda n: (first_use.get(n.id, len(first_use)), n.id))

        tips: dict[int, list[ExportBranch]] = {}
        for branch in tree.branches:
            tips.setdefault(branch.node_id, []).append(branch)
        # A segment also ends where a branch ends and where a root prompt ends.
        stops = set(tips) | {b.root_node_id for b in tree.branches}
        self.tips = tips

        self.segments: list[_Segment] = []
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        get_kids = children.get
        no_kids: list[ExportNode] = []
        # stack of (first node, pending undecoded bytes, nesting depth)
        stack: list[tuple[ExportNode, bytes, int]] = [(r, b"", 0) for r in reversed(roots)]
        while stack:
            start, pending, depth = stack.pop()
            seg_nodes = []
            decoder.setstate((pending, 0))
            node = start
            while True:
                seg_nodes.append(node)
                kids = get_kids(node.id, no_kids)
                if len(kids) != 1 or node.id in stops:
                    break
                node = kids[0]
            pieces = [n.piece if n.piece is not None else _piece_of(tree, n) for n in seg_nodes]
            text = decoder.decode(b"".join(pieces))
            pending = decoder.getstate()[0]
            # A character split across a fork point is shown whole in each child segment.
            # Its leading bytes show as escapes only at a leaf, or when nothing else would show.
            if pending and (not kids or not text):
                text += pending.decode("utf-8", "surrogateescape")
            self.segments.append(_Segment(seg_nodes, text, [k.id for k in kids], depth))
            for kid in reversed(kids):
                stack.append((kid, pending, depth + 1))


def _child_key(node: ExportNode):
    return (node.prob is None, -(node.prob or 0.0), node.token_id, node.id)


# --------------------------------------------------------------------------- text


@_gc_paused()
def render_text(tree: ExportTree, *, ascii: bool = False) -> str:
    """The branch tree as an indented tree, one line per segment between fork points.

    Each line: the segment's text (whitespace visible), `p=` the probability of the token
    chosen where the segment starts, `logp=` the segment's total log-probability, and in
    brackets the branches that end there (`*` marks the focused one). Children are ordered
    by probability, highest first. A root line (a prompt) has no `p=`.
    """
    if ascii:
        tee, last, pipe, blank = "|-- ", "`-- ", "|   ", "    "
    else:
        tee, last, pipe, blank = "├── ", "└── ", "│   ", "    "
    sep = ", " if ascii else " · "
    s = tree.session
    out = [
        f"session {s['id']}{sep}{tree.model['name']}{sep}"
        f"{_plural(len(tree.branches), 'branch', 'branches')}{sep}{_plural(len(tree.nodes), 'node', 'nodes')}"
    ]
    t = _Tree(tree)
    # Prefix strings per nesting level: prefixes[d] is the indentation drawn for a segment
    # at depth d + 1 below an ancestor chain; kept as a stack, updated in pre-order.
    prefixes: list[str] = []
    # Which segments are the last child of their parent.
    is_last: dict[int, bool] = {}
    for seg in t.segments:
        if seg.children:
            for kid in seg.children:
                is_last[kid] = False
            is_last[seg.children[-1]] = True
    for seg in t.segments:
        first = seg.nodes[0]
        fields = [_show(seg.text, ascii)]
        if seg.depth == 0:
            out.append("")
            line = ""
        else:
            del prefixes[seg.depth - 1:]
            lastchild = is_last.get(first.id, True)
            line = "".join(prefixes) + (last if lastchild else tee)
            prefixes.append(blank if lastchild else pipe)
            fields.append(f"p={_fmt_prob(first.prob)}")
        if seg.depth == 0:
            prefixes.clear()
        fields.append(f"logp={_segment_logp(seg.nodes)}")
        tip = t.tips.get(seg.nodes[-1].id)
        if tip:
            fields.append("[" + ", ".join(b.name + ("*" if b.focused else "") for b in tip) + "]")
        out.append(line + "  ".join(fields))
    return "\n".join(out) + "\n"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


# --------------------------------------------------------------------------- json


def _json_num(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return repr(value) if math.isfinite(value) else "null"


@_gc_paused()
def render_json(tree: ExportTree, *, top_k: int | None = None) -> str:
    """The `tokentree-export` JSON document (version 1); one node per line.

    `top_k` cuts each node's "top" list (default: every cached candidate)."""
    dump = lambda obj: json.dumps(obj, ensure_ascii=False)  # noqa: E731
    pieces = tree.pieces
    by_id = {n.id: n for n in tree.nodes}
    branches = []
    for b in tree.branches:
        data = b"".join(_piece_of(tree, by_id[i]) for i in b.node_ids if i in by_id)
        branches.append(
            {
                "id": b.id,
                "name": b.name,
                "focused": b.focused,
                "token_ids": list(b.token_ids),
                "text": data.decode("utf-8", "replace"),
            }
        )
    lines = [
        "{",
        f'"format": {dump(EXPORT_FORMAT_NAME)},',
        f'"version": {EXPORT_VERSION},',
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
            value = self[tid] = f'{{"token_id": {tid}, "text": {dump(_token_text(pieces.get(tid), tid))}, "prob": '
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
            f'"text": {dump(_token_text(n.piece, n.token_id))}, "prob": {_json_num(n.prob)}, '
            f'"rank": {_json_num(n.rank)}, "entropy": {_json_num(n.entropy)}, "top": [{entries}]}}'
        )
    lines.append(",\n".join(node_lines))
    lines.append("]")
    lines.append("}")
    return "\n".join(line for line in lines if line) + "\n"


# --------------------------------------------------------------------------- dot

_DOT_LABEL_MAX = 60


def _dot_str(text: str) -> str:
    """A DOT double-quoted string; backslashes and quotes escaped, newlines as \\n."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    return f'"{text}"'


@_gc_paused()
def render_dot(tree: ExportTree) -> str:
    """Graphviz digraph: one box per segment, labelled with its text and the probability of
    its first token; an edge per fork; branch tips drawn bold with a double border and the
    branch names, the focused branch's tip filled."""
    t = _Tree(tree)
    title = f"tokentree session {tree.session['id']} ({tree.model['name']})"
    out = [
        "digraph tokentree {",
        f"  graph [rankdir=LR, label={_dot_str(title)}, labelloc=t];",
        '  node [shape=box, fontname="monospace"];',
    ]
    edges = []
    for seg in t.segments:
        name = f"n{seg.nodes[0].id}"
        full = _show(seg.text, False)
        text = full if len(full) <= _DOT_LABEL_MAX else full[: _DOT_LABEL_MAX - 1] + "…"
        first = seg.nodes[0]
        stats = f"logp={_segment_logp(seg.nodes)}"
        if first.parent is not None:
            stats = f"p={_fmt_prob(first.prob)}  " + stats
        label = text + "\n" + stats
        attrs = []
        tip = t.tips.get(seg.nodes[-1].id)
        if tip:
            label += "\n[" + ", ".join(b.name for b in tip) + "]"
            style = "bold"
            if any(b.focused for b in tip):
                style += ",filled"
                attrs.append('fillcolor="lightyellow"')
            attrs = [f'style="{style}"', "peripheries=2"] + attrs
        attrs.insert(0, f"label={_dot_str(label)}")
        if text != full:
            attrs.append(f"tooltip={_dot_str(full)}")
        out.append(f"  {name} [{', '.join(attrs)}];")
        for kid in seg.children:
            edges.append(f"  {name} -> n{kid};")
    out.extend(edges)
    out.append("}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- markdown


def _md_code(text: str) -> str:
    """An inline code span for a table cell: pipes escaped, long enough backtick fence."""
    text = text.replace("|", "\\|")
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(m) for m in re.findall(r"`+", text)) + 1)
    return f"{fence} {text} {fence}"


def _md_fence(text: str) -> str:
    runs = re.findall(r"`{3,}", text)
    return "`" * (max((len(r) for r in runs), default=2) + 1)


def _md_inline(text: str) -> str:
    return re.sub(r"([\\`*_\[\]#<>|])", r"\\\1", text)


@_gc_paused()
def render_markdown(tree: ExportTree) -> str:
    """One `##` section per branch: its text in a code block and a per-token table."""
    from tokentree.text import visible

    s = tree.session
    out = [
        f"# tokentree session {s['id']}",
        "",
        f"- model: `{tree.model['name']}` (fingerprint `{tree.model['fingerprint']}`)",
        f"- created: {s['created_at']}, last used: {s['last_used_at']}",
        f"- {_plural(len(tree.branches), 'branch', 'branches')}, {_plural(len(tree.nodes), 'node', 'nodes')}",
    ]
    by_id = {n.id: n for n in tree.nodes}
    for i, b in enumerate(tree.branches, 1):
        path = [by_id[nid] for nid in b.node_ids if nid in by_id]
        text = b"".join(_piece_of(tree, n) for n in path).decode("utf-8", "replace")
        fence = _md_fence(text)
        known = [n.prob for n in path if n.prob is not None]
        logp = _logp_text(sum(math.log(p) if p > 0 else -math.inf for p in known), len(known),
                          sum(1 for n in path if n.prob is None and n.parent is not None))
        heading = _md_inline(b.name) + (" (focused)" if b.focused else "")
        out += [
            "",
            f"## {heading}",
            "",
            f"Branch {b.id}, {_plural(len(path), 'token', 'tokens')}, total logp={logp}.",
            "",
            f"{fence}text",
            text,
            fence,
            "",
            "| # | token | id | p | rank | entropy |",
            "|--:|:--|--:|--:|--:|--:|",
        ]
        for j, n in enumerate(path, 1):
            piece = n.piece if n.piece is not None else f"<id:{n.token_id}>".encode()
            rank = "n/a" if n.rank is None else str(n.rank)
            entropy = "n/a" if n.entropy is None else f"{n.entropy:.3f}"
            out.append(f"| {j} | {_md_code(visible(piece))} | {n.token_id} | {_fmt_prob(n.prob)} | {rank} | {entropy} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- entry point

_RENDERERS = {
    "text": render_text,
    "json": render_json,
    "dot": render_dot,
    "markdown": render_markdown,
}


def render(tree: ExportTree, fmt: str, *, ascii: bool = False) -> str:
    if fmt not in _RENDERERS:
        raise InputError(f"unknown export format {fmt!r} (choose one of: {', '.join(FORMATS)})")
    if fmt == "text":
        return render_text(tree, ascii=ascii)
    return _RENDERERS[fmt](tree)


def export_session(store, session_id: int, fmt: str, *, ascii: bool = False) -> str:
    """The session as text / json / dot / markdown; `ascii` only affects the text tree."""
    if fmt not in _RENDERERS:
        raise InputError(f"unknown export format {fmt!r} (choose one of: {', '.join(FORMATS)})")
    with _gc_paused():
        return render(load_export_tree(store, session_id, with_top=fmt == "json"), fmt, ascii=ascii)

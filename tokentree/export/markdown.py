"""The Markdown export: each root prompt once, then one `##` section per branch.

A prompt section has the prompt's text and one table row per prompt token. A branch section
has the branch's text after its prompt and table rows only from where the branch leaves what
the sections above already show (a line says where those rows are): a prefix shared by many
branches is written once, so the document grows with the explored nodes, not with branches
times prompt length.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from tokentree.export.loader import ExportBranch, ExportNode, ExportTree, gc_paused
from tokentree.export.numbers import fmt_prob, logp_text, plural
from tokentree.tree.text import SegmentDecoder, placeholder, show_controls, shown_bytes, visible

TABLE_HEAD = ["| # | token | id | p | rank | entropy |", "|--:|:--|--:|--:|--:|--:|"]


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


def _logp(path: Sequence[ExportNode]) -> str:
    known = [n.prob for n in path if n.prob is not None]
    return logp_text(sum(math.log(p) if p > 0 else -math.inf for p in known), len(known),
                     sum(1 for n in path if n.prob is None and n.parent is not None))


def _code_block(text: str) -> list[str]:
    fence = _md_fence(text)
    return [f"{fence}text", text, fence]


def _row(position: int, n: ExportNode) -> str:
    token = visible(n.piece) if n.piece is not None else placeholder(n.token_id)
    rank = "n/a" if n.rank is None else str(n.rank)
    entropy = "n/a" if n.entropy is None else f"{n.entropy:.3f}"
    return f"| {position} | {_md_code(token)} | {n.token_id} | {fmt_prob(n.prob)} | {rank} | {entropy} |"


def _table(path: Sequence[ExportNode], shown: dict[int, str], here: str) -> list[str]:
    """The rows of `path` from its first node not shown above (`shown`: node id -> the
    section whose table has it), with a line saying where the earlier rows are."""
    start = 0
    while start < len(path) and path[start].id in shown:
        start += 1
    out = [""]
    if start:
        where = shown[path[start - 1].id]
        span = "Token 1 is" if start == 1 else f"Tokens 1\u2013{start} are"
        if start == len(path):
            span = "The token is" if start == 1 else f"All {start} tokens are"
        out.append(f"{span} in the table of {where} above.")
        if start == len(path):
            return out
        out.append("")
    out += TABLE_HEAD
    for j in range(start, len(path)):
        shown[path[j].id] = here
        out.append(_row(j + 1, path[j]))
    return out


@gc_paused()
def render_markdown(tree: ExportTree) -> str:
    """Text in code blocks as the prompt pane shows it (the same escapes as the screen),
    token rows as the candidate table shows them."""
    s = tree.session
    out = [
        f"# tokentree session {s['id']}",
        "",
        f"- model: `{tree.model['name']}` (fingerprint `{tree.model['fingerprint']}`)",
        f"- created: {s['created_at']}, last used: {s['last_used_at']}",
        f"- {plural(len(tree.branches), 'branch', 'branches')}, {plural(len(tree.nodes), 'node', 'nodes')}",
    ]
    by_id = {n.id: n for n in tree.nodes}
    paths: dict[int, list[ExportNode]] = {}
    cuts: dict[int, int] = {}  # branch id -> the length of its root prompt in its path
    roots: dict[int, list[ExportBranch]] = {}  # root node id -> its branches, in first-use order
    for b in tree.branches:
        path = paths[b.id] = [by_id[nid] for nid in b.node_ids if nid in by_id]
        ids = [n.id for n in path]
        cuts[b.id] = ids.index(b.root_node_id) + 1 if b.root_node_id in ids else len(path)
        roots.setdefault(b.root_node_id, []).append(b)

    shown: dict[int, str] = {}
    carries: dict[int, bytes] = {}  # root node id -> its prompt's unfinished last character
    prompt_names: dict[int, str] = {}
    for number, (root_id, branches) in enumerate(roots.items(), 1):
        first = branches[0]
        prompt = paths[first.id][: cuts[first.id]]
        name = prompt_names[root_id] = f"prompt {number}"
        text, carries[root_id] = SegmentDecoder()(b"".join(shown_bytes(n.piece, n.token_id) for n in prompt),
                                                  b"", leaf=True)
        users = ", ".join(_md_inline(b.name) for b in branches)
        out += ["", f"## Prompt {number}", "",
                f"The root prompt of {users}: {plural(len(prompt), 'token', 'tokens')}, "
                f"total logp={_logp(prompt)}.", ""]
        out += _code_block(show_controls(text))
        out += _table(prompt, shown, name)

    for b in tree.branches:
        path, cut = paths[b.id], cuts[b.id]
        rest = path[cut:]
        name = _md_inline(b.name)
        summary = f"Branch {b.id}: {prompt_names[b.root_node_id]} ({plural(cut, 'token', 'tokens')})"
        summary += f", then {plural(len(rest), 'token', 'tokens')}" if rest else " only"
        out += ["", f"## {name}" + (" (focused)" if b.focused else ""), "",
                f"{summary}; total logp={_logp(path)}."]
        if rest:
            text, _ = SegmentDecoder()(b"".join(shown_bytes(n.piece, n.token_id) for n in rest),
                                       carries[b.root_node_id], leaf=True)
            out += ["", "After the prompt:", ""]
            out += _code_block(show_controls(text))
        out += _table(path, shown, f"\u201c{name}\u201d")
    return "\n".join(out) + "\n"

"""The Markdown export: one `##` section per branch, its text and a per-token table."""

from __future__ import annotations

import math
import re

from tokentree.export.loader import ExportTree, gc_paused
from tokentree.export.numbers import fmt_prob, logp_text, plural
from tokentree.tree.text import decode, placeholder, show_controls, shown_bytes, visible


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


@gc_paused()
def render_markdown(tree: ExportTree) -> str:
    """The branch text in a code block as the prompt pane shows it, then one table row per
    token as the candidate table shows it."""
    s = tree.session
    out = [
        f"# tokentree session {s['id']}",
        "",
        f"- model: `{tree.model['name']}` (fingerprint `{tree.model['fingerprint']}`)",
        f"- created: {s['created_at']}, last used: {s['last_used_at']}",
        f"- {plural(len(tree.branches), 'branch', 'branches')}, {plural(len(tree.nodes), 'node', 'nodes')}",
    ]
    by_id = {n.id: n for n in tree.nodes}
    for b in tree.branches:
        path = [by_id[nid] for nid in b.node_ids if nid in by_id]
        text = show_controls(decode(b"".join(shown_bytes(n.piece, n.token_id) for n in path)))
        fence = _md_fence(text)
        known = [n.prob for n in path if n.prob is not None]
        logp = logp_text(sum(math.log(p) if p > 0 else -math.inf for p in known), len(known),
                         sum(1 for n in path if n.prob is None and n.parent is not None))
        heading = _md_inline(b.name) + (" (focused)" if b.focused else "")
        out += [
            "",
            f"## {heading}",
            "",
            f"Branch {b.id}, {plural(len(path), 'token', 'tokens')}, total logp={logp}.",
            "",
            f"{fence}text",
            text,
            fence,
            "",
            "| # | token | id | p | rank | entropy |",
            "|--:|:--|--:|--:|--:|--:|",
        ]
        for j, n in enumerate(path, 1):
            token = visible(n.piece) if n.piece is not None else placeholder(n.token_id)
            rank = "n/a" if n.rank is None else str(n.rank)
            entropy = "n/a" if n.entropy is None else f"{n.entropy:.3f}"
            out.append(f"| {j} | {_md_code(token)} | {n.token_id} | {fmt_prob(n.prob)} | {rank} | {entropy} |")
    return "\n".join(out) + "\n"

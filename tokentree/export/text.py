"""The text export: the branch tree as an indented tree, one line per segment."""

from __future__ import annotations

from tokentree.export.layout import segments
from tokentree.export.loader import ExportTree, gc_paused
from tokentree.export.numbers import fmt_prob, nodes_logp, plural
from tokentree.tree.segments import Style
from tokentree.tree.text import label

BOX = Style("├── ", "└── ", "│   ", "    ")
ASCII = Style("|-- ", "`-- ", "|   ", "    ")


@gc_paused()
def render_text(tree: ExportTree, *, ascii: bool = False) -> str:
    """One line per segment between fork points.

    Each line: the segment's text (whitespace visible, or quoted with `ascii`), `p=` the
    probability of the token chosen where the segment starts, `logp=` the segment's total
    log-probability, and in brackets the branches that end there (`*` marks the focused
    one). Children are ordered by probability, highest first. A root line (a prompt) has
    no `p=` and follows a blank line.
    """
    sep = ", " if ascii else " · "
    s = tree.session
    out = [
        f"session {s['id']}{sep}{tree.model['name']}{sep}"
        f"{plural(len(tree.branches), 'branch', 'branches')}{sep}{plural(len(tree.nodes), 'node', 'nodes')}"
    ]
    for seg in segments(tree, ASCII if ascii else BOX):
        fields = [label(seg.text, quoted=ascii)]
        if seg.is_root:
            out.append("")
        else:
            fields.append(f"p={fmt_prob(seg.nodes[0].prob)}")
        fields.append(f"logp={nodes_logp(seg.nodes)}")
        if seg.tips:
            fields.append("[" + ", ".join(b.name + ("*" if b.focused else "") for b in seg.tips) + "]")
        out.append(seg.indent + "  ".join(fields))
    return "\n".join(out) + "\n"

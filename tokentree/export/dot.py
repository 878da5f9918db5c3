"""The Graphviz dot export: one box per segment between fork points, an edge per fork."""

from __future__ import annotations

from tokentree.export.layout import segments
from tokentree.export.loader import ExportTree, gc_paused
from tokentree.export.numbers import fmt_prob, nodes_logp
from tokentree.tree.segments import Style
from tokentree.tree.text import label, shorten

LABEL_MAX = 60
_NO_GUIDES = Style("", "", "", "")  # boxes and edges, not indentation


def _dot_str(text: str) -> str:
    """A DOT double-quoted string; backslashes and quotes escaped, newlines as \\n."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    return f'"{text}"'


@gc_paused()
def render_dot(tree: ExportTree) -> str:
    """A digraph: each box labelled with its segment's text and the probability of its first
    token; branch tips drawn bold with a double border and the branch names, the focused
    branch's tip filled. A cut label's whole text is its tooltip."""
    title = f"tokentree session {tree.session['id']} ({tree.model['name']})"
    out = [
        "digraph tokentree {",
        f"  graph [rankdir=LR, label={_dot_str(title)}, labelloc=t];",
        '  node [shape=box, fontname="monospace"];',
    ]
    edges = []
    for seg in segments(tree, _NO_GUIDES):
        first = seg.nodes[0]
        name = f"n{first.id}"
        full = label(seg.text)
        text = shorten(full, LABEL_MAX)
        stats = f"logp={nodes_logp(seg.nodes)}"
        if first.parent is not None:
            stats = f"p={fmt_prob(first.prob)}  " + stats
        text_label = text + "\n" + stats
        attrs = []
        if seg.tips:
            text_label += "\n[" + ", ".join(b.name for b in seg.tips) + "]"
            style = "bold"
            if any(b.focused for b in seg.tips):
                style += ",filled"
                attrs.append('fillcolor="lightyellow"')
            attrs = [f'style="{style}"', "peripheries=2"] + attrs
        attrs.insert(0, f"label={_dot_str(text_label)}")
        if text != full:
            attrs.append(f"tooltip={_dot_str(full)}")
        out.append(f"  {name} [{', '.join(attrs)}];")
        for kid in seg.children:
            edges.append(f"  {name} -> n{kid};")
    out.extend(edges)
    out.append("}")
    return "\n".join(out) + "\n"

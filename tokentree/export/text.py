"""The text export: each root prompt as written, then the branch tree below it as an indented
tree, one line per segment between fork points."""

from __future__ import annotations

from collections.abc import Sequence

from tokentree.export.layout import Prompt, Segment, root_prompts, segments
from tokentree.export.loader import ExportNode, ExportTree, constraint_state, gc_paused
from tokentree.export.numbers import fmt_prob, nodes_logp, plural
from tokentree.tree.segments import Style
from tokentree.tree.text import label, show_controls, shown_bytes

BOX = Style("├── ", "└── ", "│   ", "    ")
ASCII = Style("|-- ", "`-- ", "|   ", "    ")
PROMPT_MARK = "^"  # points up at the prompt printed above it (ASCII, so the same in both drawings)


def verbatim(nodes: Sequence[ExportNode]) -> str:
    """Tokens as one text, newlines and tabs kept: what was written, not a one-line label.
    Control characters and stray bytes are still escaped (a terminal must never run them)
    and unknown tokens show their placeholder, as on screen."""
    data = b"".join([shown_bytes(n.piece, n.token_id) for n in nodes])
    return show_controls(data.decode("utf-8", "surrogateescape"))


def prompt_line(prompt: Prompt) -> str:
    return f"{PROMPT_MARK} prompt {prompt.number} ({plural(len(prompt.nodes), 'token', 'tokens')})"


def _tips(seg: Segment) -> str:
    return "[" + ", ".join(b.name + ("*" if b.focused else "") for b in seg.tips) + "]"


def _prompt_block(seg: Segment, prompts: list[Prompt]) -> tuple[list[str], str | None]:
    """The lines above a root segment (its prompts, verbatim) and the text its own line
    shows instead of its tokens when it is exactly one whole prompt (None: its tokens).

    Usually a root segment is one prompt. Prompts that share their first tokens, or a fork
    or branch tip inside a prompt, split it: then each prompt gets its own `^` line (with
    its total logp) and the tree below starts with the tokens again."""
    if len(prompts) == 1 and prompts[0].nodes[-1].id == seg.nodes[-1].id:
        return [verbatim(prompts[0].nodes)], prompt_line(prompts[0])
    lines = []
    for prompt in prompts:
        lines += [verbatim(prompt.nodes), f"{prompt_line(prompt)}  logp={nodes_logp(prompt.nodes)}"]
    if lines:
        lines.append("")
    return lines, None


def constraint_lines(tree: ExportTree) -> list[str]:
    """One line per branch with a regex constraint (r): its name, pattern, where it starts
    and where the branch's text stands (live, complete, dead)."""
    by_id = {n.id: n for n in tree.nodes}
    lines = []
    for b in tree.branches:
        if b.constraint is not None:
            c = b.constraint
            state = constraint_state(b, by_id) or "state unknown"
            lines.append(f"regex {c['name']} on [{show_controls(b.name)}{'*' if b.focused else ''}] after token "
                         f"{c['after_depth']}: {state}  /{show_controls(c['pattern'])}/")
    return lines


@gc_paused()
def render_text(tree: ExportTree, *, ascii: bool = False) -> str:
    """Each root prompt verbatim, then its tree: one line per segment between fork points.

    A segment's line: its text (whitespace visible, or quoted with `ascii`), `p=` the
    probability of the token chosen where the segment starts, `logp=` the segment's total
    log-probability, and in brackets the branches that end there (`*` marks the focused
    one). Children are ordered by probability, highest first. A tree follows a blank line
    and its prompt; the root line, which the prompt's tokens would repeat, says
    `^ prompt N (K tokens)` instead.
    """
    s = tree.session
    # No "·" here: in this export it only ever stands for a space inside a segment.
    out = [
        f"session {s['id']}, {tree.model['name']}, "
        f"{plural(len(tree.branches), 'branch', 'branches')}, {plural(len(tree.nodes), 'node', 'nodes')}"
    ]
    out += constraint_lines(tree)
    under: dict[int, list[Prompt]] = {}  # tree root node id -> the prompts that start there
    for prompt in root_prompts(tree):
        under.setdefault(prompt.nodes[0].id, []).append(prompt)
    for seg in segments(tree, ASCII if ascii else BOX):
        text = None
        if seg.is_root:
            out.append("")
            above, text = _prompt_block(seg, under.get(seg.nodes[0].id, []))
            out += above
        fields = [label(seg.text, quoted=ascii) if text is None else text]
        if not seg.is_root:
            fields.append(f"p={fmt_prob(seg.nodes[0].prob)}")
        fields.append(f"logp={nodes_logp(seg.nodes)}")
        if seg.tips:
            fields.append(_tips(seg))
        out.append(seg.indent + "  ".join(fields))
    return "\n".join(out) + "\n"

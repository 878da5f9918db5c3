"""The tree pane's outline: fork-point segments, cut where branches end, text as on screen."""

from __future__ import annotations

import random
from collections import namedtuple

from tokentree.tree.outline import HEAD_CHARS, TAIL_CHARS, Outline, keep_ends
from tokentree.tree.segments import Chains, Style, walk
from tokentree.tree.text import join_pieces

Node = namedtuple("Node", "id parent_id token_id")

#   1 "The" - 2 " cat" - 3 " sat" - 4 "\x1b"      (a control code: escaped on screen)
#                      \ 5 " ran\n" - 6           (6 has no known bytes yet: ⟨6⟩)
NODES = [Node(1, None, 1), Node(2, 1, 2), Node(3, 2, 3), Node(4, 3, 4), Node(5, 2, 5), Node(6, 5, 6)]
PIECES = {1: b"The", 2: b" cat", 3: b" sat", 4: b"\x1b", 5: b" ran\n"}


def lines(outline, names, current):
    return [(line.indent, line.text, line.branches, line.current)
            for line in outline.lines(NODES, names, current, lambda ids: join_pieces(ids, PIECES))]


def test_lines_cut_at_branch_tips_and_show_text_as_on_screen():
    assert lines(Outline(), {3: ["mid"], 4: ["main*"]}, 4) == [
        ("", "The cat", (), False),
        ("\u251c\u2500 ", " sat", ("mid",), False),
        ("\u2502  \u2514\u2500 ", "\\x1b", ("main*",), True),
        ("\u2514\u2500 ", " ran\u23ce\u27e86\u27e9", (), False),
    ]


def test_a_kept_outline_equals_a_fresh_one_as_branches_move():
    kept = Outline()
    rng = random.Random(0)
    for _ in range(30):
        tips = {rng.choice(NODES).id: ["b"] for _ in range(rng.randint(1, 3))}
        current = rng.choice(NODES).id
        assert lines(kept, tips, current) == lines(Outline(), tips, current)


def test_walk_draws_guides_and_cuts_without_recursion():
    n = 20_000  # deeper than any recursion limit, in nodes and in forks
    nodes = [Node(i, i - 1 or None, 0) for i in range(1, n + 1)]
    nodes += [Node(n + i, i, 0) for i in range(100, n, 100)]
    chains = Chains(nodes, lambda x: x.parent_id, lambda x: x.id)
    style = Style("+ ", "` ", "| ", "  ")
    segs = list(walk(chains, style, cuts={1: {0}}))
    assert segs[0] == ("", 1, 0, 0, True) and segs[1] == ("` ", 1, 1, 99, False)
    assert len(segs) == 2 + 2 * (n // 100 - 1)
    indent = {sid: guides for guides, sid, *_ in segs}
    assert indent[n + 100] == "  ` " and indent[n + n - 100] == "  " + "| " * (n // 100 - 2) + "` "


def test_a_long_segment_keeps_its_start_and_its_end_that_leads_to_the_fork():
    text = "a" * 10 + "b" * 1000 + "THE END"
    short = keep_ends(text)
    assert short.startswith("a" * 10) and short.endswith("b" * (TAIL_CHARS - 7) + "THE END")
    assert len(short) == HEAD_CHARS + 1 + TAIL_CHARS and "\u2026" in short
    assert keep_ends("short") == "short"
    # In the outline: a 400-token root segment ends with the tokens just before the fork.
    nodes = [Node(i, i - 1 or None, i) for i in range(1, 401)] + [Node(401, 400, 1), Node(402, 400, 2)]
    pieces = {i: (b" end" if i == 400 else b" t") for i in range(1, 401)}
    got = Outline().lines(nodes, {401: ["x*"]}, 401, lambda ids: join_pieces(ids, pieces))
    root = got[0].text
    assert root.endswith(" t t end") and root.startswith(" t t") and "\u2026" in root

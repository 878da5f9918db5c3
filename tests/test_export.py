"""Export of a session's branch tree: exact text, JSON round trip, dot structure, markdown."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from tokentree.export import (
    ExportBranch,
    ExportNode,
    ExportTree,
    export_session,
    load_export_tree,
    render_dot,
    render_json,
    render_markdown,
    render_text,
)
from tokentree.errors import InputError
from tokentree.outputs import Distribution, NodeOutput

# --------------------------------------------------------------------------- the known tree
#
#   "The cat"  (root prompt: tokens 1, 2)
#   ├── " sat" (0.6)  <- branch "mid" ends here
#   │   └── " on" (0.9)
#   │       ├── " down" (0.7)   <- "copy"
#   │       └── "\n" (0.2)      <- "main" (focused)
#   └── " ran" (0.3)
#       ├── b"\xc3" (0.1)      first half of é / è
#       │   ├── b"\xa9" (0.99)  <- "alt"
#       │   └── b"\xa8" (0.005)
#       └── b'\t"x\\' (0.0001)

PIECES = {
    1: b"The", 2: b" cat", 3: b" sat", 4: b" on", 5: b"\n", 6: b" ran", 7: b"\xc3", 8: b"\xa9",
    9: b" down", 10: b"\xa8", 11: b'\t"x\\', 12: b" dog", 13: b"!",
}
# Next-token distribution after each explored prefix (the cache the model would have written).
NEXT = {
    (1,): {2: 0.5, 12: 0.25},
    (1, 2): {3: 0.6, 6: 0.3, 12: 0.05, 11: 0.0001},
    (1, 2, 3): {4: 0.9, 13: 0.05},
    (1, 2, 3, 4): {9: 0.7, 5: 0.2},
    (1, 2, 6): {7: 0.1, 13: 0.05, 11: 0.0001},
    (1, 2, 6, 7): {8: 0.99, 10: 0.005},
}
BRANCHES = [  # name, token path; created in this order, "main" focused at the end
    ("main", (1, 2, 3, 4, 5)),
    ("mid", (1, 2, 3)),
    ("copy", (1, 2, 3, 4, 9)),
    ("alt", (1, 2, 6, 7, 8)),
]
EXTRA = [(1, 2, 6, 7, 10), (1, 2, 6, 11)]  # explored, then left: no branch ends there


def entropy_of(prefix: tuple[int, ...]) -> float:
    return 1.0 + 0.25 * len(prefix)


def dist_of(prefix: tuple[int, ...]) -> Distribution:
    probs = NEXT.get(prefix, {13: 0.5})
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    h = entropy_of(prefix)
    return Distribution(tuple(t for t, _ in ranked), tuple(p for _, p in ranked), h, h / math.log(1000))


def output_of(path: tuple[int, ...]) -> NodeOutput:
    if len(path) == 1:
        return NodeOutput(None, None, dist_of(path))
    parent = dist_of(path[:-1])
    rank = parent.top_ids.index(path[-1]) + 1
    return NodeOutput(parent.top_probs[rank - 1], rank, dist_of(path))


def all_paths() -> list[tuple[int, ...]]:
    paths = set()
    for path in [p for _, p in BRANCHES] + EXTRA:
        for i in range(1, len(path) + 1):
            paths.add(path[:i])
    return sorted(paths, key=lambda p: (len(p), p))


def hand_tree() -> ExportTree:
    """The known tree as plain data, built the way the loader builds it."""
    paths = all_paths()
    ids = {p: i for i, p in enumerate(paths, 1)}
    nodes = []
    for p in paths:
        parent = dist_of(p[:-1]) if len(p) > 1 else None
        out = output_of(p)
        nodes.append(
            ExportNode(
                id=ids[p], parent=ids.get(p[:-1]), token_id=p[-1], depth=len(p), piece=PIECES[p[-1]],
                prob=out.token_prob, rank=out.token_rank,
                entropy=parent.entropy if parent else None,
                norm_entropy=parent.norm_entropy if parent else None,
                top_ids=parent.top_ids if parent else (), top_probs=parent.top_probs if parent else (),
                next_dist=out.next,
            )
        )
    branches = tuple(
        ExportBranch(
            id=i, name=name, position=i - 1, focused=name == "main", node_id=ids[path], root_node_id=ids[(1, 2)],
            node_ids=tuple(ids[path[:k]] for k in range(1, len(path) + 1)), token_ids=path,
        )
        for i, (name, path) in enumerate(BRANCHES, 1)
    )
    session = {"id": 1, "created_at": "2024-05-01T09:00:00Z", "last_used_at": "2024-05-01T09:30:00Z",
               "model_name": "test-model", "prompt_sources": ["p.txt"]}
    model = {"name": "test-model", "fingerprint": "fp-1", "vocab_key": "vk"}
    return ExportTree(session, model, branches, tuple(nodes), dict(PIECES))


EXPECTED_TEXT = """\
session 1, test-model, 4 branches, 11 nodes

The cat
^ prompt 1 (2 tokens)  logp=-0.69
├── ·sat  p=0.600  logp=-0.51  [mid]
│   └── ·on  p=0.900  logp=-0.11
│       ├── ·down  p=0.700  logp=-0.36  [copy]
│       └── ⏎  p=0.200  logp=-1.61  [main*]
└── ·ran  p=0.300  logp=-1.20
    ├── \\xc3  p=0.100  logp=-2.30
    │   ├── é  p=0.990  logp=-0.01  [alt]
    │   └── è  p=0.005  logp=-5.30
    └── ⇥"x\\  p=1.0e-04  logp=-9.21
"""

EXPECTED_ASCII = """\
session 1, test-model, 4 branches, 11 nodes

The cat
^ prompt 1 (2 tokens)  logp=-0.69
|-- " sat"  p=0.600  logp=-0.51  [mid]
|   `-- " on"  p=0.900  logp=-0.11
|       |-- " down"  p=0.700  logp=-0.36  [copy]
|       `-- "\\n"  p=0.200  logp=-1.61  [main*]
`-- " ran"  p=0.300  logp=-1.20
    |-- "\\xc3"  p=0.100  logp=-2.30
    |   |-- "é"  p=0.990  logp=-0.01  [alt]
    |   `-- "è"  p=0.005  logp=-5.30
    `-- "\\t\\"x\\\\"  p=1.0e-04  logp=-9.21
"""

BOX_CHARS = set("─│┌┐└┘├┤┬┴┼═║╔╗╚╝╠╣╦╩╬")


# --------------------------------------------------------------------------- store-built session


@pytest.fixture
def store(tmp_path):
    from tokentree.store import Store

    st = Store.open(tmp_path / "export.db")
    yield st
    st.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(store, session id) of the known tree, built once for the tests that only read it."""
    from tokentree.store import Store

    st = Store.open(tmp_path_factory.mktemp("export") / "built.db")
    sid = build_session(st)
    yield st, sid
    st.close()


def build_session(store, fingerprint: str = "fp-1") -> int:
    """The known tree through the Store API, with the model cache filled for `fingerprint`
    (and contradicting values cached for another model, which the export must not show)."""
    sid = store.start_session(model_name="test-model", fingerprint=fingerprint, vocab_key="vk",
                              prompt_sources=["p.txt"])
    store.put_token_bytes("vk", PIECES)
    branch_ids = {}
    for name, path in BRANCHES:
        bid = store.create_branch(sid, path[:2], source="p.txt", name=name)
        for token in path[2:]:
            store.append_token(sid, bid, token)
        branch_ids[name] = bid
    scratch = branch_ids["alt"]
    for path in EXTRA:  # explore, then go back to where "alt" was
        store.reset_branch(sid, scratch)
        for token in path[2:]:
            store.append_token(sid, scratch, token)
    store.reset_branch(sid, scratch)
    for token in BRANCHES[3][1][2:]:
        store.append_token(sid, scratch, token)
    store.focus_branch(sid, branch_ids["main"])

    by_path = {}
    for node in store.session_nodes(sid):
        path = tuple(n.token_id for n in store.path_nodes(node.id))
        by_path[path] = node
    assert set(by_path) == set(all_paths())
    store.put_outputs([(by_path[p].prefix_key, output_of(p)) for p in all_paths()], fingerprint)
    wrong = NodeOutput(0.123, 7, Distribution((13,), (0.123,), 9.0, 0.9))
    store.put_outputs([(by_path[p].prefix_key, wrong) for p in all_paths()], "other-model")
    return sid


# --------------------------------------------------------------------------- text


def test_text_of_known_tree_is_exact():
    assert render_text(hand_tree()) == EXPECTED_TEXT


def test_text_ascii_has_no_box_drawing_and_is_ascii_drawn():
    out = render_text(hand_tree(), ascii=True)
    assert out == EXPECTED_ASCII
    assert not BOX_CHARS & set(out)
    assert not set("·⏎⇥") & set(out)


def test_text_of_store_session_is_exact(built):
    store, sid = built
    assert sid == 1
    assert export_session(store, sid, "text") == EXPECTED_TEXT
    assert export_session(store, sid, "text", ascii=True) == EXPECTED_ASCII


def test_text_is_deterministic_regardless_of_input_order():
    tree = hand_tree()
    shuffled = ExportTree(tree.session, tree.model, tree.branches, tuple(reversed(tree.nodes)), tree.pieces)
    assert render_text(shuffled) == render_text(tree) == EXPECTED_TEXT


def test_text_handles_a_deep_chain_without_recursion():
    n = 20_000  # deeper than any recursion limit
    nodes = [ExportNode(1, None, 1, 1, b"a", None, None, None, None)]
    nodes += [ExportNode(i, i - 1, 2, i, b" b", 0.5, 1, 1.0, 0.1) for i in range(2, n + 1)]
    # a fork every 400 tokens, so the tree is deep in segments too
    nodes += [ExportNode(n + i, i, 3, i + 1, b"!", 0.1, 2, 1.0, 0.1) for i in range(400, n, 400)]
    tip = ExportBranch(1, "deep", 0, True, n, 1, tuple(range(1, n + 1)), (1,) + (2,) * (n - 1))
    out = render_text(ExportTree({"id": 9}, {"name": "m"}, (tip,), tuple(nodes), {}))
    lines = out.splitlines()
    assert len(lines) == 2 + 2 + 2 * 49 + 1  # header, blank, the prompt and its line, 2 per fork, the tip
    tip_lines = [line for line in lines if line.endswith("[deep*]")]
    assert len(tip_lines) == 1
    assert tip_lines[0].startswith("    " + "│   " * 48 + "├── ·b·b")  # prompt "a", then 49 forks deep


# --------------------------------------------------------------------------- json


def check_json_round_trip(doc: dict) -> None:
    assert doc["format"] == "tokentree-export" and doc["version"] == 2
    nodes = {n["id"]: n for n in doc["nodes"]}
    assert len(nodes) == len(doc["nodes"])
    for n in doc["nodes"]:
        assert set(n) == {"id", "parent", "token_id", "text", "prob", "rank", "entropy", "top", "next"}
        assert n["parent"] is None or n["parent"] in nodes
        assert n["next"] is None or set(n["next"]) == {"entropy", "entropy_exact", "top"}
    for b in doc["branches"]:
        assert set(b) == {"id", "name", "focused", "token_ids", "text"}
        # the token ids walk existing nodes from a root
        current = None
        for token in b["token_ids"]:
            kids = [n for n in doc["nodes"] if n["parent"] == current and n["token_id"] == token]
            assert len(kids) == 1, (b["name"], token)
            current = kids[0]["id"]


def node_paths(doc: dict) -> dict[tuple[int, ...], dict]:
    nodes = {n["id"]: n for n in doc["nodes"]}
    out = {}
    for n in doc["nodes"]:
        path, cur = [], n
        while cur is not None:
            path.append(cur["token_id"])
            cur = nodes.get(cur["parent"])
        out[tuple(reversed(path))] = n
    return out


def check_json_values(doc: dict, cached=output_of) -> None:
    """Every value equals the cached one: `cached(path)` is the NodeOutput stored for a prefix."""
    by_path = node_paths(doc)
    assert set(by_path) == set(all_paths())
    for path, n in by_path.items():
        out = cached(path)
        assert n["prob"] == out.token_prob
        assert n["rank"] == out.token_rank
        if len(path) == 1:
            assert n["prob"] is None and n["entropy"] is None and n["top"] == []
        else:
            parent = cached(path[:-1]).next
            assert parent.top_probs == pytest.approx(dist_of(path[:-1]).top_probs, rel=1e-6)
            assert n["entropy"] == parent.entropy
            assert [t["token_id"] for t in n["top"]] == list(parent.top_ids)
            assert [t["prob"] for t in n["top"]] == list(parent.top_probs)
            assert [t["text"] for t in n["top"]] == [PIECES[t].decode("utf-8", "backslashreplace")
                                                     for t in parent.top_ids]
        own = out.next  # the node's own next-token distribution
        assert n["next"]["entropy"] == own.entropy == entropy_of(path)
        assert n["next"]["entropy_exact"] is True
        assert [t["token_id"] for t in n["next"]["top"]] == list(own.top_ids)
        assert [t["prob"] for t in n["next"]["top"]] == list(own.top_probs)
        if len(path) > 1:  # a node's "top" is its parent's "next" list, in the same shape
            assert n["top"] == by_path[path[:-1]]["next"]["top"]
    assert by_path[(1, 2, 6, 7)]["text"] == "\\xc3"  # a lone fragment, escaped
    branches = {b["name"]: b for b in doc["branches"]}
    assert [b["name"] for b in doc["branches"]] == [name for name, _ in BRANCHES]
    assert {name for name, b in branches.items() if b["focused"]} == {"main"}
    for name, path in BRANCHES:
        assert tuple(branches[name]["token_ids"]) == path
    assert branches["alt"]["text"] == "The cat rané"
    assert branches["main"]["text"] == "The cat sat on\n"


def test_json_round_trips_hand_tree():
    doc = json.loads(render_json(hand_tree()))
    check_json_round_trip(doc)
    check_json_values(doc)


def test_json_round_trips_store_session(built):
    store, sid = built
    doc = json.loads(export_session(store, sid, "json"))
    check_json_round_trip(doc)
    keys = {tuple(n.token_id for n in store.path_nodes(node.id)): node.prefix_key for node in store.session_nodes(sid)}
    cached = store.get_outputs(list(keys.values()), "fp-1")
    check_json_values(doc, lambda path: cached[keys[path]])  # the session model's values, not "other-model"
    assert doc["session"]["id"] == sid
    assert doc["session"]["prompt_sources"] == ["p.txt"]
    assert doc["model"] == {"name": "test-model", "fingerprint": "fp-1", "vocab_key": "vk"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["session"]["created_at"])


def test_json_of_a_session_of_another_model_has_no_values(store):
    """Resumed with a different model: its fingerprint has no cache, so nothing is invented."""
    sid = build_session(store, fingerprint="fp-1")
    other = store.start_session(model_name="new-model", fingerprint="fp-new", vocab_key="vk", prompt_sources=[])
    store.create_branch(other, [1, 2], name="x")
    doc = json.loads(export_session(store, other, "json"))
    check_json_round_trip(doc)
    assert [n["prob"] for n in doc["nodes"]] == [None, None]
    assert all(n["top"] == [] and n["entropy"] is None and n["next"] is None for n in doc["nodes"])
    assert sid != other


# --------------------------------------------------------------------------- dot


def check_dot(out: str) -> tuple[set[str], list[tuple[str, str]]]:
    # remove quoted strings (with escapes), then check structure
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', out)
    assert bare.count("{") == bare.count("}") == 1
    assert bare.count("[") == bare.count("]")
    assert bare.startswith("digraph tokentree {") and bare.rstrip().endswith("}")
    declared = set(re.findall(r"^\s*(n\d+) \[", bare, re.M))
    edges = re.findall(r"^\s*(n\d+) -> (n\d+);", bare, re.M)
    for a, b in edges:
        assert a in declared and b in declared
    return declared, edges


def test_dot_is_structurally_valid():
    out = render_dot(hand_tree())
    declared, edges = check_dot(out)
    assert len(declared) == 10  # one per segment
    assert len(edges) == 9
    # branch tips are marked, the focused one filled
    tips = re.findall(r'^\s*n\d+ \[label="([^\n]*?)\\n.*peripheries=2', out, re.M)
    assert len(tips) == 4
    assert out.count("filled") == 1
    # quotes and backslashes in token text are escaped
    assert r'label="⇥\"x\\\np=1.0e-04' in out


def test_dot_of_store_session(built):
    store, sid = built
    declared, edges = check_dot(export_session(store, sid, "dot"))
    assert len(declared) == 10 and len(edges) == 9


# --------------------------------------------------------------------------- markdown


def test_markdown_has_the_prompt_once_then_one_section_per_branch():
    out = render_markdown(hand_tree())
    sections = re.findall(r"^## (.*)$", out, re.M)
    assert sections == ["Prompt 1", "main (focused)", "mid", "copy", "alt"]
    # Every node on a branch has exactly one row: the shared prefix is not repeated.
    rows = re.findall(r"^\| (\d+) \| .* \| (\d+) \| [^|]* \| [^|]* \| [^|]* \|$", out, re.M)
    on_branches = {path[:k] for _, path in BRANCHES for k in range(1, len(path) + 1)}
    assert len(rows) == len(on_branches) == 9
    assert "| 1 | `The` | 1 | n/a | n/a | n/a |" in out
    assert "| 5 | `⏎` | 5 | 0.200 | 2 | 2.000 |" in out
    assert "```text\nThe cat\n```" in out
    assert "```text\n ran\u00e9\n```" in out  # alt after its prompt: é whole across two tokens
    assert "The root prompt of main, mid, copy, alt: 2 tokens, total logp=-0.69." in out
    main_part = out.split("## main (focused)")[1].split("## mid")[0]
    assert "Branch 1: prompt 1 (2 tokens), then 3 tokens; total logp=-2.92." in main_part
    assert "Tokens 1\u20132 are in the table of prompt 1 above." in main_part
    mid = out.split("## mid")[1].split("## copy")[0]
    assert "All 3 tokens are in the table of \u201cmain\u201d above." in mid and "| # |" not in mid
    copy = out.split("## copy")[1].split("## alt")[0]
    assert "Tokens 1\u20134 are in the table of \u201cmain\u201d above." in copy
    assert re.findall(r"^\| \d+ \|", copy, re.M) == ["| 5 |"]


def _fan_tree(prompt_len: int, branches: int, tail: int) -> ExportTree:
    """One prompt of `prompt_len` tokens and `branches` branches that each leave it with
    `tail` tokens of their own (as `g` makes them)."""
    nodes = [ExportNode(i, i - 1 if i > 1 else None, 100 + i % 7, i, b"ab"[i % 2:][:1] + b"\n" * (i % 5 == 0),
                        None if i == 1 else 0.5, None if i == 1 else 1, None if i == 1 else 1.0, None)
             for i in range(1, prompt_len + 1)]
    out_branches = []
    next_id = prompt_len + 1
    for b in range(branches):
        ids = list(range(1, prompt_len + 1))
        parent = prompt_len
        for t in range(tail):
            nodes.append(ExportNode(next_id, parent, 200 + b, prompt_len + t + 1, b" x", 0.25, 2, 1.0, None))
            ids.append(next_id)
            parent, next_id = next_id, next_id + 1
        out_branches.append(ExportBranch(b + 1, f"sample {b + 1}", b, b == 0, ids[-1], prompt_len, tuple(ids),
                                         tuple(nodes[i - 1].token_id for i in ids)))
    session = {"id": 1, "created_at": None, "last_used_at": None, "model_name": "m", "prompt_sources": []}
    return ExportTree(session, {"name": "m", "fingerprint": "f", "vocab_key": "v"}, tuple(out_branches),
                      tuple(nodes), {})


def test_markdown_grows_with_the_nodes_not_with_branches_times_prompt():
    """23 branches over a shared 67-token prompt was 2,121 lines: each branch repeated the
    prompt's table. Now the prompt's rows and text are written once."""
    def lines(prompt_len, branches, tail=3):
        return render_markdown(_fan_tree(prompt_len, branches, tail)).count("\n")

    base = lines(67, 23)
    assert base < 67 + 23 * (3 + 20) + 40, base  # rows per node + a few lines per section
    assert lines(134, 23) - base < 67 + 67 // 5 + 5  # 67 more prompt tokens: ~67 more lines, not 23 x 67
    per_branch = lines(67, 24) - base
    assert per_branch < 3 + 20  # a new branch adds its own rows and a short header
    assert lines(67, 23, tail=6) - base == 23 * 3  # 3 more tokens per branch: exactly their rows


def test_markdown_of_store_session(built):
    store, sid = built
    out = export_session(store, sid, "markdown")
    assert out.count("\n## ") == 5 and "\n## Prompt 1\n" in out


def test_unknown_format_is_a_clear_error(built):
    store, sid = built
    with pytest.raises(InputError, match="unknown export format"):
        export_session(store, sid, "yaml")
    loaded = load_export_tree(store, sid)
    assert len(loaded.nodes) == 11 and len(loaded.branches) == 4


def test_json_never_writes_nan_or_infinity():
    tree = hand_tree()
    bad = tree.nodes[1]._replace(prob=float("nan"), entropy=float("inf"),
                                 top_probs=(float("nan"),) + tree.nodes[1].top_probs[1:])
    tree = ExportTree(tree.session, tree.model, tree.branches, (tree.nodes[0], bad) + tree.nodes[2:], tree.pieces)
    out = render_json(tree)
    assert "NaN" not in out and "Infinity" not in out
    node = json.loads(out)["nodes"][1]
    assert node["prob"] is None and node["entropy"] is None and node["top"][0]["prob"] is None


def test_unknown_bytes_and_control_codes_show_as_on_screen_in_every_format():
    """The placeholder ⟨id⟩ for a token whose bytes are unknown, \\xNN for control codes and
    for bytes that never form a character (never U+FFFD), in every format."""
    nodes = (
        ExportNode(1, None, 1, 1, b"a\x1b", None, None, None, None),
        ExportNode(2, 1, 2, 2, None, 0.5, 1, 1.0, 0.1, (2, 3), (0.5, 0.25)),
        ExportNode(3, 2, 3, 3, "\u009b".encode() + b"\xc3", 0.25, 2, 1.0, 0.1, (3,), (0.25,)),
    )
    branch = ExportBranch(1, "b", 0, True, 3, 1, (1, 2, 3), (1, 2, 3))
    tree = ExportTree({"id": 1, "created_at": None, "last_used_at": None, "model_name": "m", "prompt_sources": []},
                      {"name": "m", "fingerprint": "f", "vocab_key": "v"}, (branch,), nodes,
                      {1: b"a\x1b", 3: nodes[2].piece})
    text = render_text(tree)
    assert "\na\\x1b\n^ prompt 1 (1 token)  logp=" in text and "\u27e82\u27e9\\x9b\\xc3  p=0.500" in text
    assert '"\u27e82\u27e9\\x9b\\xc3"' in render_text(tree, ascii=True)
    assert "\u27e82\u27e9\\\\x9b\\\\xc3" in render_dot(tree)
    md = render_markdown(tree)
    assert "```text\na\\x1b\n```" in md  # the prompt (node 1)
    assert "```text\n\u27e82\u27e9\\x9b\\xc3\n```" in md and "| 2 | `\u27e82\u27e9` | 2 |" in md
    doc = json.loads(render_json(tree))
    assert doc["branches"][0]["text"] == "a\x1b\u27e82\u27e9\u009b\\xc3"  # JSON escapes controls itself
    assert [n["text"] for n in doc["nodes"]] == ["a\x1b", "\u27e82\u27e9", "\u009b\\xc3"]
    assert doc["nodes"][1]["top"][0]["text"] == "\u27e82\u27e9"
    for out in (text, render_dot(tree), md):
        assert "\x1b" not in out and "\u009b" not in out
    assert "\ufffd" not in text + md + render_json(tree)


def test_markdown_escapes_bytes_as_the_screen_does():
    """A stray continuation byte (\\x8e) and a C1 control show as \\xNN, exactly as the prompt
    pane (tree.text.join_pieces) shows them, never U+FFFD."""
    from tokentree.tree.text import join_pieces

    pieces = {1: b"caf", 2: b"\x8e", 3: b"\xc2\x9b!", 4: b"\xe2\x80"}
    nodes = tuple(ExportNode(i, i - 1 or None, i, i, pieces[i], None if i == 1 else 0.5, None, None, None)
                  for i in range(1, 5))
    branch = ExportBranch(1, "b", 0, True, 4, 1, (1, 2, 3, 4), (1, 2, 3, 4))
    tree = ExportTree({"id": 1, "created_at": None, "last_used_at": None, "model_name": "m", "prompt_sources": []},
                      {"name": "m", "fingerprint": "f", "vocab_key": "v"}, (branch,), nodes, pieces)
    md = render_markdown(tree)
    screen = join_pieces([2, 3, 4], pieces)
    assert screen == "\\x8e\\x9b!\\xe2\\x80"
    assert f"```text\n{screen}\n```" in md
    assert "| 2 | `\\x8e` | 2 |" in md and "\ufffd" not in md


# --------------------------------------------------------------------------- exports people read

# A prompt with a special token, a newline, a tab, a double space and a token whose bytes the
# vocabulary table lacks (42); two branches go on from it.
READ_PIECES = {10: b"<|im_start|>", 1: b"Q:", 2: b"\n", 3: b"\t", 4: b"two", 5: b"  ", 6: b"spaces",
               7: b" yes", 8: b" no"}
READ_PROMPT = (10, 1, 2, 3, 4, 5, 42, 6)
READ_BRANCHES = [("a", READ_PROMPT + (7,)), ("b", READ_PROMPT + (8, 2))]
PROMPT_SHOWN = "<|im_start|>Q:\n\ttwo  \u27e842\u27e9spaces"  # verbatim; ⟨42⟩ as on screen

EXPECTED_READ_TEXT = f"""\
session 1, test-model, 2 branches, 11 nodes

{PROMPT_SHOWN}
^ prompt 1 (8 tokens)  logp=n/a
├── ·yes  p=n/a  logp=n/a  [a]
└── ·no⏎  p=n/a  logp=n/a  [b*]
"""


def build_read_session(store) -> int:
    sid = store.start_session(model_name="test-model", fingerprint="fp-1", vocab_key="vk", prompt_sources=["q.txt"])
    store.put_token_bytes("vk", READ_PIECES)
    for name, path in READ_BRANCHES:
        bid = store.create_branch(sid, READ_PROMPT, source="q.txt", name=name)
        for token in path[len(READ_PROMPT):]:
            store.append_token(sid, bid, token)
    return sid


def run_export_command(*args: str) -> str:
    """`tokentree export ...` as a user runs it, in its own process."""
    result = subprocess.run([sys.executable, "-m", "tokentree", "export", *args],
                            capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0, result.stderr
    return result.stdout


def segment_labels(text: str) -> list[str]:
    """The token text of each tree line below a root line (box drawing)."""
    return re.findall(r"^[│ ]*[├└]── (\S*)  p=", text, re.M)


def test_text_export_begins_with_the_prompt_verbatim(store, tmp_path):
    build_read_session(store)
    out = run_export_command("last", "--db", str(tmp_path / "export.db"))
    assert out == EXPECTED_READ_TEXT
    header, blank, rest = out.split("\n", 2)
    assert blank == "" and rest.startswith(PROMPT_SHOWN + "\n^ prompt 1 ")
    # "·" stands for a space only inside a tree segment, never in the prompt or the header
    assert "\u00b7" not in header + PROMPT_SHOWN
    assert out.count("\u00b7") == sum(label.count("\u00b7") for label in segment_labels(out)) == 2


def test_text_export_ascii_keeps_the_prompt_verbatim(store):
    sid = build_read_session(store)
    out = export_session(store, sid, "text", ascii=True)
    assert out.startswith(f"session 1, test-model, 2 branches, 11 nodes\n\n{PROMPT_SHOWN}\n^ prompt 1 ")
    assert '`-- " no\\n"  p=n/a' in out and "\u00b7" not in out


def _prompt_tree(prompts: dict[str, tuple[int, ...]], pieces: dict[int, bytes]) -> ExportTree:
    """One branch per prompt, nodes shared by common prefixes (as the store shares them)."""
    ids: dict[tuple[int, ...], int] = {}
    nodes = []
    for path in prompts.values():
        for k in range(1, len(path) + 1):
            if path[:k] not in ids:
                ids[path[:k]] = len(ids) + 1
                nodes.append(ExportNode(ids[path[:k]], ids.get(path[:k - 1]), path[k - 1], k, pieces[path[k - 1]],
                                        None if k == 1 else 0.5, None, None, None))
    branches = tuple(ExportBranch(i, name, i - 1, i == 1, ids[path], ids[path],
                                  tuple(ids[path[:k]] for k in range(1, len(path) + 1)), path)
                     for i, (name, path) in enumerate(prompts.items(), 1))
    return ExportTree({"id": 1}, {"name": "m"}, branches, tuple(nodes), pieces)


def test_text_export_prompts_that_share_their_start_each_show_whole():
    """Two prompts that begin alike share their first nodes, so no one tree line is a whole
    prompt: each is still printed verbatim with its own line, and the tree repeats the tokens."""
    pieces = {1: b"Q:", 2: b"\n", 3: b"one", 4: b"two  three"}
    out = render_text(_prompt_tree({"x": (1, 2, 3), "y": (1, 2, 4)}, pieces))
    assert out == (
        "session 1, m, 2 branches, 4 nodes\n"
        "\n"
        "Q:\none\n^ prompt 1 (3 tokens)  logp=-1.39\n"
        "Q:\ntwo  three\n^ prompt 2 (3 tokens)  logp=-1.39\n"
        "\n"
        "Q:⏎  logp=-0.69\n"
        "├── one  p=0.500  logp=-0.69  [x*]\n"
        "└── two··three  p=0.500  logp=-0.69  [y]\n"
    )


def test_json_next_is_each_nodes_own_distribution_where_cached(store):
    """"next" is the cached distribution after the node itself (its children's "top"); null
    for a node the model has not computed yet. Its exactness is what the cache says."""
    sid = build_session(store)
    main_branch = next(b for b in store.branches(sid) if b.name == "main")
    store.append_token(sid, main_branch.id, 13)  # a new node nothing has computed
    doc = json.loads(export_session(store, sid, "json"))
    assert doc["version"] == 2
    check_json_round_trip(doc)
    by_path = node_paths(doc)
    keys = {tuple(n.token_id for n in store.path_nodes(node.id)): node.prefix_key for node in store.session_nodes(sid)}
    cached = store.get_outputs(list(keys.values()), "fp-1")
    for path in all_paths():
        dist = cached[keys[path]].next
        assert by_path[path]["next"] == {
            "entropy": dist.entropy,
            "entropy_exact": getattr(dist, "exact", True),
            "top": [{"token_id": t, "text": PIECES[t].decode("utf-8", "backslashreplace"), "prob": p}
                    for t, p in zip(dist.top_ids, dist.top_probs)],
        }
    new = by_path[BRANCHES[0][1] + (13,)]
    assert new["next"] is None and new["prob"] is None
    assert new["top"] == by_path[BRANCHES[0][1]]["next"]["top"] != []  # its parent's is cached


def test_json_entropy_exact_follows_the_distribution():
    tree = hand_tree()
    inexact = tree.nodes[1]._replace(next_dist=Distribution((3,), (0.6,), 1.5, 0.2, exact=False))
    tree = ExportTree(tree.session, tree.model, tree.branches, (tree.nodes[0], inexact) + tree.nodes[2:], tree.pieces)
    nodes = json.loads(render_json(tree))["nodes"]
    assert nodes[1]["next"] == {"entropy": 1.5, "entropy_exact": False,
                                "top": [{"token_id": 3, "text": " sat", "prob": 0.6}]}
    assert all(n["next"]["entropy_exact"] for i, n in enumerate(nodes) if i != 1)


def test_json_export_command_honours_top(store, tmp_path, capsys):
    from tokentree.cli import main

    build_session(store)
    db = str(tmp_path / "export.db")
    full = json.loads(run_export_command("last", "-f", "json", "--db", db))
    for n in (0, 1, 3):
        assert main(["export", "-f", "json", "--top", str(n), "--db", db]) == 0
        cut = json.loads(capsys.readouterr().out)
        assert cut["version"] == 2
        for short, whole in zip(cut["nodes"], full["nodes"]):
            assert short["top"] == whole["top"][:n]
            assert short["next"] == dict(whole["next"], top=whole["next"]["top"][:n])
        assert max(len(node["next"]["top"]) for node in cut["nodes"]) == min(n, 4)  # 4: the most cached
    assert main(["export", "-f", "json", "--top", "-1", "--db", db]) == 2
    assert "--top must be 0 or more" in capsys.readouterr().err

"""`tokentree export [SESSION] --diff A B`: two branches token by token, as text.

The same table the diff view (c) shows (tokentree.features.compare.diff.diff_table): from the fork
point on, each branch's tokens side by side with their log-probabilities (under the
session's model, from the cache), the difference, the totals and the perplexities. A value
the cache does not have is "n/a" (a first token has no distribution before it; a token the
model has not scored yet has none either: open the session to compute it).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from tokentree.features.compare.diff import BranchDiff, branch_diff, diff_table
from tokentree.errors import InputError
from tokentree.tree.text import join_pieces, one_line, placeholder, visible

TOKEN_MAX = 24  # a longer token is cut ('…') so the columns stay readable


def width(text: str) -> int:
    """Terminal columns: wide (CJK, emoji) 2, combining marks 0, others 1."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def _cut(text: str, w: int) -> str:
    if width(text) <= w:
        return text
    out, used = "", 0
    for c in text:
        cw = width(c)
        if used + cw > w - 1:
            break
        out, used = out + c, used + cw
    return out + "\u2026"


def _pad(text: str, w: int, right: bool = False) -> str:
    text = _cut(text, w)
    gap = " " * max(0, w - width(text))
    return gap + text if right else text + gap


def find_branch(branches: Sequence, ref: str, session_id: int):
    """A branch by name (exactly as listed), else by id; InputError naming the choices."""
    ref = ref.strip()
    for b in branches:
        if b.name == ref:
            return b
    if ref.isdigit():
        for b in branches:
            if b.id == int(ref):
                return b
    names = [b.name for b in branches]
    listed = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    raise InputError(f"no branch {ref!r} in session {session_id} (branches: {listed}; "
                     "a branch is given by its name or id)")


def load_diff(store, session_id: int, a_ref: str, b_ref: str) -> BranchDiff:
    branches = store.branches(session_id)
    a, b = find_branch(branches, a_ref, session_id), find_branch(branches, b_ref, session_id)
    if a.id == b.id:
        raise InputError(f"--diff needs two different branches ({a_ref!r} and {b_ref!r} are both {a.name})")
    info = store.session(session_id)
    a_path, b_path = store.path_nodes(a.node_id), store.path_nodes(b.node_id)
    keys = [n.prefix_key for n in (*a_path, *b_path)]
    with store.reading() as r:
        got = r.output_probs(keys, info.fingerprint)
    probs = {k: got.get(k) for k in keys}  # not cached: n/a (nothing computes it here)
    pieces = store.token_bytes(info.vocab_key, {n.token_id for n in (*a_path, *b_path)})

    def text(token: int) -> str:
        return visible(pieces[token]) if token in pieces else placeholder(token)

    return branch_diff(a.name, a.id, a_path, b.name, b.id, b_path, probs=probs, text=text,
                       context_text=lambda ids: one_line(join_pieces(ids, pieces)))


def render_diff(diff: BranchDiff, *, header: str = "") -> str:
    table = diff_table(diff)
    cells = [table.columns, *table.rows, *table.totals]
    widths = [max(width(str(r[k])) for r in cells) for k in range(6)]
    widths[1] = min(widths[1], TOKEN_MAX)
    widths[3] = min(widths[3], TOKEN_MAX)

    def line(row) -> str:
        parts = [_pad(cell, w, right=k in (0, 2, 4, 5)) for k, (cell, w) in enumerate(zip(row, widths))]
        return (" ".join(parts[:3]) + " \u2502 " + " ".join(parts[3:])).rstrip()

    out = [header] if header else []
    out.append(table.title)
    out.append(f"after: {diff.context}" if diff.context else "the branches start with different tokens")
    out.append(line(table.columns))
    out += [line(r) for r in table.rows]
    out += [line(r) for r in table.totals]
    out.append(table.note)
    return "\n".join(out) + "\n"


def export_diff(store, session_id: int, a_ref: str, b_ref: str) -> str:
    info = store.session(session_id)
    diff = load_diff(store, session_id, a_ref, b_ref)
    return render_diff(diff, header=f"session {session_id}, {info.model_name}: branch diff")

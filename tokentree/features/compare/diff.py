"""Two branches compared token by token, as plain math.

No store, no urwid, no torch: the explorer, the TUI and the export feed these functions what
they read and format what comes back, so the screen and `tokentree export --diff` show the
same numbers.

Branch diff. Two branches share every node up to their fork point (nodes are content
addressed: one prefix is one node). From there on, row k holds the k-th token of each
branch after the fork, with its log-probability under the distribution that predicted it
(the cached `token_prob` of its node) and the difference Δ = logp(A) − logp(B). The totals
of a side are the sum of its known log-probabilities and the perplexity exp(−mean logp)
over them; a token whose probability is not known (not computed yet, or the first token of
a prompt, which has no predicting distribution) is counted apart, never invented.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest


@dataclass(frozen=True)
class DiffToken:
    token_id: int
    text: str  # as the candidate table shows it (leading space '·', newline '⏎', ...)
    logprob: float | None  # natural log of its probability; None: not known
    pending: bool = False  # not known YET (its output is not cached); False with None: n/a


@dataclass(frozen=True)
class Totals:
    tokens: int  # tokens after the fork point
    known: int  # of them, with a known log-probability
    logprob: float  # sum over the known ones (0.0 when none)

    @property
    def missing(self) -> int:
        return self.tokens - self.known

    @property
    def perplexity(self) -> float | None:
        """exp(−mean log p) over the known tokens; None when none is known."""
        if not self.known:
            return None
        return math.exp(-self.logprob / self.known)


@dataclass(frozen=True)
class DiffSide:
    name: str
    branch_id: int
    tokens: tuple[DiffToken, ...]  # after the fork point, in order

    @property
    def totals(self) -> Totals:
        known = [t.logprob for t in self.tokens if t.logprob is not None]
        return Totals(len(self.tokens), len(known), math.fsum(known))


@dataclass(frozen=True)
class DiffRow:
    position: int  # 1 = the first token after the fork point
    a: DiffToken | None  # None: branch A has ended
    b: DiffToken | None

    @property
    def delta(self) -> float | None:
        """logp(A) − logp(B), when both are known."""
        if self.a is None or self.b is None or self.a.logprob is None or self.b.logprob is None:
            return None
        return self.a.logprob - self.b.logprob


@dataclass(frozen=True)
class BranchDiff:
    a: DiffSide
    b: DiffSide
    shared: int  # tokens both branches share (the fork point's depth; 0: different first tokens)
    context: str  # the last few shared tokens' text, for the header

    @property
    def rows(self) -> tuple[DiffRow, ...]:
        return tuple(DiffRow(k + 1, a, b) for k, (a, b) in enumerate(zip_longest(self.a.tokens, self.b.tokens)))

    @property
    def same(self) -> bool:
        """Both branches end on the same node: nothing differs."""
        return not self.a.tokens and not self.b.tokens


def fork_depth(a_ids: Sequence[int], b_ids: Sequence[int]) -> int:
    """How many leading nodes two paths (node ids, root first) share."""
    n = 0
    for x, y in zip(a_ids, b_ids):
        if x != y:
            break
        n += 1
    return n


def logprob(p: float | None) -> float | None:
    if p is None:
        return None
    return math.log(p) if p > 0 else -math.inf


def branch_diff(a_name: str, a_id: int, a_path: Sequence, b_name: str, b_id: int, b_path: Sequence, *,
                probs: Mapping[bytes, float | None], text: Callable[[int], str],
                context_text: Callable[[Sequence[int]], str] | None = None) -> BranchDiff:
    """The diff of two branches from their fork point. Paths are nodes (id, token_id,
    prefix_key), root first; `probs` maps a prefix key to its cached token probability
    (a key that is absent: not computed yet; present with None: no distribution before it);
    `text(token_id)` is a token's table text; `context_text(ids)` the shared tail's text."""
    shared = fork_depth([n.id for n in a_path], [n.id for n in b_path])

    def side(name: str, branch_id: int, path: Sequence) -> DiffSide:
        tokens = []
        for node in path[shared:]:
            known = node.prefix_key in probs
            tokens.append(DiffToken(node.token_id, text(node.token_id),
                                    logprob(probs.get(node.prefix_key)), pending=not known))
        return DiffSide(name, branch_id, tuple(tokens))

    tail = [n.token_id for n in a_path[max(0, shared - 8):shared]]
    context = context_text(tail) if context_text is not None and tail else ""
    return BranchDiff(side(a_name, a_id, a_path), side(b_name, b_id, b_path), shared, context)


def fmt_logprob(value: float | None, pending: bool = False) -> str:
    if value is None:
        return "\u2026" if pending else "n/a"
    if value == -math.inf:
        return "-inf"
    return f"{value:.3f}"


def fmt_delta(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:+.3f}"


def fmt_total(totals: Totals) -> str:
    text = fmt_logprob(totals.logprob) if totals.known or not totals.tokens else "n/a"
    return text + (f" ({totals.missing} n/a)" if totals.missing and totals.known else "")


def fmt_perplexity(totals: Totals) -> str:
    ppl = totals.perplexity
    if ppl is None:
        return "n/a"
    return (f"{ppl:.3f}" if ppl < 1e6 else f"{ppl:.3g}") + (f" (of {totals.known})" if totals.missing else "")


def _tokens(n: int) -> str:
    return f"{n} token" if n == 1 else f"{n} tokens"


@dataclass(frozen=True)
class DiffTable:
    """The diff as cells, for any renderer: a header line, column titles, one cell tuple per
    row (position, A's token, its logp, B's token, its logp, Δ), and the totals lines."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    totals: tuple[tuple[str, ...], ...]
    note: str


def diff_table(diff: BranchDiff) -> DiffTable:
    a, b = diff.a, diff.b
    title = f"{a.name} (A) vs {b.name} (B): "
    if diff.shared:
        title += f"fork after {diff.shared} shared token{'s' if diff.shared != 1 else ''}"
    else:
        title += "no shared tokens"
    columns = ("#", f"A: {a.name}", "logp A", f"B: {b.name}", "logp B", "\u0394 A\u2212B")
    rows = []
    for row in diff.rows:
        cells = [str(row.position)]
        for tok in (row.a, row.b):
            cells += ["", ""] if tok is None else [tok.text, fmt_logprob(tok.logprob, tok.pending)]
        cells.append(fmt_delta(row.delta))
        rows.append(tuple(cells))
    ta, tb = a.totals, b.totals
    both = ta.known and tb.known
    delta = fmt_delta(ta.logprob - tb.logprob) if both and not ta.missing and not tb.missing else ""
    totals = (
        ("total", _tokens(ta.tokens), fmt_total(ta), _tokens(tb.tokens), fmt_total(tb), delta),
        ("ppl", "", fmt_perplexity(ta), "", fmt_perplexity(tb), ""),
    )
    if diff.same:
        note = "both branches end on the same node: nothing differs"
    else:
        note = ("logp: natural log of each token's probability under the distribution before it; "
                "ppl = exp(-mean logp); n/a: no value (a first token, or not computed)")
    return DiffTable(title, columns, tuple(rows), totals, note)

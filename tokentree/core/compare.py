"""Comparisons, as plain math: two branches token by token, and two models at one node.

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

Two models. Only the top K of each next-token distribution is cached, never the whole
vocabulary, so KL and total variation are computed over what is known, as bounds:

- S = the ids in BOTH top-K lists (their probabilities are known under both models); every
  other id is merged into one cell, "rest", whose mass is 1 − Σ_S under each model.
- KL(P ‖ Q) over the partition {each id of S, rest} is a LOWER BOUND on the full KL (merging
  outcomes never increases a divergence: the log-sum inequality). `kl` is that bound.
- TV over the same partition is a lower bound. Inside "rest" the two models' masses can
  differ by at most P(rest) + Q(rest) in all, so TV lies in [tv_low, tv_high]:
  tv_low  = ½ (Σ_S |p − q| + |P(rest) − Q(rest)|),
  tv_high = ½ (Σ_S |p − q| + P(rest) + Q(rest)), at most 1.
- Both are exact (`exact`) when the rest holds no mass under either model (the top-K lists
  cover the whole distribution, e.g. K ≥ the vocabulary).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest

# Masses below this are float32 rounding of a distribution that sums to 1 (the cache keeps
# probabilities as float32): a "rest" smaller than this counts as empty.
REST_EPSILON = 1e-5
# The disagreement view's scale: |Δ log p| at or above this many nats is the top colour.
DISAGREEMENT_NATS = 3.0


# --------------------------------------------------------------------------- branch diff


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


# --------------------------------------------------------------------------- two models


@dataclass(frozen=True)
class Divergence:
    """KL(P ‖ Q) and total variation between two top-K distributions (see the module doc)."""

    kl: float  # a lower bound on KL(P ‖ Q), nats; exact when `exact`
    tv_low: float
    tv_high: float
    exact: bool  # both top-K lists hold (all but float rounding of) the whole distribution
    shared: int  # ids in both top-K lists
    rest_p: float  # P's mass outside the shared ids
    rest_q: float


def _kl_term(p: float, q: float) -> float:
    if p <= 0:
        return 0.0
    if q <= 0:
        return math.inf
    return p * math.log(p / q)


def divergence(p_ids: Sequence[int], p_probs: Sequence[float], q_ids: Sequence[int],
               q_probs: Sequence[float]) -> Divergence:
    """KL(P ‖ Q) (a lower bound) and TV (an interval) from the two models' top-K lists."""
    q_of = dict(zip(q_ids, q_probs))
    shared = [(p, q_of[t]) for t, p in zip(p_ids, p_probs) if t in q_of]
    rest_p = max(0.0, 1.0 - math.fsum(p for p, _ in shared))
    rest_q = max(0.0, 1.0 - math.fsum(q for _, q in shared))
    empty_p, empty_q = rest_p < REST_EPSILON, rest_q < REST_EPSILON
    # The rest's term may be negative (P(rest) < Q(rest)): it is part of the bound. Q(rest)
    # computed as 0 may be float32 rounding of a mass up to REST_EPSILON: the floor keeps
    # the bound a bound (never an infinity the full KL does not have).
    kl = math.fsum([*(_kl_term(p, q) for p, q in shared), _kl_term(rest_p, max(rest_q, REST_EPSILON))])
    kl = max(0.0, kl)  # float32 rounding can make an exact zero a tiny negative
    inner = math.fsum(abs(p - q) for p, q in shared)
    tv_low = min(1.0, 0.5 * (inner + abs(rest_p - rest_q)))
    tv_high = min(1.0, 0.5 * (inner + rest_p + rest_q))
    exact = empty_p and empty_q
    if exact:
        tv_high = tv_low
    return Divergence(kl, tv_low, tv_high, exact, len(shared), rest_p, rest_q)


def compare_prob(token: int, q_ids: Sequence[int], q_probs: Sequence[float]) -> tuple[float, bool]:
    """The second model's probability of `token` from its top-K list: (p, False) when the
    token is in it, else (an upper bound, True): at most its K-th probability and at most
    the mass outside its list."""
    for t, q in zip(q_ids, q_probs):
        if t == token:
            return q, False
    rest = max(0.0, 1.0 - math.fsum(q_probs))
    return min(min(q_probs, default=1.0), rest), True


def disagreement(p_main: float | None, p_second: float | None) -> float | None:
    """|log p_main − log p_second| of one token, as a colour value in [0, 1] (DISAGREEMENT_NATS
    and above: 1); None when either model has no value for it."""
    if p_main is None or p_second is None:
        return None
    gap = abs(logprob(p_main) - logprob(p_second)) if p_main > 0 and p_second > 0 else (
        0.0 if p_main == p_second else math.inf)
    return min(1.0, gap / DISAGREEMENT_NATS)


def fmt_divergence(d: Divergence) -> str:
    """'KL ≥ 0.412 · TV 0.21–0.25' (bounds) or 'KL 0.412 · TV 0.231' (exact)."""
    kl = "inf" if math.isinf(d.kl) else f"{d.kl:.3f}"
    if d.exact:
        return f"KL {kl} \u00b7 TV {d.tv_low:.3f}"
    return f"KL \u2265 {kl} \u00b7 TV {d.tv_low:.2f}\u2013{d.tv_high:.2f}"

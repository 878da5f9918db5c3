"""Two models compared at one node, as plain math.

No store, no urwid, no torch: the explorer, the TUI and the export feed these functions what
they read and format what comes back, so the screen and `tokentree export --diff` show the
same numbers.

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
from collections.abc import Sequence
from dataclasses import dataclass

from .diff import logprob

# Masses below this are float32 rounding of a distribution that sums to 1 (the cache keeps
# probabilities as float32): a "rest" smaller than this counts as empty.
REST_EPSILON = 1e-5
# The disagreement view's scale: |Δ log p| at or above this many nats is the top colour.
DISAGREEMENT_NATS = 3.0


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

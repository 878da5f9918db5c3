"""Which candidates a sampler could pick, from a node's cached top-K alone (no torch here).

A sampler applies, in Hugging Face's order, temperature, then top-k, then top-p, then min-p,
and draws from what is left, renormalized. `Engine.sample` does exactly that on the full
vocabulary; `survivors` answers the same question from the K cached candidates of a node
(most likely first) and the mass `tail = 1 - sum(probs)` of the tokens outside them, and says
whether its answer is exact.

Semantics (as HF's TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper and
MinPLogitsWarper with min_tokens_to_keep=1):

- temperature T: probabilities become p ** (1/T), renormalized;
- top-k (0 = off): keep every token at least as likely as the k-th (ties at the boundary
  are all kept);
- top-p (1 = off): in order of decreasing probability, keep a token while the mass of the
  tokens before it (renormalized over what top-k kept) is below top_p; the first is always kept;
- min-p (0 = off): keep a token whose probability is at least min_p times the top token's.

Every filter keeps a prefix of the candidates in order of probability, so the survivors are
the n most likely tokens, n the smallest of the three filters' counts. Their probabilities are
p_i ** (1/T) renormalized over the survivors, which needs nothing outside them. So the answer
is EXACT when n is known and n <= K (no token outside the cached ones survives), whatever the
tokens outside are. What is known of those: each has a probability of at most p_min (the least
likely cached one) and together they hold `tail`. Hence:

- tail == 0 (or a zero p_min): exact.
- top-k with k <= K: exact (unless the k-th cached candidate is as unlikely as the last one,
  p_k == p_min, where an outside token could tie with it and be kept).
- min-p: an outside token survives it only if (p_min / p_max) ** (1/T) >= min_p, i.e. when the
  least likely cached candidate survives it too; otherwise it bounds n within the K.
- top-p needs the renormalizing sum Z (over what top-k kept) of the tempered probabilities.
  The tempered mass U of the outside tokens is known only within bounds:
    T == 1: U = tail exactly (so top-p at T 1 without top-k is exact whenever the cached
            candidates hold at least top_p: sum(probs) >= top_p, so no outside token's turn
            comes);
    T < 1:  0 <= U <= tail * p_min ** (1/T - 1)  (p ** a <= p * p_min ** (a - 1) for a > 1);
    T > 1:  tail * p_min ** (1/T - 1) <= U, with no upper bound (the outside tokens may be many
            and small; a top-k with k > K bounds nothing either, since every outside token
            tied with the k-th stays).
  (With top-k k > K only some of the outside tokens stay: their tempered mass is anywhere
  from 0 to the bound above.)
  The cut is known when it falls at the same candidate for the smallest and the largest
  possible Z, and within the K.
- Otherwise (no filter bounds n within the K): not exact.

`exact == True` is a guarantee; False means the tokens outside the cached K could change the
answer (it is conservative: some False answers may happen to be right). When not exact, the
values are an estimate that pictures the outside mass as tokens each as likely as the least
likely cached one (its most concentrated shape); the dict then holds the cached candidates
of that estimate, and 1 - sum(values) is its chance of drawing a token outside them.

Ties between a cached candidate and an outside token of the same probability are taken as
cached first in top-p's order (torch.sort leaves the order of equal values unspecified too).
A candidate whose renormalized probability underflows to 0.0 is not listed (a sampler cannot
draw it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokentree.config import SamplingConfig

_ALL = math.inf  # "n" of a filter that may keep tokens outside the cached ones (or all)


def survivors(
    ids: Sequence[int], probs: Sequence[float], settings: SamplingConfig, tail: float
) -> tuple[dict[int, float], bool]:
    """{id: probability under the sampler} for the cached candidates a sampler with `settings`
    could pick, most likely first, and whether that is exact (module doc: when it is)."""
    k_cached = len(probs)
    if k_cached == 0 or probs[0] <= 0:
        return {}, tail <= 0
    tail = max(0.0, float(tail))
    p_top, p_min = float(probs[0]), float(probs[-1])
    if p_min <= 0:
        tail = 0.0  # an outside token is at most as likely as a zero: never drawn
    a = 1.0 / settings.temperature
    # Tempered weights relative to the top candidate (top = 1): ratios, no overflow.
    log_top = math.log(p_top)
    w = [math.exp(a * (math.log(p) - log_top)) if p > 0 else 0.0 for p in probs]
    w_min = w[-1]  # tempered weight of the likeliest possible outside token
    cum = []
    total = 0.0
    for x in w:
        total += x
        cum.append(total)

    # Tempered outside mass U (top = 1 units): bounds, and the estimate (concentrated tail).
    if tail > 0:
        u_est = tail / p_min * w_min
        if a == 1.0:
            u_lo = u_hi = u_est
        elif a > 1.0:
            u_lo, u_hi = 0.0, u_est
        else:
            u_lo, u_hi = u_est, math.inf
    else:
        u_est = u_lo = u_hi = 0.0
    outside_live = u_hi > 0  # an outside token has a chance at all after tempering

    # top-k: n_k cached kept; outside tokens kept (with their tempered mass) or not.
    top_k = settings.top_k
    if top_k and top_k <= k_cached:
        kth = w[top_k - 1]
        n_k = sum(1 for x in w if x >= kth)  # ties at the boundary are kept (HF: scores < kth removed)
        if outside_live and probs[top_k - 1] <= p_min:  # an outside token may tie with the k-th
            nk_lo, nk_hi, uk_lo, uk_hi, uk_est = k_cached, _ALL, 0.0, u_hi, u_est
        else:
            nk_lo = nk_hi = n_k
            uk_lo = uk_hi = uk_est = 0.0
    else:
        nk_lo, nk_hi = k_cached, (_ALL if outside_live else k_cached)
        uk_lo, uk_hi, uk_est = u_lo, u_hi, u_est
        if top_k:  # k > K: some outside tokens; the estimate takes k - K of them, each w_min
            # (no bound: any number of outside tokens may tie with the k-th and all stay)
            uk_lo, uk_est = 0.0, min(u_est, (top_k - k_cached) * w_min)
    if not outside_live:
        uk_lo = uk_hi = uk_est = 0.0
    kept_w = cum[nk_lo - 1]  # cached weight that top-k keeps

    # top-p: a prefix of what top-k kept, cut where the mass before a token reaches top_p * Z.
    top_p = settings.top_p

    def n_top_p(z: float) -> float:
        threshold = top_p * z
        n = 1 + sum(1 for i in range(1, nk_lo) if cum[i - 1] < threshold)
        if n == nk_lo and nk_hi == _ALL and cum[nk_lo - 1] < threshold:
            return _ALL  # every cached one kept and outside tokens still in line
        return n

    if top_p < 1.0:
        np_lo, np_hi = n_top_p(kept_w + uk_lo), n_top_p(kept_w + uk_hi)
        np_est = n_top_p(kept_w + uk_est)
    else:
        np_lo = np_hi = np_est = _ALL

    # min-p: relative to the top token (which every filter keeps), so renormalizing is moot.
    min_p = settings.min_p
    if min_p > 0:
        nm = sum(1 for x in w if x >= min_p)
        nm_hi = _ALL if (nm == k_cached and outside_live and w_min >= min_p) else nm
        nm_lo = nm
    else:
        nm_lo = nm_hi = _ALL

    n_lo = min(nk_lo, np_lo, nm_lo)
    n_hi = min(nk_hi, np_hi, nm_hi)
    exact = n_lo == n_hi and n_hi <= k_cached

    if exact:
        n, outside = int(n_hi), 0.0
    else:
        n_est = min(nk_hi, np_est, nm_hi)
        n = int(min(max(n_est, n_lo), k_cached))
        outside = 0.0
        if n_est == _ALL and n == k_cached:
            # The estimate's outside tokens that survive: top-k's share, cut by top-p.
            outside = uk_est
            if top_p < 1.0 and w_min > 0:
                room = top_p * (kept_w + uk_est) - cum[-1]
                outside = min(outside, math.ceil(max(0.0, room) / w_min) * w_min)
    z = cum[n - 1] + outside
    kept = {}
    for i in range(n):
        value = w[i] / z
        if value > 0:
            kept[int(ids[i])] = value
    return kept, exact


def describe(settings: SamplingConfig) -> str:
    """The settings in a few words, e.g. "T 0.7 · top-k 40 · top-p 0.9 · min-p 0.05" (filters
    that are off are left out)."""
    parts = [f"T {settings.temperature:g}"]
    if settings.top_k > 0:
        parts.append(f"top-k {settings.top_k}")
    if settings.top_p < 1.0:
        parts.append(f"top-p {settings.top_p:g}")
    if settings.min_p > 0:
        parts.append(f"min-p {settings.min_p:g}")
    return " \u00b7 ".join(parts)

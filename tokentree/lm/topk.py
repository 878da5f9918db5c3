"""Distributions from a server's top log-probabilities (pure math, no torch).

A server returns only the k most likely next tokens. Their probabilities are exact; the
entropy over the full vocabulary is not, but it has a lower bound: every unseen token is at
most as likely as the least likely seen one, p_min, so together the unseen tokens (mass
`rest`) contribute at least rest * -log(p_min). That bound is what is stored, flagged
inexact, and shown as "≥ H".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tokentree.outputs import Distribution


def ranked(logprobs: Mapping[int, float]) -> list[tuple[int, float]]:
    """(id, probability), most likely first (ties: lower id first, as torch.topk tends to)."""
    return sorted(((i, math.exp(lp)) for i, lp in logprobs.items()), key=lambda x: (-x[1], x[0]))


def entropy_lower_bound(probs: list[float]) -> float:
    """Entropy (nats) of a distribution of which only `probs` (most likely first) are known."""
    seen = sum(-p * math.log(p) for p in probs if p > 0)
    rest = 1.0 - sum(probs)
    if rest > 1e-12 and probs and probs[-1] > 0:
        seen += rest * -math.log(probs[-1])
    return max(0.0, seen)


def distribution(logprobs: Mapping[int, float], vocab_size: int, top_k: int,
                 all_logprobs: list[float] | None = None) -> Distribution:
    """The stored Distribution of a server's top log-probabilities; exact only when they
    cover the whole vocabulary. `all_logprobs`: every log-prob the server sent, including
    those of keys no id could be found for (they count in the entropy, never in the table)."""
    items = ranked(logprobs)
    every = sorted((math.exp(lp) for lp in all_logprobs), reverse=True) if all_logprobs else [p for _, p in items]
    exact = len(every) >= vocab_size
    entropy = entropy_lower_bound(every)
    norm = entropy / math.log(vocab_size) if vocab_size > 1 else 0.0
    items = items[:top_k]
    return Distribution(
        top_ids=tuple(i for i, _ in items), top_probs=tuple(p for _, p in items),
        entropy=entropy, norm_entropy=min(1.0, norm), exact=exact,
    )


def prob_rank(dist: Distribution, token: int) -> tuple[float | None, int | None]:
    """A token's probability and rank (1 = most likely) if it is among the known top ids."""
    try:
        k = dist.top_ids.index(token)
    except ValueError:
        return None, None
    return dist.top_probs[k], k + 1

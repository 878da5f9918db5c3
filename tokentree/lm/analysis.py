"""Pure tensor math for the model's outputs. Every input is converted to float32 first,
so a bfloat16 model gives the same kind of numbers as a float32 one.

The next-token numbers of a row of logits (top-k, entropy, a token's probability and rank) all
come from ONE log_softmax of that row (`summarize`); nothing is normalized twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from tokentree.outputs import Distribution

INFLUENCE_HEADS = 32


def _entropy_of(log_probs: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """-sum(p log p) along the last dim, from both forms of the same distribution."""
    if log_probs.dim() == 1:
        ent = -torch.dot(probs, log_probs)
    else:  # one fused dot product per row: no [n, V] temporary
        ent = -torch.bmm(probs.unsqueeze(-2), log_probs.unsqueeze(-1)).view(probs.shape[:-1])
    bad = torch.isnan(ent)
    if bool(bad.any()):  # a -inf logit: 0 * -inf. entr(p) = -p log p is defined as 0 at p = 0
        ent[bad] = torch.special.entr(probs[bad]).sum(dim=-1)
    return ent


def summarize(
    logits: torch.Tensor, k: int, targets: torch.Tensor | None = None
) -> tuple[list[Distribution], list[float], list[int]]:
    """Per row of `logits` [n, V]: its Distribution (top-k, entropy, H / log V) and, when
    `targets` [m] (m <= n) is given, the probability and rank of targets[i] under row i.
    One log_softmax per call; probabilities, entropy, top-k and ranks all derive from it."""
    logits = logits.float()
    vocab = logits.shape[-1]
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    top = torch.topk(log_probs, min(k, vocab), dim=-1)
    top_probs = top.values.exp()
    ent = _entropy_of(log_probs, probs)
    norm = ent / math.log(vocab) if vocab > 1 else torch.zeros_like(ent)
    ids, ps, es, ns = top.indices.tolist(), top_probs.tolist(), ent.tolist(), norm.tolist()
    dists = [Distribution(tuple(i), tuple(p), e, n) for i, p, e, n in zip(ids, ps, es, ns)]
    if targets is None or not len(targets):
        return dists, [], []
    m = len(targets)
    # rank = 1 + tokens with a strictly greater probability, compared on the log scale (no
    # ties from exp underflow; equal logits tie exactly, as equal probabilities do).
    t_log = log_probs[:m].gather(-1, targets.view(-1, 1))
    ranks = (log_probs[:m] > t_log).sum(dim=-1) + 1
    return dists, t_log.view(-1).exp().tolist(), ranks.tolist()


def distributions(logits: torch.Tensor, k: int) -> list[Distribution]:
    """One Distribution (top-k, entropy, H / log V) per row of `logits` [n, V]."""
    return summarize(logits, k)[0]


def token_prob_rank(logits: torch.Tensor, token: int) -> tuple[float, int]:
    """Probability of `token` under softmax(logits) [V] and its rank (1 = most likely):
    one more than the number of tokens with a strictly greater probability."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    lp = log_probs[token]
    return lp.exp().item(), int((log_probs > lp).sum().item()) + 1


def influence(rows: torch.Tensor, k: int = INFLUENCE_HEADS) -> torch.Tensor:
    """Attention influence of each prefix position on the last one.

    `rows` is [heads, n]: for every (layer, head), the last position's attention over the n
    prefix positions. Keep the k heads whose rows vary most across positions (all if fewer),
    average them, and divide by the maximum.
    """
    rows = rows.float()
    variance = rows.var(dim=-1, correction=0)  # population variance; n = 1 gives 0, not nan
    chosen = rows[torch.topk(variance, min(k, rows.shape[0])).indices]
    mean = chosen.mean(dim=0)
    peak = mean.max()
    return mean / peak if peak > 0 else mean


def logit_lens(
    hidden: Sequence[torch.Tensor],
    norm: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    ids: Sequence[int],
) -> torch.Tensor:
    """Probabilities of `ids` read from each layer's hidden state [d] at the last position.

    `hidden` is one state per layer, the last one already after the model's final norm (as
    `output_hidden_states` returns it), so the norm is applied to all but the last.
    Returns [layers, len(ids)] in float32.
    """
    states = torch.stack([h.reshape(-1) for h in hidden])
    normed = torch.cat([norm(states[:-1]), states[-1:]]) if len(hidden) > 1 else states
    probs = torch.softmax(head(normed).float(), dim=-1)
    return probs[:, list(ids)]

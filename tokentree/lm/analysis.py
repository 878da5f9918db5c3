"""Pure tensor math for the model's outputs. Every input is converted to float32 first,
so a bfloat16 model gives the same kind of numbers as a float32 one."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from tokentree.outputs import Distribution

INFLUENCE_HEADS = 32


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) along the last dim (float32)."""
    # entr(p) = -p log p, defined as 0 at p = 0 (where a plain product would give nan).
    return torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(dim=-1)


def distributions(logits: torch.Tensor, k: int) -> list[Distribution]:
    """One Distribution (top-k, entropy, H / log V) per row of `logits` [n, V]."""
    logits = logits.float()
    vocab = logits.shape[-1]
    probs = torch.softmax(logits, dim=-1)
    top = torch.topk(probs, min(k, vocab), dim=-1)
    ent = entropy(logits)
    norm = ent / math.log(vocab) if vocab > 1 else torch.zeros_like(ent)
    ids, ps, es, ns = top.indices.tolist(), top.values.tolist(), ent.tolist(), norm.tolist()
    return [Distribution(tuple(i), tuple(p), e, n) for i, p, e, n in zip(ids, ps, es, ns)]


def token_prob_rank(logits: torch.Tensor, token: int) -> tuple[float, int]:
    """Probability of `token` under softmax(logits) [V] and its rank (1 = most likely):
    one more than the number of tokens with a strictly greater probability."""
    probs = torch.softmax(logits.float(), dim=-1)
    p = probs[token]
    return p.item(), int((probs > p).sum().item()) + 1


def tokens_prob_rank(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[list[float], list[int]]:
    """Row-wise token_prob_rank: logits [n, V], tokens [n] -> (probs, ranks)."""
    probs = torch.softmax(logits.float(), dim=-1)
    p = probs.gather(-1, tokens.view(-1, 1))
    ranks = (probs > p).sum(dim=-1) + 1
    return p.view(-1).tolist(), ranks.tolist()


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

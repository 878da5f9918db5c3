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
    # vecdot, not bmm: a batch of [1, V] x [V, 1] products runs ~10x slower on a CPU (it was
    # about half of a prefill's cost over a bare forward pass).
    ent = -torch.linalg.vecdot(probs, log_probs)
    bad = torch.isnan(ent)
    if bool(bad.any()):  # a -inf logit: 0 * -inf. entr(p) = -p log p is defined as 0 at p = 0
        p, lp = probs[bad], log_probs[bad]
        ent[bad] = -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(dim=-1)  # log p, not log(p): see log_softmax
    return ent.clamp_min(0.0) + 0.0  # never negative, never -0.0 (a one-hot row)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax along the last dim, accurate where the model is sure of its next token.

    torch's log p = z - logsumexp(z) loses the digits that matter when p is near 1: for
    p = 0.9995, log p = -5e-4 is the difference of two numbers near the logit (~20), good to
    ~2e-6 in float32, so the entropy (a sum dominated by such terms) was off by 1e-4 relative
    on SmolLM2, where random-weight models, never confident, never showed it. Here logsumexp
    is max + log1p(sum of exp(z - max) over every entry but the max): each term is small or
    exact, so log p keeps float32's relative precision at every p. The same cost."""
    top = logits.max(dim=-1, keepdim=True)
    shifted = logits - top.values
    rest = shifted.exp().scatter_(-1, top.indices, 0.0).sum(dim=-1, keepdim=True)
    return shifted - torch.log1p(rest)


def summarize(
    logits: torch.Tensor, k: int, targets: torch.Tensor | None = None
) -> tuple[list[Distribution], list[float], list[int]]:
    """Per row of `logits` [n, V]: its Distribution (top-k, entropy, H / log V) and, when
    `targets` [m] (m <= n) is given, the probability and rank of targets[i] under row i.
    One log_softmax per call; probabilities, entropy, top-k and ranks all derive from it.
    V is the real vocabulary: the caller cuts padding rows off first (a view is fine), so
    they take no mass, no rank and no part in log V. Keep n small (~16 rows): the [n, V]
    temporaries then stay in the CPU cache."""
    logits = logits.float()
    vocab = logits.shape[-1]
    log_probs = log_softmax(logits)
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
    return dists, t_log.view(-1).exp().tolist(), _ranks(log_probs[:m], top.values[:m], t_log).tolist()


def _ranks(log_probs: torch.Tensor, top_values: torch.Tensor, t_log: torch.Tensor) -> torch.Tensor:
    """1 + the number of entries of each row of `log_probs` [m, V] strictly greater than
    `t_log` [m, 1], given the row's top values [m, k] (descending). A target at least as likely
    as the k-th value has every greater entry in the top k, so its rank is counted there; only
    the other rows (for a real model, few of a prompt's tokens) pay for a compare over V."""
    ranks = (top_values > t_log).sum(dim=-1) + 1
    outside = (t_log < top_values[:, -1:]).view(-1)
    if bool(outside.all()):
        ranks = (log_probs > t_log).sum(dim=-1, dtype=torch.int32) + 1  # int32: sums faster than int64
    elif bool(outside.any()):
        rows = outside.nonzero().view(-1)
        ranks[rows] = (log_probs[rows] > t_log[rows]).sum(dim=-1) + 1
    return ranks


def distributions(logits: torch.Tensor, k: int) -> list[Distribution]:
    """One Distribution (top-k, entropy, H / log V) per row of `logits` [n, V]."""
    return summarize(logits, k)[0]


def token_prob_rank(logits: torch.Tensor, token: int) -> tuple[float, int]:
    """Probability of `token` under softmax(logits) [V] and its rank (1 = most likely):
    one more than the number of tokens with a strictly greater probability."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    lp = log_probs[token]
    return lp.exp().item(), int((log_probs > lp).sum().item()) + 1


def influence(rows: torch.Tensor, k: int = INFLUENCE_HEADS) -> tuple[torch.Tensor, float | None]:
    """Attention influence of each prefix position on the last one, and the sink's share.

    `rows` is [heads, n]: for every (layer, head), the last position's attention over the n
    prefix positions. Position 0 (the usual attention sink) and position n - 1 (the query
    itself) are left out: over the remaining positions 1 .. n-2, keep the k heads whose raw
    weights vary most (population variance; all heads if fewer), average their rows there and
    divide by the maximum (a zero maximum leaves zeros). Returns the n values as float32 with
    NaN at the two left-out positions (every position when n <= 2), and the sink share: the
    mean over all rows of the weight on position 0 (None when n < 2, where position 0 is the
    query itself).
    """
    rows = rows.float()
    n = rows.shape[-1]
    values = torch.full((n,), math.nan, dtype=torch.float32, device=rows.device)
    sink = rows[:, 0].mean().item() if n >= 2 and rows.shape[0] else None
    middle = rows[:, 1 : n - 1]
    if middle.shape[-1] == 0 or rows.shape[0] == 0:
        return values, sink
    variance = middle.var(dim=-1, correction=0)  # one position gives 0 for every head, not nan
    chosen = middle[torch.topk(variance, min(k, rows.shape[0])).indices]
    mean = chosen.mean(dim=0)
    peak = mean.max()
    values[1 : n - 1] = mean / peak if peak > 0 else mean
    return values, sink


def optional_values(values: torch.Tensor) -> tuple[float | None, ...]:
    """A float tensor as Python floats, NaN (no value) as None."""
    return tuple(None if math.isnan(v) else v for v in values.tolist())


def logit_lens(
    hidden: Sequence[torch.Tensor],
    norm: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    ids: Sequence[int],
    vocab: int | None = None,
) -> torch.Tensor:
    """Probabilities of `ids` read from each layer's hidden state [d] at the last position,
    softmaxed over the first `vocab` logits (the real vocabulary: padding rows of the head
    take no mass).

    `hidden` is one state per layer, the last one already after the model's final norm (as
    `output_hidden_states` returns it), so the norm is applied to all but the last.
    Returns [layers, len(ids)] in float32.
    """
    # One device for all: with a device map, each layer's state is where that layer ran.
    states = torch.stack([h.reshape(-1).to(hidden[-1].device) for h in hidden])
    normed = torch.cat([norm(states[:-1]).to(states.device), states[-1:]]) if len(hidden) > 1 else states
    probs = torch.softmax(head(normed)[..., :vocab].float(), dim=-1)
    return probs[:, list(ids)]


def lens_error(last_hidden: torch.Tensor, logits: torch.Tensor, head, vocab: int) -> float:
    """Largest absolute difference between the logit lens of the last layer and the model's
    own next-token probabilities, over the first `vocab` ids, at every position.

    `last_hidden` [..., d] is the last hidden state (after the final norm) and `logits`
    [..., V] the model's output for the same positions. The head runs on the whole tensor, the
    shape the model ran it on, so a model whose output is just head(hidden) matches exactly,
    even in bfloat16; soft-capping or any other change to the logits shows as a difference."""
    lens = torch.softmax(head(last_hidden)[..., :vocab].double(), dim=-1)
    own = torch.softmax(logits[..., :vocab].double(), dim=-1)
    return (lens.to(own.device) - own).abs().max().item()  # a device map may run the head elsewhere


def sampling_probs(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """The distribution a sampler draws from, per row of `logits` [n, V] (the real vocabulary),
    in float32: temperature, then top-k, top-p and min-p, as Hugging Face's logits warpers
    (Temperature-, TopK-, TopP-, MinPLogitsWarper, min_tokens_to_keep=1) apply them, then a
    softmax over what is left. A filter that is off (top_k 0, top_p 1, min_p 0) is skipped.
    `tokentree.sampling.survivors` is the same computation from a node's cached top-K."""
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    vocab = scores.shape[-1]
    neg_inf = -math.inf
    if 0 < top_k < vocab:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, neg_inf)  # ties with the k-th are kept
    if top_p < 1.0:
        scores = _top_p(scores, top_p)
    if min_p > 0.0:
        probs = scores.softmax(dim=-1)
        scores = scores.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), neg_inf)
    return scores.softmax(dim=-1)


TOP_P_CANDIDATES = 1024  # top-p looks at this many most likely tokens first (a full sort is ~20x slower)


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """`scores` [n, V] with every token whose likelier tokens already hold `top_p` of the mass
    set to -inf (the first always stays). Where the nucleus ends within the TOP_P_CANDIDATES
    most likely tokens, only those are sorted (topk); otherwise, HF's way: a full sort."""
    neg_inf = -math.inf
    vocab = scores.shape[-1]
    probs = scores.softmax(dim=-1)
    top_probs, top_ids = torch.topk(probs, min(TOP_P_CANDIDATES, vocab), dim=-1)  # sorted, descending
    cumulative = top_probs.cumsum(dim=-1)
    before = cumulative - top_probs  # the mass of the likelier tokens
    # The last candidate's mass before it reaches top_p: it and everything less likely go
    # (a token outside tied with it too), so the candidates decide alone.
    if top_ids.shape[-1] == vocab or bool((before[..., -1] >= top_p).all()):
        keep = before < top_p
        keep[..., 0] = True
        return scores.masked_fill(~_scatter_mask(scores, top_ids, keep), neg_inf)
    ascending, order = torch.sort(scores, descending=False, dim=-1)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= 1 - top_p  # the mass of the likelier tokens already reaches top_p
    remove[..., -1:] = False  # the top token always stays
    return scores.masked_fill(remove.scatter(-1, order, remove), neg_inf)


def _scatter_mask(like: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A bool tensor shaped as `like`, False but for `values` at `ids` along the last dim."""
    return torch.zeros(like.shape, dtype=torch.bool, device=like.device).scatter(-1, ids, values)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of `probs` [n, V], drawn by inverse CDF: a uniform number from
    `generator` against the row's cumulative sum (float64), [n, 1]. A zero-probability token
    is never drawn. (torch.multinomial is ~5x slower over a 151k vocabulary on a CPU.)"""
    cumulative = probs.double().cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float64, device=probs.device)
    ids = torch.searchsorted(cumulative, u * cumulative[..., -1:], right=True)
    return ids.clamp_(max=probs.shape[-1] - 1)


def target_probs_ranks(logits: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[int]]:
    """Per row of `logits` [n, V], the probability of targets[i] [n] and its rank (1 = most
    likely; one more than the tokens strictly more likely): `token_prob_rank` row by row."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    t_log = log_probs.gather(-1, targets.view(-1, 1))
    ranks = (log_probs > t_log).sum(dim=-1) + 1
    return t_log.view(-1).exp().tolist(), ranks.tolist()


def allowed_rows(masks: Sequence[bytes], vocab: int, device) -> torch.Tensor:
    """[rows, vocab] bool from one bitmask per row (bit i of the little-endian bytes: id i
    may come next), as a regex constraint gives them; ids past a short mask are not allowed."""
    rows = torch.zeros((len(masks), vocab), dtype=torch.bool)
    for j, mask in enumerate(masks):
        if not mask:
            continue
        raw = torch.frombuffer(bytearray(mask), dtype=torch.uint8)
        bits = (raw[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1  # little-endian bit order
        flat = bits.reshape(-1)[:vocab].bool()
        rows[j, : flat.numel()] = flat
    return rows.to(device)


def restrict(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The logits with every id `allowed` rules out at -inf (a sampler then never draws it)."""
    return logits.masked_fill(~allowed, -math.inf)

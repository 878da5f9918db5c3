"""Plain data that crosses layers: the model engine produces it, the store caches it,
the explorer and the views read it. No torch here: every number is a Python float/int.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Distribution:
    """The next-token distribution after a prefix, cut to the top K."""

    top_ids: tuple[int, ...]  # most likely first
    top_probs: tuple[float, ...]
    entropy: float  # nats, over the full vocabulary
    norm_entropy: float  # entropy / log(vocab size), in [0, 1]
    # False when the entropy was computed from the top-k alone (a server's top log-probs):
    # then it is a lower bound, shown as "≥ 2.31" and exported with "entropy_exact": false.
    exact: bool = True


@dataclass(frozen=True)
class NodeOutput:
    """What the model says at one node (a token prefix).

    `token_prob`/`token_rank` describe the node's own last token under the distribution of
    the position before it (rank 1 = most likely). They are None for the first token of a
    prompt, which has no predicting distribution.
    """

    token_prob: float | None
    token_rank: int | None
    next: Distribution


@dataclass(frozen=True)
class Analysis:
    """Optional, view-driven values for one node; computed only when a view asks."""

    # Attention influence of every prefix position on the last one, max-normalized to [0, 1];
    # None at position 0 (the usual attention sink) and at the last position (the query).
    influence: tuple[float | None, ...] | None = None
    # Logit lens: candidate ids, then for each layer the probability of each candidate.
    lens_ids: tuple[int, ...] | None = None
    lens_probs: tuple[tuple[float, ...], ...] | None = None  # [layer][candidate]
    # With `influence`: the mean over every (layer, head) row of the last position's attention
    # weight on position 0. None for a one-token prefix (position 0 is the query itself).
    sink_share: float | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a model backend can compute; the core asks this, never the backend's type."""

    influence: bool = True  # attention influence (needs attention weights)
    layer_lens: bool = True  # per-layer probabilities (logit lens)
    # Why the layer lens is off, for the layer views to say (e.g. "not available for this model").
    layer_lens_note: str | None = None
    # Why attention influence is off (e.g. "needs a local model"), for the influence view.
    influence_note: str | None = None
    # One request scores every prompt position (a local model, vLLM's prompt_logprobs). Without
    # it only the last position of a prefill has an output; the others show n/a until visited.
    prompt_logprobs: bool = True
    exact_entropy: bool = True  # entropy over the full vocabulary (False: a top-k lower bound)
    # How many model requests may run at once (a server answers several; a local model one):
    # the size of the speculative prefetch pool.
    parallel: int = 1
    remote: bool = False  # a server: a node's numbers come from a request, not a forward pass here


@dataclass(frozen=True)
class ModelInfo:
    """Who a backend is, for the session and the status bar: no model objects here."""

    name: str  # as the user gave it (hub name, path, served model id)
    device: str  # "cpu", "cuda", "auto" (device map), a server's host
    dtype: str  # "float32", "bfloat16", a GGUF quantization, "server"
    fingerprint: str  # which cached numbers may be reused for this backend (lm/fingerprint.py)
    vocab_key: str  # short stable hash of the vocabulary: ids mean the same under it
    context_length: int | None
    num_layers: int = 0

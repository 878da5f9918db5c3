"""KV-cached next-token analysis: one forward call per prompt, per step, per analysis.

The engine keeps an LRU of *cache lines*: a token prefix, its KV cache (a DynamicCache) and,
when known, the float32 logits after that prefix. A request picks the line sharing the
longest prefix with it and feeds the model only the tokens the line lacks:

- extend: the line is a prefix of what is needed -> grow it in place (the old, shorter prefix
  is no longer held; its outputs live in the store anyway);
- crop: the line diverges (a pop, another branch) -> `cache.crop`. While the LRU has room the
  line is forked first (a shallow copy sharing the tensors, which DynamicLayer never writes in
  place) so the other branch keeps its cache; when full, the line is cropped in place.
- A step needs the parent's full distribution for the token's probability and rank. When the
  line does not hold the parent's logits (after a crop), the parent's last token is re-run in
  the same call (crop one more), so it is still one forward call.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from tokentree.lm import analysis
from tokentree.lm.loader import LoadedModel
from tokentree.lm.tokens import TokenBytes, special_ids
from tokentree.outputs import Analysis, NodeOutput

_ROWS_PER_CHUNK = 256  # bounds the float32 softmax memory of a long prefill (rows x vocab)


@dataclass
class _Line:
    tokens: tuple[int, ...]
    cache: object  # transformers Cache holding exactly len(tokens) positions
    logits: torch.Tensor | None  # float32 [V]: next-token logits after `tokens`, if known


def _own(row: torch.Tensor) -> torch.Tensor:
    """A float32 copy of one logits row: a view would keep the whole [n, V] tensor alive."""
    return row.to(torch.float32, copy=True)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


def _fork(cache):
    """An independent copy of `cache`. Plain DynamicLayers only ever replace their tensors
    (torch.cat, slicing), so sharing the tensors is safe and costs no memory; any other layer
    kind might update in place, so it is deep-copied."""
    from transformers.cache_utils import DynamicLayer

    if all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        clone = copy.copy(cache)
        clone.layers = [copy.copy(layer) for layer in cache.layers]
        return clone
    return copy.deepcopy(cache)


def final_norm(model) -> torch.nn.Module:
    """The norm applied after the last layer (Llama/Qwen `model.norm`, GPT-2 `transformer.ln_f`)."""
    base = model.base_model
    for attr in ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm"):
        module = getattr(base, attr, None)
        if isinstance(module, torch.nn.Module):
            return module
    # Unknown layout: the base model's last direct child that is a norm, else no norm.
    for child in reversed(list(base.children())):
        if "norm" in type(child).__name__.lower():
            return child
    return torch.nn.Identity()


class Engine:
    """Turns token prefixes into NodeOutputs and Analyses. Used from one worker thread."""

    def __init__(self, loaded: LoadedModel, *, top_k: int = 64, cache_size: int = 100):
        self.loaded = loaded
        self.model = loaded.model
        self.top_k = top_k
        self.cache_size = max(1, cache_size)
        self.forward_passes = 0
        self.special_ids: frozenset[int] = special_ids(loaded.tokenizer)
        self._token_bytes = TokenBytes(loaded.tokenizer)
        self._device = torch.device(loaded.device)
        self._lines: list[_Line] = []  # least recently used first
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        """Token ids as the tokenizer encodes `text` (with its BOS token, if it adds one)."""
        return list(self.loaded.tokenizer.encode(text))

    def token_bytes(self, ids: Iterable[int]) -> dict[int, bytes]:
        """Raw bytes of each token; special tokens give their name as UTF-8."""
        return self._token_bytes(ids)

    # ------------------------------------------------------------------ model calls
    def prefill(self, tokens: Sequence[int]) -> list[NodeOutput]:
        """Outputs for every prefix tokens[:i+1], from ONE forward pass over the prompt."""
        tokens = tuple(tokens)
        if not tokens:
            raise ValueError("prefill needs at least one token")
        with torch.inference_mode():
            line = _Line((), self._new_cache(), None)
            logits = self._run(line, tokens, 0).logits[0]  # [n, V]: every position is needed
            line.logits = _own(logits[-1])
            targets = torch.tensor(tokens[1:], dtype=torch.long, device=logits.device)
            results: list[NodeOutput] = []
            for lo in range(0, len(tokens), _ROWS_PER_CHUNK):
                hi = min(lo + _ROWS_PER_CHUNK, len(tokens))
                dists = analysis.distributions(logits[lo:hi], self.top_k)
                # Row i predicts tokens[i + 1]; the node tokens[:i+1] is scored by row i - 1.
                p_lo = max(lo - 1, 0)
                probs, ranks = analysis.tokens_prob_rank(logits[p_lo : hi - 1], targets[p_lo : hi - 1])
                scored = dict(zip(range(p_lo + 1, hi), zip(probs, ranks)))
                for i, dist in zip(range(lo, hi), dists):
                    prob, rank = scored.get(i, (None, None))
                    results.append(NodeOutput(prob, rank, dist))
        return results

    def step(self, prefix: Sequence[int], token: int) -> NodeOutput:
        """Output for prefix + [token] from ONE forward call reusing the closest cached prefix."""
        prefix = tuple(prefix)
        target = prefix + (token,)
        with torch.inference_mode():
            held = self._held(prefix)
            if held is not None:  # the parent's logits are at hand: feed just the token
                line, start, parent_logits = held, len(prefix), held.logits
            else:  # re-run the parent's last token too, to get its full distribution
                line, start = self._checkout(target, feed_at_least=2 if prefix else 1)
            logits = self._run(line, target, start, keep=2).logits[0, -2:].float()
            if held is None and prefix:
                parent_logits = logits[-2]
            line.logits = _own(logits[-1])
            prob, rank = analysis.token_prob_rank(parent_logits, token) if prefix else (None, None)
            dist = analysis.distributions(logits[-1:], self.top_k)[0]
        return NodeOutput(prob, rank, dist)

    def analyze(
        self, tokens: Sequence[int], *, influence: bool = False, lens_ids: Sequence[int] | None = None
    ) -> Analysis:
        """Attention influence and/or logit-lens probabilities for `tokens`, from at most ONE
        forward call (the last token re-run on the cached prefix)."""
        tokens = tuple(tokens)
        lens_ids = tuple(lens_ids) if lens_ids else None
        if not tokens or not (influence or lens_ids):
            return Analysis()
        model = self.model
        with torch.inference_mode():
            line, start = self._checkout(tokens, feed_at_least=1)
            default_attn = model.config._attn_implementation
            if influence and default_attn != "eager":
                model.set_attn_implementation("eager")  # sdpa returns no attention weights
            try:
                out = self._run(
                    line, tokens, start, keep=1,
                    output_attentions=influence, output_hidden_states=lens_ids is not None,
                )
            finally:
                if model.config._attn_implementation != default_attn:
                    model.set_attn_implementation(default_attn)
            line.logits = _own(out.logits[0, -1])
            result = Analysis()
            if influence:
                # Every (layer, head) row of the last position over the whole prefix.
                rows = torch.cat([a[0, :, -1, :] for a in out.attentions if a is not None])
                result = Analysis(influence=tuple(analysis.influence(rows).tolist()))
            if lens_ids is not None:
                hidden = [h[0, -1] for h in out.hidden_states[1:]]  # one per layer, the last normed
                probs = analysis.logit_lens(hidden, final_norm(model), model.get_output_embeddings(), lens_ids)
                result = Analysis(
                    influence=result.influence,
                    lens_ids=lens_ids,
                    lens_probs=tuple(tuple(row) for row in probs.tolist()),
                )
        return result

    # ------------------------------------------------------------------ cache lines
    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _held(self, tokens: tuple[int, ...]) -> _Line | None:
        """The line holding exactly `tokens` with their next-token logits, if any."""
        for line in reversed(self._lines):
            if line.tokens == tokens and line.logits is not None and tokens:
                return line
        return None

    def _checkout(self, target: tuple[int, ...], feed_at_least: int) -> tuple[_Line, int]:
        """A line whose cache holds target[:start], with start <= len(target) - feed_at_least,
        reusing the line that shares the longest prefix with `target`."""
        limit = len(target) - feed_at_least
        best, best_key = None, (0, False)
        for line in reversed(self._lines):  # most recent first wins ties
            start = min(_common_prefix(line.tokens, target), limit)
            key = (start, len(line.tokens) == start)  # prefer a line that needs no crop
            if key > best_key:
                best, best_key = line, key
        start = best_key[0]
        if best is None or start <= 0:
            return _Line((), self._new_cache(), None), 0
        if start == len(best.tokens):
            return best, start  # extend in place
        line = best
        if len(self._lines) < self.cache_size:
            line = _Line(best.tokens, _fork(best.cache), best.logits)
        line.cache.crop(start - len(line.tokens))
        line.tokens, line.logits = target[:start], None
        return line, start

    def _run(self, line: _Line, target: tuple[int, ...], start: int, keep: int = 0, **kwargs):
        """Feed target[start:] to the model on top of `line` (which holds target[:start]); with
        `keep`, the LM head may run on the last `keep` positions only. Afterwards the line holds
        `target` and is the most recently used."""
        ids = torch.tensor([target[start:]], device=self._device)
        if keep and self._keeps_logits:
            kwargs["logits_to_keep"] = keep  # skip the LM head for rows nobody reads
        self.forward_passes += 1
        try:
            out = self.model(input_ids=ids, cache=line.cache, use_cache=True, **kwargs)
        except BaseException:
            self._forget(line)  # its cache may be half-updated
            raise
        line.tokens, line.logits = target, None
        self._remember(line)
        return out

    def _remember(self, line: _Line) -> None:
        self._lines = [x for x in self._lines if x is not line and x.tokens != line.tokens]
        self._lines.append(line)
        del self._lines[: -self.cache_size]

    def _forget(self, line: _Line) -> None:
        self._lines = [x for x in self._lines if x is not line]

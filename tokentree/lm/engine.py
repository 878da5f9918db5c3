"""KV-cached next-token analysis: one pass per prompt, one forward call per step and analysis.

The engine keeps an LRU of *cache lines*: a token prefix and its KV cache (a DynamicCache).
A request picks the line sharing the longest prefix with it and feeds the model only the
tokens the line lacks:

- extend: the line is a prefix of what is needed -> grow it in place (the old, shorter prefix
  is no longer held; its outputs live in the store anyway);
- crop: the line diverges (a pop, another branch) -> `cache.crop`. While the LRU has room the
  line is forked first (a shallow copy sharing the tensors, which DynamicLayer never writes in
  place) so the other branch keeps its cache; when full, the line is cropped in place.
- A step needs the parent's full distribution for the token's probability and rank. A second
  small LRU (`cache_size` entries) keeps the float32 next-token logits [V] of recent prefixes
  (every step's parent and child, the last rows of a prefill, each analysis), so a step after
  a pop (a sibling) crops the line by one and feeds ONE token. Only when the parent's logits
  are not kept is the parent's last token re-run in the same call (crop one more): still one
  forward call, but two rows, which costs far more than one on a CPU.

A prompt is ONE pass in chunks of `prefill_chunk` tokens through the KV cache: each chunk's
[chunk, V] logits are reduced to what is stored (top-k, entropy, the next token's probability
and rank) before the next chunk runs, so memory stays bounded for any prompt length.

Logits are cut to the tokenizer's real vocabulary (`vocab_size`) before any math: the padding
rows of an LM head (Qwen2.5: 151,936 rows, 151,665 ids) never show, take mass or count.

`forward_passes` counts passes over input as the rest of tokentree means them: a prefill is 1
(each prompt token is fed exactly once), a step or analysis is 1, a cached node 0.
`model_calls` counts every call of the model: a prefill of n tokens makes ceil(n / chunk).
The load-time lens probe is in neither.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

import tokentree.lm.analysis as analysis
from tokentree.lm.loader import LoadedModel
from tokentree.lm.kept import KeptLogits, closest_line, sample_request
from tokentree.errors import InputError
from tokentree.lm.chat import ChatTemplate
from tokentree.lm.tokens import TokenBytes, added_tokens
from tokentree.outputs import Analysis, Capabilities, ModelInfo, NodeOutput

_SUMMARY_ROWS = 16  # rows per analysis.summarize call: [16, V] temporaries stay in the CPU cache
PREFILL_CHUNK = 512  # tokens per model call: [512, 151,936] float32 logits are 297 MiB
_LENS_TOLERANCE = 1e-4  # max |lens - model| probability for the last layer at load
LENS_UNAVAILABLE = ("not available for this model: its last layer's lens does not match its "
                    "output (e.g. logit soft-capping)")
_PROBE_TEXT = "The quick brown fox jumps over the lazy dog."
_PREFILL_ROWS_KEPT = 8  # a prefill keeps the logits of its last prefixes (a pop into the prompt)


@dataclass
class _Line:
    tokens: tuple[int, ...]
    cache: object  # transformers Cache holding exactly len(tokens) positions


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

    def __init__(
        self, loaded: LoadedModel, *, top_k: int = 64, cache_size: int = 100, prefill_chunk: int = PREFILL_CHUNK
    ):
        self.loaded = loaded
        self.model = loaded.model
        self.top_k = top_k
        self.cache_size = max(1, cache_size)
        self.prefill_chunk = max(1, prefill_chunk)
        self.forward_passes = 0  # passes over input: prefill 1, step 1, analysis 1 (module doc)
        self.model_calls = 0  # every model call: a prefill makes ceil(n / prefill_chunk)
        self._token_bytes = TokenBytes(loaded.tokenizer)
        # With a device map, inputs go where the input embeddings run (loaded.input_device).
        self._device = torch.device(loaded.input_device or loaded.device)
        self._lines: list[_Line] = []  # least recently used first
        # float32 [V] next-token logits after a prefix, least recently used first
        self._logits = KeptLogits(self.cache_size)  # next-token logits of recent prefixes
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._stop_ids: dict[str, frozenset[int]] = {}  # fill_stop -> ids (stop_ids)
        self.vocab_size, self.capabilities = self._probe()
        self.info = ModelInfo(
            name=loaded.name, device=loaded.device, dtype=loaded.dtype, fingerprint=loaded.fingerprint,
            vocab_key=loaded.vocab_key, context_length=loaded.context_length, num_layers=loaded.num_layers,
        )

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees (the Backend interface)."""

    def _probe(self) -> tuple[int, Capabilities]:
        """One short forward at load: the real vocabulary size (ids the tokenizer knows, at
        most the logits rows) and whether the last layer's logit lens equals the model's own
        distribution. If it does not (soft-capped logits, an unusual head), the lens would show
        numbers the model never produces, so the layer views are switched off (fail closed)."""
        tokens = self.encode(_PROBE_TEXT)[:8] or [0]
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([tokens], device=self._device), use_cache=False, output_hidden_states=True
            )
            vocab = min(len(self.loaded.tokenizer), out.logits.shape[-1])
            error = analysis.lens_error(out.hidden_states[-1], out.logits, self.model.get_output_embeddings(), vocab)
        if error < _LENS_TOLERANCE:
            return vocab, Capabilities()
        return vocab, Capabilities(layer_lens=False, layer_lens_note=LENS_UNAVAILABLE)

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        """Token ids as the tokenizer encodes `text` (with its BOS token, if it adds one)."""
        return list(self.loaded.tokenizer.encode(text))

    def token_bytes(self, ids: Iterable[int]) -> dict[int, bytes]:
        """Raw bytes of each token; special tokens give their name as UTF-8."""
        return self._token_bytes(ids)

    def special_ids(self) -> frozenset[int]:
        """The tokenizer's special and control tokens (drawn as what they are)."""
        tokenizer = self.loaded.tokenizer
        marked = {i for i, (_, special) in added_tokens(tokenizer).items() if special}
        return frozenset(i for i in (*tokenizer.all_special_ids, *marked) if 0 <= i < self.vocab_size)

    # ------------------------------------------------------------------ chat
    def chat_template(self) -> ChatTemplate | None:
        tokenizer = self.loaded.tokenizer
        template = tokenizer.chat_template
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default")
        if not template:
            return None
        return ChatTemplate(template, tokenizer.bos_token or "", tokenizer.eos_token or "")

    def encode_special(self, text: str) -> list[int]:
        return list(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_ids(self, messages, *, add_generation_prompt: bool = True) -> list[int]:
        """The ids transformers' own apply_chat_template gives (never text re-tokenized)."""
        try:
            out = self.loaded.tokenizer.apply_chat_template(list(messages), tokenize=True,
                                                            add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # noqa: BLE001 -- jinja2's errors, raise_exception, a missing template
            raise InputError(f"the model's chat template failed: {' '.join(str(exc).split())}") from None
        return list(out["input_ids"] if not isinstance(out, list) else out)

    # ------------------------------------------------------------------ model calls
    def prefill(self, tokens: Sequence[int]) -> list[NodeOutput]:
        """Outputs for every prefix tokens[:i+1], from ONE pass over the prompt: chunks of
        `prefill_chunk` tokens through the KV cache, each token fed exactly once, each chunk's
        logits reduced to the stored numbers before the next chunk runs."""
        tokens = tuple(tokens)
        if not tokens:
            raise ValueError("prefill needs at least one token")
        self._check_ids(tokens)
        n = len(tokens)
        keep_from = n - min(self.cache_size, _PREFILL_ROWS_KEPT)  # a pop into the prompt is one token
        targets = torch.tensor(tokens[1:], dtype=torch.long, device=self._device)
        dists: list = []
        scores: list[tuple[float | None, int | None]] = [(None, None)]
        self.forward_passes += 1
        with torch.inference_mode():
            line = _Line((), self._new_cache())
            for start in range(0, n, self.prefill_chunk):
                end = min(start + self.prefill_chunk, n)
                logits = self._run(line, tokens[:end], start).logits[0, :, : self.vocab_size]  # [chunk, V]
                for i in range(max(keep_from, start), end):
                    self._logits.keep(tokens[: i + 1], logits[i - start])  # the tip is the most recent
                for lo in range(start, end, _SUMMARY_ROWS):
                    hi = min(lo + _SUMMARY_ROWS, end)
                    # Row i predicts tokens[i + 1] (the next chunk's first token for a chunk's last
                    # row): it scores the node tokens[:i+2]; the prompt's last row scores nothing.
                    rows = analysis.summarize(logits[lo - start : hi - start], self.top_k, targets[lo:hi])
                    dists.extend(rows[0])
                    scores.extend(zip(rows[1], rows[2]))
                del logits  # no view of it is left: this chunk's [chunk, V] is freed before the next
        return [NodeOutput(prob, rank, dist) for (prob, rank), dist in zip(scores, dists)]

    def step(self, prefix: Sequence[int], token: int) -> NodeOutput:
        """Output for prefix + [token] from ONE forward call reusing the closest cached prefix."""
        return self._step(prefix, token, influence=False, lens_count=0)[0]

    def step_with_analysis(
        self, prefix: Sequence[int], token: int, *, influence: bool, lens_count: int
    ) -> tuple[NodeOutput, Analysis]:
        """`step(prefix, token)` plus the analysis of prefix + [token] from the SAME forward
        call: attention influence (if asked; eager attention for that call only) and the
        logit lens over the top `lens_count` ids of the new distribution (lens_ids = those)."""
        return self._step(prefix, token, influence=influence, lens_count=max(0, int(lens_count)))

    def _step(
        self, prefix: Sequence[int], token: int, *, influence: bool, lens_count: int
    ) -> tuple[NodeOutput, Analysis]:
        prefix = tuple(prefix)
        target = prefix + (token,)
        self._check_ids((token,))
        if not self.capabilities.layer_lens:
            lens_count = 0  # fail closed: no lens numbers this model does not produce
        with torch.inference_mode():
            parent_logits = self._logits.get(prefix) if prefix else None
            # Without the parent's logits, its last token is re-run in the same call.
            rerun = bool(prefix) and parent_logits is None
            line, start = self._checkout(target, feed_at_least=2 if rerun else 1)
            self.forward_passes += 1
            with self._attention(influence):
                out = self._run(
                    line, target, start, keep=2 if rerun else 1,
                    output_attentions=influence, output_hidden_states=lens_count > 0,
                )
            vocab = self.vocab_size
            if rerun:
                parent_logits = self._logits.keep(prefix, out.logits[0, -2, :vocab])
            logits = self._logits.keep(target, out.logits[0, -1, :vocab])
            prob, rank = analysis.token_prob_rank(parent_logits, token) if prefix else (None, None)
            dist = analysis.distributions(logits[None], self.top_k)[0]
            lens_ids = None
            if lens_count:
                if lens_count <= len(dist.top_ids):
                    lens_ids = dist.top_ids[:lens_count]
                else:
                    count = min(lens_count, logits.shape[-1])
                    lens_ids = tuple(torch.topk(logits, count).indices.tolist())
            result = self._analysis(out, influence, lens_ids)
        return NodeOutput(prob, rank, dist), result

    def analyze(
        self, tokens: Sequence[int], *, influence: bool = False, lens_ids: Sequence[int] | None = None
    ) -> Analysis:
        """Attention influence and/or logit-lens probabilities for `tokens`, from at most ONE
        forward call (the last token re-run on the cached prefix)."""
        tokens = tuple(tokens)
        lens_ids = tuple(lens_ids) if lens_ids and self.capabilities.layer_lens else None
        if not tokens or not (influence or lens_ids):
            return Analysis()
        with torch.inference_mode():
            line, start = self._checkout(tokens, feed_at_least=1)
            self.forward_passes += 1
            with self._attention(influence):
                out = self._run(
                    line, tokens, start, keep=1,
                    output_attentions=influence, output_hidden_states=lens_ids is not None,
                )
            self._logits.keep(tokens, out.logits[0, -1, : self.vocab_size])
            return self._analysis(out, influence, lens_ids)

    def sample(
        self,
        prefix: Sequence[int],
        *,
        count: int,
        steps: int,
        settings,
        seed: int,
        stop_ids: Iterable[int] = frozenset(),
        allowed: Callable[[Sequence[int]], bytes] | None = None,
    ) -> list[list[tuple[int, NodeOutput]]]:
        """`count` continuations of up to `steps` tokens drawn after `prefix`, batched: ONE
        forward call per step feeds the newest token of every live continuation.

        The prefix's KV cache (a cached line, or one step's pass to make it) is copied and
        repeated `count` times along the batch; the LRU of single-sequence lines and kept
        logits is left as a step on `prefix` would leave it, and no sampled node enters it.
        Each token is drawn (`analysis.draw`) from `analysis.sampling_probs` with `settings` (a
        SamplingConfig: temperature, top_k, top_p, min_p; its `seed` is not read) by a torch
        generator seeded with `seed`: the same seed, prefix and settings draw the same tokens. A continuation ends after a token of `stop_ids` (that token
        included) or after `steps` tokens; a finished row leaves the batch. `allowed` (a regex
        constraint): the tokens drawn so far -> the bitmask of the ids that may come next;
        only those are drawn, and a row where none may ends there.

        For every drawn token: (token, the NodeOutput of prefix + the tokens drawn so far):
        its probability and rank under the model's own next-token distribution at its parent
        (not the tempered or filtered one) and the node's next-token Distribution, as
        `Engine.step` gives them (real vocabulary, top_k, float32).

        forward_passes and model_calls: one per step that ran, plus one if the prefix's logits
        and cache had to be computed first."""
        prefix, count, steps = sample_request(prefix, settings, count, steps)
        self._check_ids(prefix)
        results: list[list[tuple[int, NodeOutput]]] = [[] for _ in range(count)]
        if not count or not steps:
            return results
        stops = frozenset(stop_ids)
        vocab = self.vocab_size
        with torch.inference_mode():
            logits, batch = self._prefix_cache(prefix)
            batch.batch_repeat_interleave(count)
            logits = logits[None].expand(count, -1)
            rows = list(range(count))  # the continuation of each batch row
            generator = torch.Generator(device=self._device)
            generator.manual_seed(int(seed))
            kwargs = {"logits_to_keep": 1} if self._keeps_logits else {}
            for step in range(steps):
                scores = logits
                if allowed is not None:
                    ok = analysis.allowed_rows([allowed([t for t, _ in results[r]]) for r in rows], vocab,
                                               logits.device)
                    live = ok.any(-1).tolist()
                    if not all(live):  # nothing may follow: that continuation ends here
                        keep = [j for j, alive in enumerate(live) if alive]
                        if not keep:
                            break
                        index = torch.tensor(keep)
                        batch.batch_select_indices(index)
                        logits, ok = logits[index], ok[index]
                        rows = [rows[j] for j in keep]
                    scores = analysis.restrict(logits, ok)
                probs = analysis.sampling_probs(
                    scores, temperature=settings.temperature, top_k=settings.top_k,
                    top_p=settings.top_p, min_p=settings.min_p,
                )
                tokens = analysis.draw(probs, generator)  # [rows, 1]
                token_probs, token_ranks = analysis.target_probs_ranks(logits, tokens.view(-1))
                self.forward_passes += 1
                self.model_calls += 1
                out = self.model(input_ids=tokens, cache=batch, use_cache=True, **kwargs)
                logits = out.logits[:, -1, :vocab].float()
                del out
                dists = analysis.distributions(logits, self.top_k)
                keep = []
                for j, (row, token) in enumerate(zip(rows, tokens.view(-1).tolist())):
                    results[row].append((token, NodeOutput(token_probs[j], token_ranks[j], dists[j])))
                    if token not in stops:
                        keep.append(j)
                if not keep or step == steps - 1:
                    break
                if len(keep) < len(rows):
                    index = torch.tensor(keep)  # on the CPU: indexes a cache split over devices too
                    batch.batch_select_indices(index)
                    logits = logits[index]
                    rows = [rows[j] for j in keep]
        return results

    def _prefix_cache(self, prefix: tuple[int, ...]):
        """(float32 next-token logits [V] after `prefix`, a KV cache of exactly `prefix` that
        no line shares a layer object with). A line holding `prefix` (or more) with the
        prefix's logits kept costs nothing; otherwise one call, as a step on `prefix` makes."""
        logits = self._logits.get(prefix)
        if logits is not None:
            for line in reversed(self._lines):
                if line.tokens[: len(prefix)] == prefix:
                    cache = _fork(line.cache)
                    if len(line.tokens) > len(prefix):
                        cache.crop(len(prefix) - len(line.tokens))
                    return logits, cache
        line, start = self._checkout(prefix, feed_at_least=1)
        self.forward_passes += 1
        out = self._run(line, prefix, start, keep=1)
        logits = self._logits.keep(prefix, out.logits[0, -1, : self.vocab_size])
        return logits, _fork(line.cache)

    def stop_ids(self, fill_stop: str) -> frozenset[int]:
        """Tokens after which a fill or a sample stops: "eos" the end-of-sequence id(s) of the
        tokenizer, the model config and its generation config; "line" those and every id
        whose bytes contain a newline. Computed once per kind."""
        if fill_stop not in ("eos", "line"):
            raise ValueError(f'fill_stop must be "eos" or "line", not {fill_stop!r}')
        ids = self._stop_ids.get(fill_stop)
        if ids is None:
            found: set[int] = set()
            sources = (self.loaded.tokenizer.eos_token_id, getattr(self.model.config, "eos_token_id", None),
                       getattr(getattr(self.model, "generation_config", None), "eos_token_id", None))
            for value in sources:
                if isinstance(value, int):
                    found.add(value)
                elif isinstance(value, (list, tuple, set)):
                    found.update(v for v in value if isinstance(v, int))
            found = {i for i in found if 0 <= i < self.vocab_size}
            if fill_stop == "line":
                pieces = self._token_bytes(range(self.vocab_size))
                found.update(i for i, piece in pieces.items() if b"\n" in piece)
            ids = self._stop_ids[fill_stop] = frozenset(found)
        return ids

    def _check_ids(self, ids: Sequence[int]) -> None:
        """Only ids of the real vocabulary have a probability (padding rows are cut off)."""
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is not in the model's vocabulary of {self.vocab_size} ids")

    @contextmanager
    def _attention(self, eager: bool):
        """Eager attention for the duration (sdpa returns no attention weights), then back."""
        model = self.model
        default_attn = model.config._attn_implementation
        if eager and default_attn != "eager":
            model.set_attn_implementation("eager")
        try:
            yield
        finally:
            if model.config._attn_implementation != default_attn:
                model.set_attn_implementation(default_attn)

    def _analysis(self, out, influence: bool, lens_ids: tuple[int, ...] | None) -> Analysis:
        """Influence and/or the logit lens at the last position of a forward call's output."""
        model = self.model
        result = Analysis()
        if influence:
            # Every (layer, head) row of the last position over the whole prefix, on one
            # device (a device map puts the layers on several).
            rows = torch.cat([a[0, :, -1, :].to(self._device) for a in out.attentions if a is not None])
            values, sink_share = analysis.influence(rows)
            # No value (None) at position 0, the usual sink, and at the last, the query itself.
            result = Analysis(influence=analysis.optional_values(values), sink_share=sink_share)
        if lens_ids is not None:
            hidden = [h[0, -1] for h in out.hidden_states[1:]]  # one per layer, the last normed
            head = model.get_output_embeddings()
            probs = analysis.logit_lens(hidden, final_norm(model), head, lens_ids, self.vocab_size)
            result = Analysis(
                influence=result.influence,
                sink_share=result.sink_share,
                lens_ids=lens_ids,
                lens_probs=tuple(tuple(row) for row in probs.tolist()),
            )
        return result

    # ------------------------------------------------------------------ cache lines
    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _checkout(self, target: tuple[int, ...], feed_at_least: int) -> tuple[_Line, int]:
        """A line whose cache holds target[:start], with start <= len(target) - feed_at_least,
        reusing the line that shares the longest prefix with `target`."""
        limit = len(target) - feed_at_least
        best, start = closest_line(self._lines, target, limit)
        if best is None or start <= 0:
            return _Line((), self._new_cache()), 0
        if start == len(best.tokens):
            return best, start  # extend in place
        line = best
        if len(self._lines) < self.cache_size:
            line = _Line(best.tokens, _fork(best.cache))
        line.cache.crop(start - len(line.tokens))
        line.tokens = target[:start]
        return line, start

    def _run(self, line: _Line, target: tuple[int, ...], start: int, keep: int = 0, **kwargs):
        """Feed target[start:] to the model on top of `line` (which holds target[:start]); with
        `keep`, the LM head may run on the last `keep` positions only. Afterwards the line holds
        `target` and is the most recently used."""
        ids = torch.tensor([target[start:]], device=self._device)
        if keep and self._keeps_logits:
            kwargs["logits_to_keep"] = keep  # skip the LM head for rows nobody reads
        self.model_calls += 1  # the callers count their own pass (a prefill is one, in chunks)
        try:
            out = self.model(input_ids=ids, cache=line.cache, use_cache=True, **kwargs)
        except BaseException:
            self._forget(line)  # its cache may be half-updated
            raise
        line.tokens = target
        self._remember(line)
        return out

    def _remember(self, line: _Line) -> None:
        self._lines = [x for x in self._lines if x is not line and x.tokens != line.tokens]
        self._lines.append(line)
        del self._lines[: -self.cache_size]

    def _forget(self, line: _Line) -> None:
        self._lines = [x for x in self._lines if x is not line]

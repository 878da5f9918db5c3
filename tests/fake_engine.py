"""A fast, deterministic stand-in for tokentree.lm.engine.Engine (same public names).

Distributions depend only on the prefix, so a fake "model" behaves like a real one for
caching: the same prefix always gives the same output. It counts forward passes, and a
`gate` (threading.Event) can hold every model call to test a busy worker.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from tokentree.outputs import Analysis, Capabilities, Distribution, NodeOutput

VOCAB = [b"<s>", b" the", b" cat", b" sat", b" on", b" mat", b"\n", b"\t", b" a", b" dog",
         b"ran", b" away", b".", b",", b" and", b"\xe6", b"\x97", b"\xa5", b" \xe2\x82\xac", b"x"]
SPECIAL = {0}


@dataclass
class FakeLoaded:
    name: str = "fake-model"
    device: str = "cpu"
    dtype: str = "float32"
    fingerprint: str = "fake-model|float32"
    vocab_key: str = "fakevocab"
    num_layers: int = 4
    vocab_size: int = len(VOCAB)
    context_length: int | None = 64


class FakeEngine:
    def __init__(self, loaded: FakeLoaded | None = None, *, top_k: int = 8, gate=None) -> None:
        self.loaded = loaded or FakeLoaded()
        self.info = self.loaded  # the ModelInfo fields
        self.top_k = top_k
        self.vocab_size = self.loaded.vocab_size  # ids 0 .. vocab_size-1 (as Backend.vocab_size)
        self.forward_passes = 0
        self.analyze_calls = 0
        self.step_analysis_calls = 0  # step_with_analysis: a step and its analysis in one pass
        self.capabilities = Capabilities()
        self.gate = gate

    def _wait(self) -> None:
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"

    def close(self) -> None:
        pass

    def encode(self, text: str) -> list[int]:
        ids, rest = [], text.encode()
        while rest:
            best = max((i for i, p in enumerate(VOCAB) if i not in SPECIAL and rest.startswith(p)),
                       key=lambda i: len(VOCAB[i]), default=None)
            if best is None:
                best = len(VOCAB) - 1
                rest = rest[1:]
            else:
                rest = rest[len(VOCAB[best]):]
            ids.append(best)
        return ids

    def token_bytes(self, ids) -> dict[int, bytes]:
        return {i: VOCAB[i] for i in ids if 0 <= i < len(VOCAB)}

    def special_ids(self) -> frozenset[int]:
        return frozenset(SPECIAL)

    def chat_template(self):
        return None  # no chat template: a chat prompt is refused (tests of chat use real tokenizers)

    def encode_special(self, text: str) -> list[int]:
        return self.encode(text)

    def _probs(self, prefix) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(repr(tuple(prefix)).encode()).digest()[:8], "big")
        rng = random.Random(seed)
        weights = [rng.random() ** 4 for _ in VOCAB]
        total = sum(weights)
        return [w / total for w in weights]

    def _output(self, tokens) -> NodeOutput:
        probs = self._probs(tokens)
        order = sorted(range(len(probs)), key=lambda i: -probs[i])[: self.top_k]
        entropy = -sum(p * math.log(p) for p in probs if p > 0)
        dist = Distribution(tuple(order), tuple(probs[i] for i in order), entropy, entropy / math.log(len(VOCAB)))
        if len(tokens) == 1:
            return NodeOutput(None, None, dist)
        parent = self._probs(tokens[:-1])
        token = tokens[-1]
        rank = 1 + sum(1 for p in parent if p > parent[token])
        return NodeOutput(parent[token], rank, dist)

    def prefill(self, tokens) -> list[NodeOutput]:
        self._wait()
        self.forward_passes += 1
        return [self._output(tokens[: i + 1]) for i in range(len(tokens))]

    def step(self, prefix, token) -> NodeOutput:
        self._wait()
        self.forward_passes += 1
        return self._output(list(prefix) + [token])

    def step_with_analysis(self, prefix, token, *, influence: bool, lens_count: int):
        """`step` plus the analysis of prefix + [token] in the same (one) forward pass: the
        logit lens over the top `lens_count` ids of the new distribution."""
        self._wait()
        self.forward_passes += 1
        self.step_analysis_calls += 1
        tokens = list(prefix) + [token]
        out = self._output(tokens)
        lens_ids = None
        if lens_count > 0:
            probs = self._probs(tokens)
            lens_ids = sorted(range(len(probs)), key=lambda i: -probs[i])[:lens_count]
        return out, self._analysis(tokens, influence, lens_ids)

    def sample(self, prefix, *, count, steps, settings, seed, stop_ids=frozenset(), allowed=None):
        """Like Engine.sample: `count` continuations of up to `steps` tokens, drawn with the
        sampler `settings` from the fake's full distributions, deterministic in `seed`; one
        forward pass per step (the batch), a continuation ending after a token of `stop_ids`.
        `allowed`: drawn tokens -> bitmask of the ids that may follow (a row with none ends)."""
        from tokentree.sampling import survivors

        self._wait()
        rng = random.Random(seed)
        drawn = [[] for _ in range(count)]
        live = list(range(count)) if steps > 0 else []
        for _ in range(steps):
            if not live:
                break
            self.forward_passes += 1
            for row in list(live):
                tokens = list(prefix) + [t for t, _ in drawn[row]]
                probs = list(self._probs(tokens))
                if allowed is not None:
                    mask = allowed([t for t, _ in drawn[row]])
                    probs = [p if (i >> 3) < len(mask) and mask[i >> 3] >> (i & 7) & 1 else 0.0
                             for i, p in enumerate(probs)]
                    if not any(probs):
                        live.remove(row)
                        continue
                order = sorted(range(len(probs)), key=lambda i: -probs[i])
                kept, _ = survivors(order, [probs[i] for i in order], settings, 0.0)
                token = rng.choices(list(kept), weights=list(kept.values()))[0]
                drawn[row].append((token, self._output(tokens + [token])))
                if token in stop_ids:
                    live.remove(row)
        return drawn

    def stop_ids(self, fill_stop: str) -> frozenset[int]:
        """"eos": <s> (id 0) ends a sequence here; "line": also every token with a newline."""
        if fill_stop not in ("eos", "line"):
            raise ValueError(f"fill_stop must be eos or line, not {fill_stop!r}")
        ids = {0}
        if fill_stop == "line":
            ids |= {i for i, piece in enumerate(VOCAB) if b"\n" in piece}
        return frozenset(ids)

    def analyze(self, tokens, *, influence=False, lens_ids=None) -> Analysis:
        self._wait()
        self.analyze_calls += 1
        self.forward_passes += 1
        return self._analysis(tokens, influence, lens_ids)

    def _analysis(self, tokens, influence, lens_ids) -> Analysis:
        infl = sink = None
        if influence:
            # Like the engine: no value at position 0 (the sink) or at the last (the query);
            # the others rise to 1.0 at the one before the last. The sink share needs n >= 2.
            n = len(tokens)
            infl = tuple(k / (n - 2) if 0 < k < n - 1 else None for k in range(n))
            sink = 0.75 if n >= 2 else None
        lens = None
        if lens_ids:
            lens = tuple(tuple(min(1.0, (layer + 1) / self.loaded.num_layers * (1 / (k + 1)))
                               for k, _ in enumerate(lens_ids))
                         for layer in range(self.loaded.num_layers))
        return Analysis(influence=infl, lens_ids=tuple(lens_ids) if lens_ids else None, lens_probs=lens,
                        sink_share=sink)


def new_session(store, engine, prompts: dict[str, str]) -> int:
    """A session with one branch per prompt, the last one focused (launch then focuses the first)."""
    loaded = engine.info
    sid = store.start_session(model_name=loaded.name, fingerprint=loaded.fingerprint,
                              vocab_key=loaded.vocab_key, prompt_sources=list(prompts))
    for name, text in prompts.items():
        store.create_branch(sid, engine.encode(text), source=name, name=name)
    return sid


def explore(store, engine, prompts: dict[str, str], moves=(1, 0, 2), **explorer_args):
    """(session id, Explorer) of a new session on `engine`, its prompt computed, then one
    append per move (the move-th candidate: by default the 2nd, then the 1st, then the 3rd)."""
    from tokentree.core.explorer import Explorer

    sid = new_session(store, engine, prompts)
    ex = Explorer(store, sid, **explorer_args)
    ex.attach_engine(engine)
    ex.run_jobs_inline()
    for move in moves:
        ex.cursor(move)
        ex.append()
        ex.run_jobs_inline()
    return sid, ex

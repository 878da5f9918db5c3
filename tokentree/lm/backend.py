"""The one interface every model backend implements; the core talks to nothing else.

Three backends implement it:
- `lm.engine.Engine`: a Hugging Face model in this process (one device, or sharded over
  every GPU and then CPU/disk with a device map); exact numbers, attention and layer lens;
- `lm.llama.LlamaBackend`: a GGUF model through llama.cpp in this process; exact numbers;
- `lm.server.ServerBackend`: an OpenAI-compatible completion server (vLLM, SGLang,
  llama.cpp); numbers from its top log-probabilities, so the entropy is a lower bound.

The core asks `capabilities` what a backend can do, never its type. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from tokentree.outputs import Analysis, Capabilities, ModelInfo, NodeOutput


@runtime_checkable
class Backend(Protocol):
    info: ModelInfo
    capabilities: Capabilities
    vocab_size: int  # ids 0 .. vocab_size-1 have a probability
    forward_passes: int  # passes over input, as benchmarks count them (a cached node: 0)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as the model's own tokenizer gives them (BOS included)."""

    def token_bytes(self, ids: Iterable[int]) -> dict[int, bytes]:
        """The raw bytes each id stands for (special tokens: their name as UTF-8)."""

    def prefill(self, tokens: Sequence[int]) -> list[NodeOutput | None]:
        """Outputs of every prefix tokens[:i+1]. Without `capabilities.prompt_logprobs` only
        the last is computed and the others are None."""

    def step(self, prefix: Sequence[int], token: int) -> NodeOutput:
        """The output of prefix + [token]."""

    def step_with_analysis(
        self, prefix: Sequence[int], token: int, *, influence: bool, lens_count: int
    ) -> tuple[NodeOutput, Analysis]:
        """`step` plus the node's analysis, as far as the capabilities allow."""

    def analyze(
        self, tokens: Sequence[int], *, influence: bool = False, lens_ids: Sequence[int] | None = None
    ) -> Analysis:
        """Attention influence and/or the logit lens at `tokens` (empty without the capability)."""

    def sample(
        self, prefix: Sequence[int], *, count: int, steps: int, settings, seed: int,
        stop_ids: Iterable[int] = frozenset(),
    ) -> list[list[tuple[int, NodeOutput]]]:
        """`count` continuations of up to `steps` tokens drawn after `prefix`."""

    def stop_ids(self, fill_stop: str) -> frozenset[int]:
        """Ids after which a fill or sample stops: "eos", or "line" (eos and newline tokens)."""

    def close(self) -> None:
        """Release connections, threads and memory; the backend is not used afterwards."""

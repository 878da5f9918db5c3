"""Which model job runs next: the tree's state in, a job description out.

The planner only reads (through the TreeView) and decides; running a job on the model and
recording its result are `jobs.py`'s. Order: the focused node's missing outputs, then what
the active view needs there, then unknown token texts, then the other branches' outputs (so
their log-probabilities show). The model is asked only for prefixes with no output cached
under the current fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .view import TreeView


@dataclass(frozen=True)
class Wants:
    """What the active views need at the focused node, besides its distribution."""

    influence: bool = False
    lens_count: int = 0  # candidates whose per-layer probabilities a layer view shows (0: off)


@dataclass(frozen=True)
class OutputsJob:
    """Compute the outputs of `keys[k]` for every k in `missing` (prefixes of `tokens`)."""

    keys: tuple[bytes, ...]
    tokens: tuple[int, ...]
    missing: tuple[int, ...]
    known_bytes: frozenset[int]  # token ids whose bytes the store has (not asked again)
    # A new node under a view that needs its analysis: the step's own pass gives it.
    influence: bool = False
    lens_count: int = 0

    @property
    def one_step(self) -> bool:
        return self.missing == (len(self.tokens) - 1,) and len(self.tokens) > 1

    @property
    def failure_key(self) -> tuple:
        return ("outputs", self.keys[-1])

    @property
    def label(self) -> str:
        return "computing the next-token distribution" if self.one_step else f"reading {len(self.tokens)} tokens"


@dataclass(frozen=True)
class AnalysisJob:
    """Attention influence and/or per-layer probabilities of `lens_ids` at the prefix `tokens`."""

    key: bytes
    tokens: tuple[int, ...]
    influence: bool
    lens_ids: tuple[int, ...] | None

    @property
    def failure_key(self) -> tuple:
        return ("analysis", self.key, self.influence, self.lens_ids or ())

    @property
    def label(self) -> str:
        parts = (("attention influence", self.influence), ("layer probabilities", self.lens_ids))
        return "computing " + " and ".join(w for w, on in parts if on)


@dataclass(frozen=True)
class BytesJob:
    """Ask the tokenizer for the bytes of these token ids."""

    ids: tuple[int, ...]

    @property
    def failure_key(self) -> tuple:
        return ("bytes", self.ids)

    label = "reading token text"


@dataclass(frozen=True)
class SampleJob:
    """Draw `count` continuations of up to `steps` tokens after `tokens` (asked for by `g`)."""

    branch_id: int
    node_id: int  # the prefix's node: the continuations grow from here
    key: bytes  # its prefix key (the drawn nodes' keys chain from it)
    tokens: tuple[int, ...]
    count: int
    steps: int
    settings: Any  # a SamplingConfig (temperature, top_k, top_p, min_p)
    seed: int
    stop_ids: frozenset[int]
    known_bytes: frozenset[int]
    # Under a regex constraint: drawn tokens -> the allowed next-token bitmask (worker side).
    allowed: Any = None

    @property
    def failure_key(self) -> tuple:
        return ("sample", self.tokens, self.seed)

    @property
    def label(self) -> str:
        return f"sampling {self.count} x {self.steps} tokens"


Job = OutputsJob | AnalysisJob | BytesJob | SampleJob


class Planner:
    """Remembers what failed (never retried) and which paths are complete (never re-checked)."""

    def __init__(self, view: TreeView) -> None:
        self.view = view
        self.failed: set[tuple] = set()
        self._complete: set[int] = set()  # node ids whose whole path has cached outputs
        # Whether one request scores every position of a path (Capabilities.prompt_logprobs).
        # Without it only the node itself is asked for: the others stay n/a until visited.
        self.whole_paths = True

    def model_changed(self) -> None:
        self._complete.clear()

    def focused_job(self, path, wants: Wants, shown_ids: list[int]) -> OutputsJob | AnalysisJob | None:
        """The focused node's outputs, then what its views need. `shown_ids`: the table's tokens."""
        return self._outputs_job(path, wants) or self._analysis_job(path, wants, shown_ids)

    def background_job(self, branches, focused_id: int) -> BytesJob | OutputsJob | None:
        """Unknown token texts, then the other branches' outputs."""
        view = self.view
        if job := self._bytes_job():
            return job
        todo = [b for b in branches if b.id != focused_id and b.node_id not in self._complete]
        if todo and any(view.cached_node(b.node_id) is None for b in todo):
            view.read_paths({b.node_id for b in todo})
        for b in todo:
            if job := self._outputs_job(view.path_of(b.node_id), Wants()):
                return job
        return None

    def _outputs_job(self, path, wants: Wants) -> OutputsJob | None:
        if path[-1].id in self._complete:
            return None
        keys = tuple(n.prefix_key for n in path)
        outs = self.view.probs_for(keys if self.whole_paths else keys[-1:])
        wanted = range(len(keys)) if self.whole_paths else (len(keys) - 1,)
        missing = tuple(k for k in wanted if keys[k] not in outs)
        if not missing:
            self._complete.add(path[-1].id)
            return None
        job = OutputsJob(keys=keys, tokens=tuple(n.token_id for n in path), missing=missing,
                         known_bytes=self.view.known_byte_ids())
        if job.failure_key in self.failed:
            return None
        if job.one_step and (wants.influence or wants.lens_count):
            stored = self.view.analysis_for(keys[-1])
            influence = wants.influence and (stored is None or stored.influence is None)
            lens_count = wants.lens_count if stored is None or not stored.lens_ids else 0
            job = OutputsJob(keys=keys, tokens=job.tokens, missing=missing, known_bytes=job.known_bytes,
                             influence=influence, lens_count=lens_count)
        return job

    def _analysis_job(self, path, wants: Wants, shown_ids: list[int]) -> AnalysisJob | None:
        if not wants.influence and not wants.lens_count:
            return None
        current = path[-1]
        analysis = self.view.analysis_for(current.prefix_key)
        influence = wants.influence and (analysis is None or analysis.influence is None)
        lens_ids = None
        if wants.lens_count:
            have = set(analysis.lens_ids or ()) if analysis is not None else set()
            if shown_ids and not set(shown_ids) <= have:
                lens_ids = tuple(shown_ids)
        if not influence and lens_ids is None:
            return None
        job = AnalysisJob(key=current.prefix_key, tokens=tuple(n.token_id for n in path),
                          influence=influence, lens_ids=lens_ids)
        return None if job.failure_key in self.failed else job

    def _bytes_job(self) -> BytesJob | None:
        ids = tuple(self.view.missing_byte_ids())
        if not ids:
            return None
        job = BytesJob(ids)
        return None if job.failure_key in self.failed else job

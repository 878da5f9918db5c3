"""Running a planned job on the model, and recording its result in the store's cache.

`execute` runs on the worker thread and touches only the engine. `record` runs on the UI
thread and writes the result to the model-output cache (never an event), then tells the
TreeView what it wrote so the next read fetches it: the screen then shows the STORED numbers,
the same ones a resume will show.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tokentree.outputs import Analysis, NodeOutput

from tokentree.store import keys

from .planner import AnalysisJob, BytesJob, Job, OutputsJob, SampleJob
from .view import TreeView


@dataclass(frozen=True)
class OutputsResult:
    outputs: dict[int, NodeOutput]  # position in the job's tokens -> its output
    ms: float  # wall time of the forward pass
    pieces: dict[int, bytes]  # bytes of the token ids the result shows that were not known
    analysis: Analysis | None  # when the step computed its node's analysis in the same pass


@dataclass(frozen=True)
class SampleResult:
    continuations: list[list[tuple[int, NodeOutput]]]  # per sample: (token, its node's output)
    pieces: dict[int, bytes]


def execute(job: Job, engine):
    """The model work of `job` (worker thread)."""
    if isinstance(job, OutputsJob):
        return _outputs(job, engine)
    if isinstance(job, SampleJob):
        extra = {"allowed": job.allowed} if job.allowed is not None else {}
        drawn = engine.sample(list(job.tokens), count=job.count, steps=job.steps, settings=job.settings,
                              seed=job.seed, stop_ids=job.stop_ids, **extra)
        ids = {t for c in drawn for t, out in c} | {t for c in drawn for _, out in c for t in out.next.top_ids}
        return SampleResult(drawn, engine.token_bytes(sorted(ids - job.known_bytes)))
    if isinstance(job, AnalysisJob):
        return engine.analyze(list(job.tokens), influence=job.influence, lens_ids=job.lens_ids)
    if isinstance(job, BytesJob):
        return engine.token_bytes(list(job.ids))
    raise TypeError(f"not a job: {job!r}")


def _outputs(job: OutputsJob, engine) -> OutputsResult:
    tokens = list(job.tokens)
    last = len(tokens) - 1
    start = time.perf_counter()
    analysis = None
    if job.one_step and (job.influence or job.lens_count):
        out, analysis = engine.step_with_analysis(tokens[:-1], tokens[-1], influence=job.influence,
                                                  lens_count=job.lens_count)
        outputs = {last: out}
    elif job.one_step:
        outputs = {last: engine.step(tokens[:-1], tokens[-1])}
    else:
        every = engine.prefill(tokens)  # one pass over the whole path
        # None: a position the backend did not score (a server without prompt log-probs).
        outputs = {k: every[k] for k in job.missing if every[k] is not None}
    ms = (time.perf_counter() - start) * 1000
    ids = set(tokens) | {t for o in outputs.values() for t in o.next.top_ids}
    return OutputsResult(outputs, ms, engine.token_bytes(sorted(ids - job.known_bytes)), analysis)


def record(job: Job, result, store, view: TreeView) -> list[bytes]:
    """Write `result` to the cache (UI thread). Returns the prefix keys whose outputs are new."""
    fingerprint = view.fingerprint
    if isinstance(job, OutputsJob):
        if result.analysis is not None:
            store.put_analysis(job.keys[-1], fingerprint, result.analysis)
            view.analysis_stored(job.keys[-1])
        items = [(job.keys[k], out) for k, out in result.outputs.items()]
        return _record_outputs(items, result.pieces, store, view)
    if isinstance(job, SampleJob):
        # The outputs of every drawn node; the branches themselves are a command (explorer).
        items = []
        for continuation in result.continuations:
            key = job.key
            for token, out in continuation:
                key = keys.prefix_key(key, token, view.vocab_key)
                items.append((key, out))
        return _record_outputs(items, result.pieces, store, view)
    if isinstance(job, AnalysisJob):
        store.put_analysis(job.key, fingerprint, result)
        view.analysis_stored(job.key)
    elif isinstance(job, BytesJob):
        _record_bytes(result, store, view)
    return []


def _record_outputs(items, pieces: dict[int, bytes], store, view: TreeView) -> list[bytes]:
    """Outputs (prefix key, NodeOutput) and the token bytes they show, in the cache."""
    store.put_outputs(items, view.fingerprint, vocab_key=view.vocab_key, pieces=pieces)  # one transaction
    for key, _ in items:
        view.output_stored(key)
    if pieces:
        view.bytes_known(pieces)
    return [key for key, _ in items]


def _record_bytes(pieces: dict[int, bytes], store, view: TreeView) -> None:
    if pieces:
        store.put_token_bytes(view.vocab_key, pieces)
        view.bytes_known(pieces)

"""Prefetch, as a feature: while the user reads the table, each model (the main one, and a
compare model) computes the children of the likely candidates (plan.py chooses them), so an
append finds its node cached. Never ahead of a key's own work: on a local model (one request
at a time) only when the explorer is idle, so a key waits at most for the one step in
flight; on a server while fewer than `capabilities.parallel` prefetches are in flight."""

from __future__ import annotations

import logging

from tokentree.core import jobs
from tokentree.core.feature import Feature
from tokentree.core.worker import Task

from .plan import prefetch_jobs

log = logging.getLogger(__name__)


class Prefetch(Feature):
    name = "prefetch"

    def __init__(self, core) -> None:
        super().__init__(core)
        self.count = 0  # outputs a prefetch put in the cache (benchmarks report it)

    def speculate(self) -> Task | None:
        core = self.core
        if core.config.explore.prefetch <= 0 or core.running:
            return None
        return next((t for slot in core.models if (t := self._for(slot)) is not None), None)

    def in_flight(self, key: bytes) -> bool:
        return any(key in slot.prefetching for slot in self.core.models)

    def _for(self, slot) -> Task | None:
        core, engine = self.core, slot.engine
        if engine is None or slot.retry_at is not None:
            return None
        parallel = engine.capabilities.parallel
        if len(slot.prefetching) >= parallel or (parallel == 1 and not core.idle):
            return None
        view = core.view
        with view.reading():
            path = view.path_of(core.focused_branch().node_id, keep=True)
            rows = core.candidate_rows(path[-1])
            candidates = [r.token_id for r in rows if r.rank is not None]
            found = prefetch_jobs(slot.view, path, candidates, core.selected_token, core.config.explore.prefetch,
                                  set(slot.prefetching))
        job = next((j for j in found if j.keys[-1] not in slot.prefetch_failed), None)
        if job is None:
            return None
        key = job.keys[-1]

        def done(result) -> None:
            slot.prefetching.pop(key, None)
            jobs.record(job, result, core.store, slot.view)  # cache rows only, never events
            if slot is core.main:
                self.count += 1
                core.outputs_recorded(job, result)

        def failed(exc: BaseException) -> None:
            # Not into the planner's failed set: a key's own job for this node must still run
            # (and say why it fails, or retry a server that is back).
            slot.prefetching.pop(key, None)
            slot.prefetch_failed.add(key)
            log.info("prefetch (%s) failed: %s", slot.name, exc)

        task = Task(label="", run=lambda: jobs.execute(job, engine), finish=done, fail=failed, beside=parallel > 1)
        slot.prefetching[key] = task
        return task

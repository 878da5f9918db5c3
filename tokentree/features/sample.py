"""Sample (g): draw `sample_count` continuations of `fill_tokens` tokens with the
[sampling] settings, in the worker; each becomes a new branch ("sample 1", ...), all one
undoable step. Under a regex constraint every drawn token is one the constraint allows."""

from __future__ import annotations

import random
import re

from tokentree.core import jobs
from tokentree.core.feature import Feature
from tokentree.core.planner import SampleJob
from tokentree.errors import StaleCommand
from tokentree.sampling import describe


class Sample(Feature):
    name = "sample"

    def __init__(self, core) -> None:
        super().__init__(core)
        self._requested: SampleJob | None = None

    def start(self) -> None:
        core = self.core
        if core.engine is None:
            core.message = "cannot sample yet: the model is not loaded"
            return
        view, explore, settings = core.view, core.config.explore, core.config.sampling
        with view.reading():
            branch = core.focused_branch()
            path = view.path_of(branch.node_id)
            allowed = core.sampling_filter(path)
        if isinstance(allowed, str):
            core.message = allowed  # the constraint allows nothing here: say why
            return
        seed = settings.seed if settings.seed >= 0 else random.randrange(2**31)
        self._requested = SampleJob(
            branch_id=branch.id, node_id=branch.node_id, key=path[-1].prefix_key,
            tokens=tuple(n.token_id for n in path),
            count=explore.sample_count, steps=explore.fill_tokens, settings=settings, seed=seed,
            stop_ids=core.stop_ids(), known_bytes=view.known_byte_ids(), allowed=allowed)
        core.moved(self)  # a running fill ends
        under = " under the regex constraint" if allowed is not None else ""
        core.message = f"sampling {explore.sample_count} continuations ({describe(settings)}, seed {seed}){under}"

    def next_task(self, idle: bool):
        if idle or self._requested is None:
            return None  # a key asked for it: it runs before the main model's planned work
        job, self._requested = self._requested, None
        core, engine = self.core, self.core.engine
        return core.model_task(core.main, job.failure_key, job.label, lambda: jobs.execute(job, engine),
                               lambda result: self._record(job, result))

    def _record(self, job: SampleJob, result) -> None:
        core = self.core
        jobs.record(job, result, core.store, core.view)
        branch = core.focused_branch()
        if branch.id != job.branch_id or branch.node_id != job.node_id:
            core.message = "the branch moved while sampling: nothing recorded (press g again)"
            return
        names = self._names(job.count)
        settings = {k: getattr(job.settings, k) for k in ("temperature", "top_k", "top_p", "min_p")}
        try:
            core.command_many(core.store.record_samples, job.branch_id, settings=settings, seed=job.seed,
                              names=names, steps=job.steps,
                              continuations=[[token for token, _ in c] for c in result.continuations])
        except StaleCommand as exc:
            core.message = str(exc)
            return
        core.moved(self)
        core.message = (f"sampled {job.count} continuations as {names[0]} .. {names[-1]} "
                        f"(seed {job.seed}; u removes them)")

    def _names(self, count: int) -> list[str]:
        branches = self.core.view.branches()
        taken = [int(m.group(1)) for b in branches if (m := re.fullmatch(r"sample (\d+)", b.name))]
        first = max(taken, default=0) + 1
        return [f"sample {first + i}" for i in range(count)]

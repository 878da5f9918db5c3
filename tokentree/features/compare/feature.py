"""Comparisons, as a feature: a second model at the focused node, and a branch diff (c).

The math is diff.py's and divergence.py's; this reads the tree and the model-output cache
and plans the second model's work. No urwid, no torch.

The second model ("compare model", `--compare-model`) shares the session's tokenizer (a
different vocabulary is refused: the ids would mean other tokens). Its outputs go to the
same cache as the main model's, under its own fingerprint, through a `ModelView`. It is a
model slot of the core like the main model: its jobs (the focused path's missing outputs)
run on the same worker after the main model's, with the same back-off when a server stops
answering, and the prefetch feature speculates for it too. Nothing about it is an event: it
is a way of looking at the tree (like a prompt view), and its numbers are found again in the
cache under its fingerprint when the session is resumed with the same `--compare-model`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tokentree.core import jobs
from tokentree.core.feature import Feature
from tokentree.core.models import ModelSlot
from tokentree.core.planner import OutputsJob, Planner, Wants
from tokentree.core.snapshot import DISAGREEMENT, CompareInfo, Snapshot
from tokentree.errors import ModelLoadError, TokentreeError
from tokentree.outputs import NodeOutput
from tokentree.tree.text import join_pieces, one_line, placeholder, visible

from .diff import BranchDiff, branch_diff
from .divergence import compare_prob, disagreement, divergence
from .model_view import ModelView

log = logging.getLogger(__name__)


class Compare(Feature):
    name = "compare"

    def __init__(self, core) -> None:
        super().__init__(core)
        self.slot: ModelSlot | None = None  # the compare model, once --compare-model names one
        self.failed: str | None = None  # why it is not available (a failed load)
        self._load: Callable[[], Any] | None = None  # loads its engine in the worker (after the main model)
        self._values: dict = {}  # disagreement values: one cached tuple per path

    @property
    def active(self) -> bool:
        return self.slot is not None

    # ------------------------------------------------------------------ the second model
    def set_model(self, name: str, fingerprint: str, *, engine=None, load: Callable[[], Any] | None = None) -> None:
        """Compare with a second model: `engine` when loaded already, else `load` runs in the
        worker once the main model is there. `fingerprint`: the one its outputs are cached
        under (known before it loads, so a resumed session shows them from the cache)."""
        view = ModelView(self.core.view, fingerprint)
        old, self.slot = self.slot, ModelSlot(name, view, Planner(view), who=f"compare model {name}: ")
        self.core.add_model(self.slot, instead_of=old)
        self._load, self.failed = load, None
        if engine is not None:
            self.attach(engine)

    def attach(self, engine) -> None:
        """Use `engine` as the compare model (ModelLoadError for another vocabulary)."""
        slot, info = self.slot, engine.info
        if info.vocab_key != self.core.vocab_key:
            raise ModelLoadError(
                f"the compare model {info.name} has a different vocabulary than this session's model "
                f"({self.core.info.model_name}); two models are compared only over the same token ids")
        if info.fingerprint != slot.view.fingerprint:
            slot.view.use_fingerprint(info.fingerprint)
            self._values.clear()
        self._load, self.failed = None, None
        slot.attach(engine)

    def next_task(self, idle: bool):
        """The compare model's next job (its load first), when the main model has none."""
        slot, core = self.slot, self.core
        if slot is None or not idle:
            return None
        if self._load is not None:
            load, self._load = self._load, None
            return core.task(f"loading the compare model {slot.name}", load, self._loaded, self._load_failed)
        if slot.engine is None or slot.waiting():
            return None
        view = core.view
        with view.reading():
            path = view.path_of(core.focused_branch().node_id)
            job = slot.planner.focused_job(path, Wants(), [])
        if not isinstance(job, OutputsJob) or job.keys[-1] in slot.prefetching:
            return None
        engine = slot.engine

        def record(result) -> None:
            jobs.record(job, result, core.store, slot.view)
            self._values.clear()

        return core.model_task(slot, job.failure_key, f"{job.label} (compare model)",
                               lambda: jobs.execute(job, engine), record)

    def _loaded(self, engine) -> None:
        try:
            self.attach(engine)
        except TokentreeError as exc:
            self.failed = self.core.error = str(exc)
            try:
                engine.close()
            except Exception:  # noqa: BLE001 -- closing a refused model: nothing to tell
                log.exception("closing the refused compare model")

    def _load_failed(self, exc: BaseException) -> None:
        log.error("loading the compare model failed", exc_info=exc)
        self.failed = self.core.error = f"loading the compare model {self.slot.name} failed: {exc}"

    # ------------------------------------------------------------------ the snapshot
    def snapshot(self, snap: Snapshot) -> Snapshot:
        """The snapshot with the compare model's column, divergence and disagreement view."""
        slot = self.slot
        if slot is None:
            return snap
        view, other = self.core.view, slot.view
        with view.reading():
            path = view.path_of(self.core.focused_branch().node_id)
            node = path[-1]
            mine = view.outputs_for([node.prefix_key]).get(node.prefix_key)
            theirs = other.outputs_for([node.prefix_key]).get(node.prefix_key)
            rows = snap.candidates
            if theirs is not None and rows:
                rows = self._column(node, rows, theirs)
            prompt, pending = snap.prompt, snap.view_pending
            if snap.prompt_view == DISAGREEMENT and len(prompt) == len(path):
                values, missing = self._disagreement(path)
                prompt = tuple(replace(tok, value=v) for tok, v in zip(prompt, values))
                pending = missing and slot.engine is not None and self.failed is None
        div = None
        if mine is not None and theirs is not None:
            div = divergence(mine.next.top_ids, mine.next.top_probs, theirs.next.top_ids, theirs.next.top_probs)
        info = CompareInfo(model=slot.name, loading=slot.engine is None and self.failed is None, failed=self.failed,
                           waiting=theirs is None, divergence=div)
        return replace(snap, candidates=rows, prompt=prompt, view_pending=pending, compare=info)

    def _column(self, node, rows, theirs: NodeOutput):
        """Each candidate's probability under the compare model: from its top-K, else the
        child's own cached token probability (exact), else an upper bound."""
        ids, probs = theirs.next.top_ids, theirs.next.top_probs
        found = {r.token_id: compare_prob(r.token_id, ids, probs) for r in rows}
        outside = [r.token_id for r in rows if found[r.token_id][1] and r.explored]
        if outside:
            children = {c.token_id: c for c in self.core.view.children_of(node.id)}
            keys = {t: children[t].prefix_key for t in outside if t in children}
            exact = self.slot.view.probs_for(list(keys.values()))
            for t, key in keys.items():
                if exact.get(key) is not None:
                    found[t] = (exact[key], False)
        return tuple(replace(r, compare=found[r.token_id][0], compare_bound=found[r.token_id][1]) for r in rows)

    def _disagreement(self, path) -> tuple[tuple[float | None, ...], bool]:
        """|Δ log p| of each token between the two models, as colour values; and whether some
        are missing only because an output is not computed yet."""
        other = self.slot.view
        key = (path[-1].id, self.core.view.fingerprint, other.fingerprint)
        cached = self._values.get(key)
        if cached is not None:
            return cached
        keys = [n.prefix_key for n in path]
        mine, theirs = self.core.view.probs_for(keys), other.probs_for(keys)
        values = tuple(disagreement(mine.get(k), theirs.get(k)) for k in keys)
        missing = any(k not in mine or k not in theirs for k in keys[1:])
        if not missing:
            if len(self._values) > 64:
                self._values.clear()
            self._values[key] = (values, missing)
        return values, missing

    # ------------------------------------------------------------------ branch diff
    def branch_diff(self, a_id: int, b_id: int) -> BranchDiff | None:
        """Branches a and b from their fork point (None when one of them is gone)."""
        view = self.core.view
        with view.reading():
            by_id = {b.id: b for b in view.branches()}
            if a_id not in by_id or b_id not in by_id:
                return None
            a, b = by_id[a_id], by_id[b_id]
            a_path, b_path = view.path_of(a.node_id), view.path_of(b.node_id)
            keys = [n.prefix_key for n in (*a_path, *b_path)]
            probs = view.probs_for(keys)
            pieces = view.pieces({n.token_id for n in (*a_path, *b_path)})

        def text(token: int) -> str:
            return visible(pieces[token]) if token in pieces else placeholder(token)

        return branch_diff(a.name, a.id, a_path, b.name, b.id, b_path, probs=probs, text=text,
                           context_text=lambda ids: one_line(join_pieces(ids, pieces)))

    def diff_choices(self) -> list[tuple[int, str]]:
        """(id, name) of the branches the focused one can be compared with: those after it
        in the list, then those before it (the list's order, starting from the next one)."""
        branches = self.core.view.branches()
        at = next((k for k, b in enumerate(branches) if b.focused), 0)
        return [(b.id, b.name) for b in branches[at + 1:] + branches[:at]]

"""The explorer's comparisons: a branch diff, and a second model at the focused node.

A mixin of the Explorer, like exploring.py. The math is compare.py's; this reads the tree
and the model-output cache and plans the second model's work. No urwid, no torch.

The second model ("compare model", `--compare-model`) shares the session's tokenizer (a
different vocabulary is refused: the ids would mean other tokens). Its outputs go to the
same cache as the main model's, under its own fingerprint, through a `ModelView`: the
session's TreeView reading outputs under that fingerprint. Its jobs are planned like the
main model's (the focused path's missing outputs) and run on the same worker, after the
main model's. Nothing about it is an event: it is a way of looking at the tree (like a
prompt view), and its numbers are found again in the cache under its fingerprint when the
session is resumed with the same `--compare-model`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tokentree.errors import ModelLoadError, TokentreeError
from tokentree.outputs import NodeOutput
from tokentree.tree.text import join_pieces, one_line, placeholder, visible

from . import jobs
from .compare import BranchDiff, branch_diff, compare_prob, disagreement, divergence
from .planner import OutputsJob, Planner, Wants
from .snapshot import CompareInfo, Snapshot
from .view import TreeView
from .worker import Task

log = logging.getLogger(__name__)

DISAGREEMENT = "disagreement"  # the prompt view that needs a compare model


class ModelView:
    """The session's TreeView, with model outputs read under another fingerprint: nodes,
    token bytes and read transactions are the main view's (one vocabulary, one tree)."""

    def __init__(self, view: TreeView, fingerprint: str) -> None:
        self._main = view
        self.fingerprint = fingerprint
        self._outputs: dict[bytes, NodeOutput] = {}
        self._probs: dict[bytes, float | None] = {}
        self._absent: set[bytes] = set()

    def __getattr__(self, name: str) -> Any:  # everything but outputs: the main view's
        return getattr(self._main, name)

    def use_fingerprint(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self._outputs.clear()
        self._probs.clear()
        self._absent.clear()

    def outputs_for(self, keys: Sequence[bytes]) -> dict[bytes, NodeOutput]:
        want = [k for k in dict.fromkeys(keys) if k not in self._outputs and k not in self._absent]
        if want:
            with self._main.reading() as r:
                got = r.get_outputs(want, self.fingerprint)
            self._outputs.update(got)
            self._absent.update(k for k in want if k not in got)
        return {k: self._outputs[k] for k in keys if k in self._outputs}

    def probs_for(self, keys: Sequence[bytes]) -> dict[bytes, float | None]:
        """key -> the node's token probability under this model (keys with an output only)."""
        want = [k for k in dict.fromkeys(keys) if k not in self._outputs and k not in self._probs
                and k not in self._absent]
        if want:
            with self._main.reading() as r:
                got = r.output_probs(want, self.fingerprint)
            self._probs.update(got)
            self._absent.update(k for k in want if k not in got)
        out: dict[bytes, float | None] = {}
        for k in keys:
            if k in self._outputs:
                out[k] = self._outputs[k].token_prob
            elif k in self._probs:
                out[k] = self._probs[k]
        return out

    def output_stored(self, key: bytes) -> None:
        self._absent.discard(key)

    def analysis_for(self, key: bytes):  # the compare model computes no analyses
        return None


@dataclass
class CompareModel:
    """The second model: its name, cache view and planner; its engine once loaded."""

    name: str
    view: ModelView
    planner: Planner
    engine: Any = None
    load: Callable[[], Any] | None = None  # loads the engine in the worker (after the main model)
    failed: str | None = None  # why it is not available (a failed load)
    _values: dict = field(default_factory=dict)  # disagreement values: one cached tuple per path


class CompareCommands:
    """Mixed into Explorer; every method runs on the UI thread."""

    compare: CompareModel | None = None

    # ------------------------------------------------------------------ the second model
    def set_compare(self, name: str, fingerprint: str, *, engine=None,
                    load: Callable[[], Any] | None = None) -> None:
        """Compare with a second model: `engine` when loaded already, else `load` runs in the
        worker once the main model is there. `fingerprint`: the one its outputs are cached
        under (known before it loads, so a resumed session shows them from the cache)."""
        view = ModelView(self._view, fingerprint)
        self.compare = CompareModel(name=name, view=view, planner=Planner(view), load=load)
        if engine is not None:
            self.attach_compare(engine)

    def attach_compare(self, engine) -> None:
        """Use `engine` as the compare model (ModelLoadError for another vocabulary)."""
        cmp, info = self.compare, engine.info
        if info.vocab_key != self.vocab_key:
            raise ModelLoadError(
                f"the compare model {info.name} has a different vocabulary than this session's model "
                f"({self.info.model_name}); two models are compared only over the same token ids")
        if info.fingerprint != cmp.view.fingerprint:
            cmp.view.use_fingerprint(info.fingerprint)
            cmp._values.clear()
        cmp.engine, cmp.load, cmp.failed = engine, None, None
        cmp.planner.whole_paths = engine.capabilities.prompt_logprobs
        cmp.planner.model_changed()

    def _compare_task(self) -> Task | None:
        """The compare model's next job (its load first), when the main model has none."""
        cmp = self.compare
        if cmp is None:
            return None
        if cmp.load is not None:
            load, cmp.load = cmp.load, None
            task = Task(label=f"loading the compare model {cmp.name}", run=load,
                        finish=self._compare_loaded, fail=self._compare_load_failed)
            self._in_flight = task
            return task
        if cmp.engine is None:
            return None
        view = self._view
        with view.reading():
            path = view.path_of(self._focused_branch().node_id)
            job = cmp.planner.focused_job(path, Wants(), [])
        if not isinstance(job, OutputsJob):
            return None
        engine = cmp.engine

        def finish(result) -> None:
            self._in_flight = None
            jobs.record(job, result, self.store, cmp.view)
            cmp._values.clear()

        def fail(exc: BaseException) -> None:
            self._in_flight = None
            cmp.planner.failed.add(job.failure_key)  # its own planner: the main model's job is unaffected
            log.error("compare model: %s failed", job.label, exc_info=exc)
            self.error = f"compare model {cmp.name}: {job.label} failed: {exc}"

        task = Task(label=f"{job.label} (compare model)", run=lambda: jobs.execute(job, engine),
                    finish=finish, fail=fail)
        self._in_flight = task
        return task

    def _compare_loaded(self, engine) -> None:
        self._in_flight = None
        try:
            self.attach_compare(engine)
        except TokentreeError as exc:
            self.compare.failed = self.error = str(exc)
            try:
                engine.close()
            except Exception:  # noqa: BLE001 -- closing a refused model: nothing to tell
                log.exception("closing the refused compare model")

    def _compare_load_failed(self, exc: BaseException) -> None:
        self._in_flight = None
        log.error("loading the compare model failed", exc_info=exc)
        self.compare.failed = self.error = f"loading the compare model {self.compare.name} failed: {exc}"

    # ------------------------------------------------------------------ the snapshot
    def _compared(self, snap: Snapshot) -> Snapshot:
        """The snapshot with the compare model's column, divergence and disagreement view."""
        cmp = self.compare
        if cmp is None:
            return snap
        view, other = self._view, cmp.view
        with view.reading():
            path = view.path_of(self._focused_branch().node_id)
            node = path[-1]
            mine = view.outputs_for([node.prefix_key]).get(node.prefix_key)
            theirs = other.outputs_for([node.prefix_key]).get(node.prefix_key)
            rows = snap.candidates
            if theirs is not None and rows:
                rows = self._compare_column(node, rows, theirs)
            prompt, pending = snap.prompt, snap.view_pending
            if snap.prompt_view == DISAGREEMENT and len(prompt) == len(path):
                values, missing = self._disagreement(path)
                prompt = tuple(replace(tok, value=v) for tok, v in zip(prompt, values))
                pending = missing and cmp.engine is not None and cmp.failed is None
        div = None
        if mine is not None and theirs is not None:
            div = divergence(mine.next.top_ids, mine.next.top_probs, theirs.next.top_ids, theirs.next.top_probs)
        info = CompareInfo(model=cmp.name, loading=cmp.engine is None and cmp.failed is None, failed=cmp.failed,
                           waiting=theirs is None, divergence=div)
        return replace(snap, candidates=rows, prompt=prompt, view_pending=pending, compare=info)

    def _compare_column(self, node, rows, theirs: NodeOutput):
        """Each candidate's probability under the compare model: from its top-K, else the
        child's own cached token probability (exact), else an upper bound."""
        ids, probs = theirs.next.top_ids, theirs.next.top_probs
        found = {r.token_id: compare_prob(r.token_id, ids, probs) for r in rows}
        outside = [r.token_id for r in rows if found[r.token_id][1] and r.explored]
        if outside:
            children = {c.token_id: c for c in self._view.children_of(node.id)}
            keys = {t: children[t].prefix_key for t in outside if t in children}
            exact = self.compare.view.probs_for(list(keys.values()))
            for t, key in keys.items():
                if exact.get(key) is not None:
                    found[t] = (exact[key], False)
        return tuple(replace(r, compare=found[r.token_id][0], compare_bound=found[r.token_id][1]) for r in rows)

    def _disagreement(self, path) -> tuple[tuple[float | None, ...], bool]:
        """|Δ log p| of each token between the two models, as colour values; and whether some
        are missing only because an output is not computed yet."""
        cmp = self.compare
        key = (path[-1].id, self._view.fingerprint, cmp.view.fingerprint)
        cached = cmp._values.get(key)
        if cached is not None:
            return cached
        keys = [n.prefix_key for n in path]
        mine, theirs = self._view.probs_for(keys), cmp.view.probs_for(keys)
        values = tuple(disagreement(mine.get(k), theirs.get(k)) for k in keys)
        missing = any(k not in mine or k not in theirs for k in keys[1:])
        if not missing:
            if len(cmp._values) > 64:
                cmp._values.clear()
            cmp._values[key] = (values, missing)
        return values, missing

    # ------------------------------------------------------------------ branch diff
    def branch_diff(self, a_id: int, b_id: int) -> BranchDiff | None:
        """Branches a and b from their fork point (None when one of them is gone)."""
        view = self._view
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
        branches = self._view.branches()
        at = next((k for k, b in enumerate(branches) if b.focused), 0)
        return [(b.id, b.name) for b in branches[at + 1:] + branches[:at]]

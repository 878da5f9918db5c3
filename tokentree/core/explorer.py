"""The explorer: what each key intends, as store commands; the model's work as Tasks.

No urwid and no torch here. The UI thread calls the commands and `snapshot()`; it asks
`take_job()` for model work and runs each Task's `run` on the worker thread, then its
`finish`/`fail` back on the UI thread. Reads go through the TreeView (view.py), snapshots
are the Screen's (screen.py), the next job is the Planner's (planner.py), running and
recording it are jobs.py's.

Every command carries the session version its screen was built from: when another window
changed the session since, the store refuses it (StaleCommand) and nothing is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokentree.errors import ModelLoadError, StaleCommand, TokentreeError
from tokentree.prompts import save_prompt

from . import jobs
from .comparing import DISAGREEMENT, CompareCommands
from .constraining import ConstraintCommands
from .exploring import ExplorationCommands, _Fill, _Search
from .planner import BytesJob, Job, OutputsJob, Planner, SampleJob, Wants
from .prefetch import prefetch_jobs
from .screen import EngineInfo, Screen, ScreenState, selected_index
from .snapshot import LAYER_VIEWS, PROMPT_VIEWS, Snapshot
from .view import TreeView
from .worker import Task

log = logging.getLogger(__name__)
_MAX_BACKOFF = 30.0  # seconds between retries of a server that stopped answering


class Explorer(ExplorationCommands, CompareCommands, ConstraintCommands):
    """One session being explored. All methods run on the UI thread."""

    def __init__(self, store, session_id: int, *, config, layer_prob: bool = False,
                 model_name: str | None = None, engine=None) -> None:
        self.store = store
        self.session_id = session_id
        self.config = config
        self.layer_prob = layer_prob
        self.info = store.session(session_id)
        self.model_name = model_name or self.info.model_name
        self.vocab_key = self.info.vocab_key
        self.engine = None
        self.prompt_view = PROMPT_VIEWS[0]
        self.layer_view = LAYER_VIEWS[0]
        self.message: str | None = None  # one-line feedback for the last command
        self.error: str | None = None  # the last model error (load or compute)
        self._view = TreeView(store, session_id, vocab_key=self.vocab_key, fingerprint=self.info.fingerprint)
        self._screen = Screen(self._view, session_id=session_id, session_model=self.info.model_name,
                              tokens_to_show=config.display.tokens_to_show)
        self._planner = Planner(self._view)
        self._version = self._view.version()  # the session version the user last saw
        self._fresh_ms: dict[bytes, float] = {}  # nodes computed since the last move, with pass time
        self._queued_appends = 0  # `append` presses made while the node was still being computed
        self._selected_token: int | None = None  # selection by token id survives refreshes
        self._trail: dict[int, int] = {}  # branch id -> deepest node popped from (for walk forward)
        self._in_flight: Task | None = None
        self._requested: SampleJob | None = None  # model work a key asked for (g)
        self._fill: _Fill | None = None
        self._search: _Search | None = None
        self._run: tuple[str, int] | None = None  # the kind and group of the last repeating command
        self.sampler_on = False  # the table's sampler column
        self._prefetching: dict[bytes, Task] = {}  # child prefix key -> its speculative task
        self.prefetched = 0  # outputs a prefetch put in the cache (benchmarks report it)
        self._prefetch_failed: set[bytes] = set()  # never speculated on again (keys still may)
        self._retry_at: float | None = None  # when a failed server request may be retried
        self._backoff = 0.0  # seconds; doubles on each transient failure, 0 after a success
        self._init_constraints()  # regex constraints (r / R): their indexes and states
        if engine is not None:
            self.attach_engine(engine)

    # ------------------------------------------------------------------ engine
    @property
    def fingerprint(self) -> str:
        return self._view.fingerprint

    @property
    def busy(self) -> str | None:
        if self._fill is not None:
            return f"filling {self._fill.done}/{self._fill.total}"
        return self._in_flight.label if self._in_flight else None

    def attach_engine(self, engine) -> None:
        """Use `engine` from now on (UI thread). Its tokenizer must match the session's."""
        info = engine.info
        if info.vocab_key != self.vocab_key:
            raise ModelLoadError(
                f"{info.name} has a different tokenizer than this session's model "
                f"({self.info.model_name}); its cached tree can be browsed but not extended"
            )
        if info.fingerprint != self.fingerprint:
            # Another dtype or revision: outputs are cached per fingerprint.
            self._view.use_fingerprint(info.fingerprint)
            self._planner.model_changed()
            self._screen.model_changed()
        self.engine = engine
        self.error = None
        self._planner.whole_paths = engine.capabilities.prompt_logprobs
        self._planner.model_changed()
        if self.prompt_view == "influence" and not engine.capabilities.influence:
            self.prompt_view = "plain"
            self.message = f"influence view: {engine.capabilities.influence_note or 'not available'}"
        if not engine.capabilities.layer_lens and self.layer_view != "off":
            self.layer_view = "off"  # never draw a lens the model's own output contradicts
            self.message = f"layer views: {engine.capabilities.layer_lens_note}"

    def loading_job(self, load_engine: Callable[[], Any]) -> Task:
        """The task that loads the model in the worker and attaches it when done."""
        task = self._task(("load",), f"loading {self.model_name}", load_engine, self.attach_engine)
        self._in_flight = task
        return task

    def take_job(self) -> Task | None:
        """The next model work to run, or None when idle, busy, or without an engine."""
        if self._in_flight is not None or self.engine is None:
            return None
        if self._retry_at is not None:
            if time.monotonic() < self._retry_at:
                return None  # a server is down: wait out the back-off (the tree stays browsable)
            self._retry_at = None
        if (task := self._constraint_task()) is not None:
            return task  # a regex constraint's index, compiled once per pattern and vocabulary
        job, self._requested = self._requested or self._plan(), None
        if job is None:
            return self._compare_task()  # the compare model's work, after the main model's
        if isinstance(job, OutputsJob) and job.one_step and job.keys[-1] in self._prefetching:
            return None  # a prefetch is computing exactly this node: its result comes first
        engine = self.engine
        task = self._task(job.failure_key, job.label, lambda: jobs.execute(job, engine),
                          lambda result: self._record(job, result))
        self._in_flight = task
        return task

    def take_prefetch(self) -> Task | None:
        """A speculative job for a candidate's child, or None. Only when no key's own work
        is waiting: on a local model (one request at a time) only when idle, so a key's job
        waits at most for the one step in flight; on a server while fewer than
        `capabilities.parallel` prefetches are in flight (keys' jobs run beside them)."""
        engine = self.engine
        count = self.config.explore.prefetch
        if engine is None or count <= 0 or self._fill is not None or self._retry_at is not None:
            return None
        parallel = engine.capabilities.parallel
        if len(self._prefetching) >= parallel or (parallel == 1 and self._in_flight is not None):
            return None
        view = self._view
        with view.reading():
            path = view.path_of(self._focused_branch().node_id, keep=True)
            rows = self._screen.candidate_rows(path[-1])
            candidates = [r.token_id for r in rows if r.rank is not None]
            found = prefetch_jobs(view, path, candidates, self._selected_token, count, set(self._prefetching))
        job = next((j for j in found if j.keys[-1] not in self._prefetch_failed), None)
        if job is None:
            return None
        key = job.keys[-1]

        def done(result) -> None:
            self._prefetching.pop(key, None)
            jobs.record(job, result, self.store, self._view)  # cache rows only, never events
            self.prefetched += 1
            self._drain_queued_appends()

        def failed(exc: BaseException) -> None:
            # Not into the planner's failed set: a key's own job for this node must still run
            # (and say why it fails, or retry a server that is back).
            self._prefetching.pop(key, None)
            self._prefetch_failed.add(key)
            log.info("prefetch failed: %s", exc)

        task = Task(label="", run=lambda: jobs.execute(job, engine), finish=done, fail=failed)
        self._prefetching[key] = task
        return task

    def retry_due(self) -> bool:
        """A server request failed and its back-off time has passed: pump again."""
        return self._retry_at is not None and time.monotonic() >= self._retry_at

    def run_jobs_inline(self, limit: int = 1000) -> int:
        """Run every pending job on this thread (tests, scripts). Returns how many ran."""
        count = 0
        while count < limit and (task := self.take_job()) is not None:
            try:
                result = task.run()
            except Exception as exc:  # noqa: BLE001 -- same path as the worker
                task.fail(exc)
            else:
                task.finish(result)
            count += 1
        return count

    # ------------------------------------------------------------------ commands
    def cursor(self, step: int) -> None:
        self._run = None  # another key: the next append or pop starts a new undo step
        rows = self._screen.candidate_rows(self._focused_node())
        if not rows:
            return
        i = max(0, min(len(rows) - 1, selected_index(rows, self._selected_token) + step))
        self._selected_token = rows[i].token_id

    def append(self) -> None:
        view = self._view
        with view.reading():
            branch = self._focused_branch()
            node = view.node(branch.node_id)
            rows = self._screen.candidate_rows(node)
        if not rows:
            if (why := self._constraint_blocks()) is not None:
                self.message = why  # the regex constraint allows none of the candidates
                return
            if self.engine is None and self._in_flight is None:
                self.message = "no candidates: the model is not loaded"
                return
            # Queue it: it appends the top token as soon as the distribution arrives.
            self._queued_appends += 1
            self.message = f"waiting for the model ({self._queued_appends} append(s) queued)"
            return
        limit = self.engine.info.context_length if self.engine is not None else None
        if limit and node.depth >= limit:
            self.message = f"the model's context is full ({limit} tokens)"
            return
        token = rows[selected_index(rows, self._selected_token)].token_id
        new_id = self._command(self.store.append_token, branch.id, token, run="append")
        trail = self._trail.get(branch.id)
        if trail is not None and not view.on_path(new_id, node.depth + 1, trail):
            del self._trail[branch.id]  # left the remembered path
        queued = self._queued_appends
        self._moved()
        self._queued_appends = queued

    def pop(self) -> None:
        view = self._view
        with view.reading():
            branch = self._focused_branch()
            node = view.node(branch.node_id)
            if node.depth <= 1:
                self.message = "nothing to pop: the branch is one token long"
                return
        self._command(self.store.pop_token, branch.id, run="pop")
        trail = self._trail.get(branch.id)
        if trail is None or not view.on_path(node.id, node.depth, trail):
            self._trail[branch.id] = node.id
        self._moved()
        self._selected_token = node.token_id  # so `append` puts it right back

    def walk_forward(self) -> None:
        """Go down the explored tree to a leaf: back along the popped path if there is one."""
        with self._view.reading():
            branch = self._focused_branch()
            ahead = self._ahead(branch)
        if not ahead:
            self.message = "no explored path ahead"
            return
        self._command(self.store.move_branch, branch.id, ahead[-1].id)
        self._moved()
        self.message = f"walked forward {len(ahead)} token{'s' if len(ahead) != 1 else ''}"

    def _ahead(self, branch) -> list:
        """The explored nodes after the branch's tip, to a leaf: along the remembered (popped)
        path if there is one, else through the selected candidate's child, else the largest."""
        view = self._view
        node = view.node(branch.node_id)
        trail = self._trail.get(branch.id)
        if trail is not None and trail != node.id and view.on_path(node.id, node.depth, trail):
            leaf = trail
        else:
            children = view.children_of(node.id)
            if not children:
                return []
            rows = self._screen.candidate_rows(node)
            chosen = rows[selected_index(rows, self._selected_token)].token_id if rows else None
            by_token = {c.token_id: c for c in children}
            leaf = by_token[chosen].id if chosen in by_token else self._largest_child(children).id
        while children := view.children_of(leaf):
            leaf = self._largest_child(children).id
        return view.path_of(leaf)[node.depth:]

    def switch_branch(self, step: int) -> None:
        branches = self._view.branches()
        i = next((k for k, b in enumerate(branches) if b.focused), 0)
        j = (i + step) % len(branches)
        if j != i:
            self._command(self.store.focus_branch, branches[j].id)
            self._moved()

    def duplicate_branch(self) -> None:
        new_id = self._command(self.store.duplicate_branch, self._focused_branch().id)
        self._queued_appends = 0
        name = next((b.name for b in self._view.branches() if b.id == new_id), "")
        self.message = f"duplicated the branch as {name}" if name else "duplicated the branch"

    def remove_branch(self) -> None:
        with self._view.reading():
            if len(self._view.branches()) <= 1:
                self.message = "cannot remove the last branch"
                return
            branch = self._focused_branch()
        self._command(self.store.remove_branch, branch.id)
        self._moved()
        self.message = f"removed {branch.name} from the list (its nodes stay in the tree; u undoes)"

    def reset_branch(self) -> None:
        branch = self._focused_branch()
        if branch.node_id == branch.root_node_id:
            self.message = "already at the root prompt"
            return
        self._command(self.store.reset_branch, branch.id)
        self._moved()
        self.message = "reset to the root prompt (u undoes)"

    def undo(self) -> None:
        undone = self.store.undo(self.session_id, expected_version=self._version)
        self._run = None
        if undone:
            self._version += 1
        self._moved()
        self.message = f"undid: {undone.replace('_', ' ').replace('.', ' ')}" if undone else "nothing to undo"

    def cycle_prompt_view(self) -> None:
        view = PROMPT_VIEWS[(PROMPT_VIEWS.index(self.prompt_view) + 1) % len(PROMPT_VIEWS)]
        caps = self.engine.capabilities if self.engine is not None else None
        if view == "influence" and caps is not None and not caps.influence:
            self.message = f"influence view: {caps.influence_note or 'not available for this model'}"
            view = PROMPT_VIEWS[(PROMPT_VIEWS.index(view) + 1) % len(PROMPT_VIEWS)]
        if view == DISAGREEMENT and self.compare is None:
            view = PROMPT_VIEWS[0]  # it needs --compare-model (it is the last view)
        self.prompt_view = view

    def cycle_layer_view(self) -> None:
        if not self.layer_prob:
            self.message = "layer views are off: start tokentree with --layer_prob to enable them"
            return
        if self.engine is not None and not self.engine.capabilities.layer_lens:
            self.message = f"layer views: {self.engine.capabilities.layer_lens_note}"
            return
        self.layer_view = LAYER_VIEWS[(LAYER_VIEWS.index(self.layer_view) + 1) % len(LAYER_VIEWS)]

    def save_branch(self) -> Path | None:
        """Write the branch text to a new file in the saved-prompts dir; never overwrites."""
        view = self._view
        with view.reading():
            branch = self._focused_branch()
            ids = [n.token_id for n in view.path_of(branch.node_id)]
            pieces = view.pieces(ids)
        if len(pieces) < len(set(ids)):
            self.message = "cannot save yet: token text is still loading"
            return None
        text = b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
        try:
            path, created = save_prompt(text)
        except OSError as exc:
            self.message = f"cannot save the prompt: {exc.strerror or exc}"
            return None
        if not created:
            self.message = f"already saved as {path}"
            return path
        self._command(self.store.record_prompt_saved, branch.id, str(path))
        self.message = f"saved to {path}"
        return path

    def _command(self, command, *args, run: str | None = None, **kwargs):
        """Run a store command at the version the user last saw; each appends one event.
        `run`: the kind of a key that repeats (pop, append): a run of the same kind, with no
        other command in between, is one group, so one `u` takes the whole run back."""
        if run is not None:
            kwargs["group"] = self._run[1] if self._run and self._run[0] == run else self._version + 1
        result = command(self.session_id, *args, expected_version=self._version, **kwargs)
        self._version += 1
        self._run = (run, kwargs["group"]) if run is not None else None
        return result

    def _moved(self, *, keep_fill: bool = False, keep_search: bool = False) -> None:
        """The focused node changed: default selection, no queued appends, and the status
        bar reports the new node as cached unless a pass computes it now. Any move but the
        fill's own ends a fill; any but the search's own ends a search."""
        self._selected_token = None
        self._queued_appends = 0
        self._fresh_ms.clear()
        if not keep_fill:
            self._fill = None
        if not keep_search:
            self._search = None

    def _drain_queued_appends(self) -> None:
        while self._queued_appends > 0:
            if not self._screen.candidate_rows(self._focused_node()):
                return
            self._queued_appends -= 1
            try:
                self.append()
            except StaleCommand as exc:  # another window moved on: drop the queue, say why
                self._queued_appends = 0
                self.message = str(exc)

    # ------------------------------------------------------------------ reads
    def snapshot(self, *, with_tree: bool = False) -> Snapshot:
        snap = self._compared(self._screen.snapshot(self._state(), with_tree=with_tree))
        self._version = snap.version  # what the user now sees: the next command is built from it
        return snap

    def changed_elsewhere(self) -> bool:
        """Whether another window changed the session since this one's screen (one cheap read)."""
        return self._view.version() != self._version

    def tree_lines(self):
        return self._screen.tree_lines()

    def _state(self) -> ScreenState:
        info = self.engine.info if self.engine is not None else None
        return ScreenState(
            prompt_view=self.prompt_view, layer_view=self.layer_view, layer_prob=self.layer_prob,
            selected_token=self._selected_token, message=self.message, error=self.error, busy=self.busy,
            engine=EngineInfo(info.name, info.device, info.dtype) if info is not None else None,
            fresh_ms=self._fresh_ms,
            cancellable=self._fill is not None,
            sampler=self.config.sampling if self.sampler_on else None,
            search=self._search_line(),
        )

    def _search_line(self) -> str | None:
        found = self._search
        if found is None:
            return None
        if not found.matches:
            return f'search "{found.query}": no match'
        return f'search "{found.query}": match {found.index + 1} of {len(found.matches)}'

    def _focused_branch(self):
        branches = self._view.branches()
        return next((b for b in branches if b.focused), branches[0])

    def _focused_node(self):
        return self._view.node(self._focused_branch().node_id)

    def _largest_child(self, children):
        sizes = self._view.subtree_sizes([c.id for c in children])
        return max(children, key=lambda c: (sizes.get(c.id, 0), -c.id))

    # ------------------------------------------------------------------ model work
    def _wants(self) -> Wants:
        caps = self.engine.capabilities
        layers_on = self.layer_view != "off" and self.layer_prob and caps.layer_lens
        return Wants(influence=self.prompt_view == "influence" and caps.influence,
                     lens_count=self.config.display.tokens_to_show if layers_on else 0)

    def _plan(self) -> Job | None:
        view, screen = self._view, self._screen
        with view.reading():
            branches = view.branches()
            focused = next((b for b in branches if b.focused), branches[0])
            path = view.path_of(focused.node_id, keep=True)
            wants = self._wants()
            shown = [r.token_id for r in screen.candidate_rows(path[-1])] if wants.lens_count else []
            if job := self._planner.focused_job(path, wants, shown):
                return job
            screen.look_up_shown_ids(path)
            return self._planner.background_job(branches, focused.id)

    def _record(self, job: Job, result) -> None:
        fresh = jobs.record(job, result, self.store, self._view)
        if isinstance(job, OutputsJob):
            for key in fresh:
                self._fresh_ms[key] = result.ms
            self._drain_queued_appends()
            self._advance_fill()
        elif isinstance(job, SampleJob):
            self._record_samples(job, result)
        elif isinstance(job, BytesJob) and set(job.ids).intersection(self._view.missing_byte_ids()):
            self._planner.failed.add(job.failure_key)  # the tokenizer has no bytes for these

    def _task(self, key: tuple, label: str, run: Callable[[], Any], apply: Callable[[Any], None]) -> Task:
        def finish(result: Any) -> None:
            self._in_flight = None
            if self._backoff:  # the server answers again
                self._backoff = 0.0
                self.error = None
                self.message = "the server answers again"
            try:
                apply(result)
            except TokentreeError as exc:
                self._planner.failed.add(key)
                self.error = str(exc)

        def fail(exc: BaseException) -> None:
            self._in_flight = None
            if getattr(exc, "transient", False) and key != ("load",):
                # Down, timed out, 5xx: retry later, with back-off; nothing recorded is lost.
                self._backoff = min(_MAX_BACKOFF, max(1.0, self._backoff * 2))
                self._retry_at = time.monotonic() + self._backoff
                self.error = f"{exc} (retrying in {self._backoff:.0f} s; the tree stays browsable)"
                return
            self._planner.failed.add(key)
            log.error("%s failed", label, exc_info=exc)
            self.error = f"{label} failed: {exc}"

        return Task(label=label, run=run, finish=finish, fail=fail)

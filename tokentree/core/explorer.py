"""The explorer core: one session, its version and the stale-command guard, the focused
branch and node, the commands every session has (move, append, pop, branches, undo, views),
the command plumbing and the job queue. Everything else is a feature (tokentree/features/,
core/feature.py says how they hook in): the core only routes.

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
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from tokentree.commands import COMMANDS
from tokentree.errors import ModelLoadError, StaleCommand, TokentreeError

from . import jobs
from .feature import Feature
from .models import ModelSlot
from .planner import BytesJob, Job, OutputsJob, Planner, Wants
from .screen import EngineInfo, Screen, ScreenState, selected_index
from .snapshot import LAYER_VIEWS, PROMPT_VIEWS, Snapshot
from .view import TreeView
from .worker import Task

log = logging.getLogger(__name__)


_QUEUED = "waiting for the model ("  # the message while appends wait for a distribution


class Explorer:
    """One session being explored. All methods run on the UI thread.

    `features`: the feature classes to run (default: every feature of tokentree.features);
    each is reachable as `explorer.features.<name>`."""

    def __init__(self, store, session_id: int, *, config, layer_prob: bool = False,
                 model_name: str | None = None, engine=None, features: list[type] | None = None) -> None:
        self.store = store
        self.session_id = session_id
        self.config = config
        self.layer_prob = layer_prob
        self.info = store.session(session_id)
        self.model_name = model_name or self.info.model_name
        self.vocab_key = self.info.vocab_key
        self.prompt_view = PROMPT_VIEWS[0]
        self.layer_view = LAYER_VIEWS[0]
        self.message: str | None = None  # one-line feedback for the last command
        self.error: str | None = None  # the last model error (load or compute)
        self.view = TreeView(store, session_id, vocab_key=self.vocab_key, fingerprint=self.info.fingerprint)
        self.screen = Screen(self.view, session_id=session_id, session_model=self.info.model_name,
                             tokens_to_show=config.display.tokens_to_show)
        self.main = ModelSlot(self.model_name, self.view, Planner(self.view))
        self.models: list[ModelSlot] = [self.main]  # a compare model adds its own
        self.selected_token: int | None = None  # selection by token id survives refreshes
        self._version = self.view.version()  # the session version the user last saw
        self._fresh_ms: dict[bytes, float] = {}  # nodes computed since the last move, with pass time
        self._queued_appends = 0  # `append` presses made while the node was still being computed
        self._trail: dict[int, int] = {}  # branch id -> deepest node popped from (for walk forward)
        self._in_flight: Task | None = None
        self._run: tuple[str, int] | None = None  # the kind and group of the last repeating command
        if features is None:
            from tokentree.features.standard import FEATURES
            features = FEATURES
        self._features: list[Feature] = [cls(self) for cls in features]
        self.features = SimpleNamespace(**{f.name: f for f in self._features})
        self.screen.mask = self.token_filter
        if engine is not None:
            self.attach_engine(engine)

    # ------------------------------------------------------------------ engine
    @property
    def engine(self):
        return self.main.engine

    @property
    def fingerprint(self) -> str:
        return self.view.fingerprint

    @property
    def version(self) -> int:
        """The session version the user last saw (the next command is built from it)."""
        return self._version

    @property
    def busy(self) -> str | None:
        return self._state().busy

    @property
    def in_flight(self):  # the Task of the explorer's queue on the worker now, or None
        return self._in_flight

    @property
    def idle(self) -> bool:
        """No task of the explorer's is on the worker."""
        return self._in_flight is None

    @property
    def running(self) -> bool:
        """A feature runs a multi-step command that esc stops (a fill): speculation waits."""
        return self._state().cancellable

    def targets(self) -> dict[str, object]:
        """The objects the command registry's targets name: the core and each feature."""
        return {"explorer": self, **{f.name: f for f in self._features}}

    def handler(self, name: str) -> Callable[[], object]:
        """The registry's command `name` bound to the core or its feature (scripts, tests;
        the app's own commands need the app)."""
        command = next((c for c in COMMANDS if c.name == name), None)
        if command is None:
            raise KeyError(f"no command {name!r} in the registry")
        return command.handler(self.targets())

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
            self.view.use_fingerprint(info.fingerprint)
            self.screen.model_changed()
        self.main.attach(engine)
        self.error = None
        for f in self._features:
            f.attached(engine)

    def loading_job(self, load_engine: Callable[[], Any]) -> Task:
        """The task that loads the model in the worker and attaches it when done."""
        task = self.model_task(self.main, ("load",), f"loading {self.model_name}", load_engine, self.attach_engine)
        self._in_flight = task
        return task

    def add_model(self, slot: ModelSlot, *, instead_of: ModelSlot | None = None) -> None:
        """Another model (a compare model) whose work the core's queue and back-off run."""
        if instead_of in self.models:
            self.models.remove(instead_of)
        self.models.append(slot)

    # ------------------------------------------------------------------ the job queue
    def take_job(self) -> Task | None:
        """The next model work to run, or None when idle, busy, or without an engine."""
        if self._in_flight is not None or self.engine is None:
            return None
        if self.main.waiting():
            return None  # a server is down: wait out the back-off (the tree stays browsable)
        task = next((t for f in self._features if (t := f.next_task(False)) is not None), None)
        if task is None and (job := self._plan()) is not None:
            if isinstance(job, OutputsJob) and job.one_step and job.keys[-1] in self.main.prefetching:
                return None  # a prefetch is computing exactly this node: its result comes first
            engine = self.engine
            task = self.model_task(self.main, job.failure_key, job.label, lambda: jobs.execute(job, engine),
                                   lambda result: self._record(job, result))
        if task is None:
            task = next((t for f in self._features if (t := f.next_task(True)) is not None), None)
        self._in_flight = task
        return task

    def take_prefetch(self) -> Task | None:
        """A speculative task (a feature's), or None. Runs beside the key's own work."""
        return next((t for f in self._features if (t := f.speculate()) is not None), None)

    def model_task(self, slot: ModelSlot, key: tuple, label: str, run: Callable[[], Any],
                   apply: Callable[[Any], None]) -> Task:
        """A task on `slot`'s model that the worker runs: it frees the queue when done, and a
        transient failure (down, timed out, 5xx) backs the slot off instead of failing."""
        def finish(result: Any) -> None:
            if slot.answered():  # the server answers again
                self.error = None
                self.message = f"{slot.who}the server answers again"
            try:
                apply(result)
            except TokentreeError as exc:
                slot.planner.failed.add(key)
                self.error = f"{slot.who}{exc}"

        def fail(exc: BaseException) -> None:
            if getattr(exc, "transient", False) and key != ("load",):
                wait = slot.back_off()  # nothing recorded is lost; retried after the wait
                self.error = f"{slot.who}{exc} (retrying in {wait:.0f} s; the tree stays browsable)"
                return
            slot.planner.failed.add(key)
            log.error("%s%s failed", slot.who, label, exc_info=exc)
            self.error = f"{slot.who}{label} failed: {exc}"

        return self.task(label, run, finish, fail)

    def task(self, label: str, run: Callable[[], Any], finish: Callable[[Any], None],
             fail: Callable[[BaseException], None]) -> Task:
        """A feature's task for the queue (returned from its next_task): the queue is free
        again before `finish` or `fail` runs."""
        def done(result: Any) -> None:
            self._in_flight = None
            finish(result)

        def failed(exc: BaseException) -> None:
            self._in_flight = None
            fail(exc)

        return Task(label=label, run=run, finish=done, fail=failed)

    def retry_due(self) -> bool:
        """A server request failed and its back-off time has passed: pump again."""
        return any(slot.retry_due() for slot in self.models)

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

    def _wants(self) -> Wants:
        caps = self.engine.capabilities
        layers_on = self.layer_view != "off" and self.layer_prob and caps.layer_lens
        return Wants(influence=self.prompt_view == "influence" and caps.influence,
                     lens_count=self.config.display.tokens_to_show if layers_on else 0)

    def _plan(self) -> Job | None:
        view, screen = self.view, self.screen
        with view.reading():
            branches = view.branches()
            focused = next((b for b in branches if b.focused), branches[0])
            path = view.path_of(focused.node_id, keep=True)
            wants = self._wants()
            shown = [r.token_id for r in screen.candidate_rows(path[-1])] if wants.lens_count else []
            if job := self.main.planner.focused_job(path, wants, shown):
                return job
            screen.look_up_shown_ids(path)
            return self.main.planner.background_job(branches, focused.id)

    def _record(self, job: Job, result) -> None:
        fresh = jobs.record(job, result, self.store, self.view)
        if isinstance(job, OutputsJob):
            for key in fresh:
                self._fresh_ms[key] = result.ms
        elif isinstance(job, BytesJob) and set(job.ids).intersection(self.view.missing_byte_ids()):
            self.main.planner.failed.add(job.failure_key)  # the tokenizer has no bytes for these
        self.outputs_recorded(job, result)

    def outputs_recorded(self, job: Job, result) -> None:
        """The main model's outputs for `job` are in the cache (its planned work's or a
        prefetch's): queued appends go on, and every feature is told (a fill that waits for
        exactly that node goes on)."""
        self._append_queued()
        for feature in self._features:
            feature.recorded(job, result)

    def _append_queued(self) -> None:
        while self._queued_appends > 0:
            if not self.screen.candidate_rows(self.focused_node()):
                self._say_queued()
                return
            self._queued_appends -= 1
            try:
                self.append()
            except StaleCommand as exc:  # another window moved on: drop the queue, say why
                self._queued_appends = 0
                self.message = str(exc)
                return
        if self.message is not None and self.message.startswith(_QUEUED):
            self.message = None  # every queued append is done: the count would be stale

    def _say_queued(self) -> None:
        self.message = f"{_QUEUED}{self._queued_appends} append(s) queued)"

    # ------------------------------------------------------------------ plumbing for commands
    def command(self, command, *args, run: str | None = None, **kwargs):
        """Run a store command at the version the user last saw; each appends one event.
        `run`: the kind of a key that repeats (pop, append): a run of the same kind, with no
        other command in between, is one group, so one `u` takes the whole run back."""
        if run is not None:
            kwargs["group"] = self._run[1] if self._run and self._run[0] == run else self._version + 1
        result = command(self.session_id, *args, expected_version=self._version, **kwargs)
        self._version += 1
        self._run = (run, kwargs["group"]) if run is not None else None
        return result

    def command_many(self, command, *args, **kwargs):
        """A store command that appends several events and returns (result, new version)."""
        result, self._version = command(self.session_id, *args, expected_version=self._version, **kwargs)
        self._run = None
        return result

    def next_group(self) -> int:
        """The group of a command several events make (they undo as one)."""
        return self._version + 1

    def moved(self, by: Feature | None = None) -> None:
        """The focused node changed: default selection, no queued appends, and the status
        bar reports the new node as cached unless a pass computes it now; every feature is
        told (a fill ends on any move but its own)."""
        self.selected_token = None
        self._queued_appends = 0
        self._fresh_ms.clear()
        for feature in self._features:
            feature.moved(by)

    @property
    def queued_appends(self) -> int:
        return self._queued_appends

    def forget_queued_appends(self) -> None:
        self._queued_appends = 0

    def focused_branch(self):
        branches = self.view.branches()
        return next((b for b in branches if b.focused), branches[0])

    def focused_node(self):
        return self.view.node(self.focused_branch().node_id)

    def candidate_rows(self, node):
        return self.screen.candidate_rows(node)

    def token_filter(self, node, out):
        """What may follow `node` on the focused branch (a feature's Mask), or None."""
        return next((m for f in self._features if (m := f.token_filter(node, out)) is not None), None)

    def stop_ids(self) -> frozenset[int]:
        """The ids a fill or a sample stops after: the model's (`[explore] fill_stop`) and the features'."""
        ids = self.engine.stop_ids(self.config.explore.fill_stop)
        for f in self._features:
            ids = f.stop_ids(ids)
        return ids

    def sampling_filter(self, path):
        return next((m for f in self._features if (m := f.sampling_filter(path)) is not None), None)

    def remember_popped(self, branch_id: int, tip) -> None:
        """The branch left `tip` backwards: walk_forward (and `]`) come back along it."""
        trail = self._trail.get(branch_id)
        if trail is None or not self.view.on_path(tip.id, tip.depth, trail):
            self._trail[branch_id] = tip.id

    def went_to(self, branch_id: int, node_id: int, depth: int) -> None:
        """The branch reached `node_id`: a remembered path it left is forgotten."""
        trail = self._trail.get(branch_id)
        if trail is not None and not self.view.on_path(node_id, depth, trail):
            del self._trail[branch_id]

    def ahead(self, branch) -> list:
        """The explored nodes after the branch's tip, to a leaf: along the remembered (popped)
        path if there is one, else through the selected candidate's child, else the largest."""
        view = self.view
        node = view.node(branch.node_id)
        trail = self._trail.get(branch.id)
        if trail is not None and trail != node.id and view.on_path(node.id, node.depth, trail):
            leaf = trail
        else:
            children = view.children_of(node.id)
            if not children:
                return []
            rows = self.screen.candidate_rows(node)
            chosen = rows[selected_index(rows, self.selected_token)].token_id if rows else None
            by_token = {c.token_id: c for c in children}
            leaf = by_token[chosen].id if chosen in by_token else self._largest_child(children).id
        while children := view.children_of(leaf):
            leaf = self._largest_child(children).id
        return view.path_of(leaf)[node.depth:]

    def _largest_child(self, children):
        sizes = self.view.subtree_sizes([c.id for c in children])
        return max(children, key=lambda c: (sizes.get(c.id, 0), -c.id))

    # ------------------------------------------------------------------ commands
    def cursor(self, step: int) -> None:
        self._run = None  # another key: the next append or pop starts a new undo step
        rows = self.screen.candidate_rows(self.focused_node())
        if not rows:
            return
        i = max(0, min(len(rows) - 1, selected_index(rows, self.selected_token) + step))
        self.selected_token = rows[i].token_id

    def append(self) -> None:
        view = self.view
        with view.reading():
            branch = self.focused_branch()
            node = view.node(branch.node_id)
            rows = self.screen.candidate_rows(node)
        if not rows:
            if (why := self._filter_blocks(node)) is not None:
                self.message = why  # e.g. the regex constraint allows none of the candidates
                return
            if self.engine is None and self._in_flight is None:
                self.message = "no candidates: the model is not loaded"
                return
            # Queue it: it appends the top token as soon as the distribution arrives.
            self._queued_appends += 1
            self._say_queued()
            return
        limit = self.engine.info.context_length if self.engine is not None else None
        if limit and node.depth >= limit:
            self.message = f"the model's context is full ({limit} tokens)"
            return
        token = rows[selected_index(rows, self.selected_token)].token_id
        new_id = self.command(self.store.append_token, branch.id, token, run="append")
        self.went_to(branch.id, new_id, node.depth + 1)
        queued = self._queued_appends
        self.moved()
        self._queued_appends = queued

    def _filter_blocks(self, node) -> str | None:
        """Why an append cannot go on under the branch's token filter (None: it can, or it
        waits for the model)."""
        out = self.view.outputs_for([node.prefix_key]).get(node.prefix_key)
        mask = self.token_filter(node, out)
        if mask is None or not mask.filters or (out is None and mask.position is not None):
            return None
        return mask.blocked()

    def pop(self) -> None:
        view = self.view
        with view.reading():
            branch = self.focused_branch()
            node = view.node(branch.node_id)
            if node.depth <= 1:
                self.message = "nothing to pop: the branch is one token long"
                return
        self.command(self.store.pop_token, branch.id, run="pop")
        self.remember_popped(branch.id, node)
        self.moved()
        self.selected_token = node.token_id  # so `append` puts it right back

    def walk_forward(self) -> None:
        """Go down the explored tree to a leaf: back along the popped path if there is one."""
        with self.view.reading():
            branch = self.focused_branch()
            ahead = self.ahead(branch)
        if not ahead:
            self.message = "no explored path ahead"
            return
        self.command(self.store.move_branch, branch.id, ahead[-1].id)
        self.moved()
        self.message = f"walked forward {len(ahead)} token{'s' if len(ahead) != 1 else ''}"

    def undo(self) -> None:
        undone = self.store.undo(self.session_id, expected_version=self._version)
        self._run = None
        if undone:
            self._version += 1
        self.moved()
        self.message = f"undid: {undone.replace('_', ' ').replace('.', ' ')}" if undone else "nothing to undo"

    def cancel(self) -> bool:
        """esc: the first feature with something to stop stops it. False: nothing to stop."""
        return any(f.cancel() for f in self._features)

    # ------------------------------------------------------------------ reads
    def snapshot(self, *, with_tree: bool = False) -> Snapshot:
        snap = self.screen.snapshot(self._state(), with_tree=with_tree)
        for feature in self._features:
            snap = feature.snapshot(snap)
        self._version = snap.version  # what the user now sees: the next command is built from it
        return snap

    def changed_elsewhere(self) -> bool:
        """Whether another window changed the session, or another session added nodes it
        shares (one cheap read; until asked, keys trust what the view holds)."""
        self.view.recheck()
        self.view.nodes_added = False
        return self.view.version() != self._version or self.view.nodes_added

    def tree_lines(self):
        return self.screen.tree_lines()

    def _state(self) -> ScreenState:
        info = self.engine.info if self.engine is not None else None
        state = ScreenState(
            prompt_view=self.prompt_view, layer_view=self.layer_view, layer_prob=self.layer_prob,
            selected_token=self.selected_token, message=self.message, error=self.error,
            busy=self._in_flight.label if self._in_flight else None,
            engine=EngineInfo(info.name, info.device, info.dtype, self.engine.capabilities.remote)
            if info is not None else None,
            fresh_ms=self._fresh_ms,
        )
        for feature in self._features:
            state = feature.screen_state(state)
        return state

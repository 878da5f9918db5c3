"""Fill (f): append the top candidate `fill_tokens` times or up to a stop token, as the
model computes each node: one undoable step. esc stops it, keeping what it appended; any
move but its own ends it. Under a regex constraint it appends the top allowed token."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tokentree.core.feature import Feature
from tokentree.errors import StaleCommand


@dataclass
class _Run:
    """A fill in progress: appends of the top candidate that undo as one group."""

    branch_id: int
    total: int
    stop_ids: frozenset[int]
    done: int = 0
    group: int | None = None  # the version of its first append


class Fill(Feature):
    name = "fill"

    def __init__(self, core) -> None:
        super().__init__(core)
        self._run: _Run | None = None

    @property
    def running(self) -> bool:
        return self._run is not None

    def start(self) -> None:
        core = self.core
        if core.engine is None:
            core.message = "cannot fill yet: the model is not loaded"
            return
        explore = core.config.explore
        self._run = _Run(core.focused_branch().id, explore.fill_tokens, core.stop_ids())
        self._advance()

    # ------------------------------------------------------------------ hooks
    def moved(self, by) -> None:
        if by is not self:
            self._run = None

    def recorded(self, job, result) -> None:
        self._advance()

    def cancel(self) -> bool:
        if self._run is None:
            return False
        done, self._run = self._run.done, None
        self.core.message = f"fill stopped after {done} token{'s' if done != 1 else ''} (u takes them back)"
        return True

    def screen_state(self, state):
        if self._run is None:
            return state
        return replace(state, busy=f"filling {self._run.done}/{self._run.total}", cancellable=True)

    # ------------------------------------------------------------------ the appends
    def _advance(self) -> None:
        """Append the top candidate while the fill lasts and the tip's distribution is known."""
        run, core = self._run, self.core
        view = core.view
        while run is not None and run is self._run:
            with view.reading():
                branch = core.focused_branch()
                node = view.node(branch.node_id)
                out = view.outputs_for([node.prefix_key]).get(node.prefix_key)
            if branch.id != run.branch_id:
                self._run = None  # another branch has the focus: the fill is over
                return
            if out is None:
                return  # the model is computing it: `recorded` calls back
            limit = core.engine.info.context_length
            if limit and node.depth >= limit:
                self._end(f"the model's context is full ({limit} tokens)")
                return
            token, why = self._choice(node, out)
            if token is None:
                if run.done:
                    self._end(why)
                else:
                    self._run, core.message = None, f"nothing to fill: {why}"
                return
            group = run.group if run.group is not None else core.next_group()
            try:
                core.command(core.store.append_token, branch.id, token, group=group)
            except StaleCommand as exc:
                self._run = None
                core.message = str(exc)
                return
            run.group, run.done = group, run.done + 1
            core.moved(self)
            if token in run.stop_ids:
                self._end("reached a stop token")
            elif run.done >= run.total:
                self._end()

    def _choice(self, node, out) -> tuple[int | None, str | None]:
        """The most likely token the branch's token filter allows (why not, when none)."""
        with self.core.view.reading():
            mask = self.core.token_filter(node, out)
        if mask is None or not mask.filters:
            return out.next.top_ids[0], None
        token = next((t for t in out.next.top_ids if mask.allows(t)), None)
        return (token, None) if token is not None else (None, mask.blocked())

    def _end(self, why: str | None = None) -> None:
        done, self._run = self._run.done, None
        self.core.message = (f"filled {done} token{'s' if done != 1 else ''}" + (f": {why}" if why else "")
                             + " (u takes them back)")

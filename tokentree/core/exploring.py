"""The exploration commands of the Explorer: fill, sample, fork points, counterfactuals,
rename, search and the sampler column. A mixin, so explorer.py keeps the core commands and
the model glue; these use the same helpers (`_command`, `_moved`, the view and the screen).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from tokentree.errors import StaleCommand
from tokentree.sampling import describe

from .navigate import is_fork, next_fork, search_matches
from .planner import SampleJob


@dataclass
class _Fill:
    """A fill in progress: appends of the top candidate that undo as one group."""

    branch_id: int
    total: int
    stop_ids: frozenset[int]
    done: int = 0
    group: int | None = None  # the version of its first append


@dataclass
class _Search:
    query: str
    matches: list[int]  # node ids, in tree order
    index: int = -1
    branch_id: int | None = None  # the branch this search made to show its matches


class ExplorationCommands:
    """Mixed into Explorer; every method runs on the UI thread."""

    def fill(self) -> None:
        """Append the top candidate `fill_tokens` times or to a stop token: one undoable step.
        Runs as the model computes each node; esc (`cancel`) stops it, keeping what it appended."""
        if self.engine is None:
            self.message = "cannot fill yet: the model is not loaded"
            return
        explore = self.config.explore
        self._fill = _Fill(self._focused_branch().id, explore.fill_tokens, self.engine.stop_ids(explore.fill_stop))
        self._advance_fill()

    def cancel(self) -> bool:
        """Stop a running fill (what it appended stays); else forget the search. False: nothing to stop."""
        if self._fill is not None:
            done = self._fill.done
            self._fill = None
            self.message = f"fill stopped after {done} token{'s' if done != 1 else ''} (u takes them back)"
            return True
        if self._search is not None:
            self._search = None
            return True
        return False

    def _advance_fill(self) -> None:
        """Append the top candidate while the fill lasts and the tip's distribution is known."""
        fill, view = self._fill, self._view
        while fill is not None and fill is self._fill:
            with view.reading():
                branch = self._focused_branch()
                node = view.node(branch.node_id)
                out = view.outputs_for([node.prefix_key]).get(node.prefix_key)
            if branch.id != fill.branch_id:
                self._fill = None  # another branch has the focus: the fill is over
                return
            if out is None:
                return  # the model is computing it: `_record` calls back
            limit = self.engine.info.context_length
            if limit and node.depth >= limit:
                self._end_fill(f"the model's context is full ({limit} tokens)")
                return
            token, why = self._fill_choice(node, out)  # the top candidate a regex constraint allows
            if token is None:
                if fill.done:
                    self._end_fill(why)
                else:
                    self._fill, self.message = None, f"nothing to fill: {why}"
                return
            group = fill.group if fill.group is not None else self._version + 1
            try:
                self._command(self.store.append_token, branch.id, token, group=group)
            except StaleCommand as exc:
                self._fill = None
                self.message = str(exc)
                return
            fill.group, fill.done = group, fill.done + 1
            self._moved(keep_fill=True)
            if token in fill.stop_ids:
                self._end_fill("reached a stop token")
            elif fill.done >= fill.total:
                self._end_fill()

    def _end_fill(self, why: str | None = None) -> None:
        done = self._fill.done
        self._fill = None
        self.message = f"filled {done} token{'s' if done != 1 else ''}" + (f": {why}" if why else "") + " (u takes them back)"

    def sample(self) -> None:
        """Draw `sample_count` continuations of `fill_tokens` tokens with the [sampling]
        settings, in the worker; each becomes a new branch ("sample 1", ...)."""
        if self.engine is None:
            self.message = "cannot sample yet: the model is not loaded"
            return
        if self._constraint_refuses_sampling():
            return
        self._fill = None
        view, explore, settings = self._view, self.config.explore, self.config.sampling
        with view.reading():
            branch = self._focused_branch()
            path = view.path_of(branch.node_id)
        seed = settings.seed if settings.seed >= 0 else random.randrange(2**31)
        self._requested = SampleJob(
            branch_id=branch.id, node_id=branch.node_id, key=path[-1].prefix_key,
            tokens=tuple(n.token_id for n in path),
            count=explore.sample_count, steps=explore.fill_tokens, settings=settings, seed=seed,
            stop_ids=self.engine.stop_ids(explore.fill_stop), known_bytes=view.known_byte_ids())
        self.message = f"sampling {explore.sample_count} continuations ({describe(settings)}, seed {seed})"

    def _record_samples(self, job: SampleJob, result) -> None:
        branch = self._focused_branch()
        if branch.id != job.branch_id or branch.node_id != job.node_id:
            self.message = "the branch moved while sampling: nothing recorded (press g again)"
            return
        names = self._sample_names(job.count)
        settings = {k: getattr(job.settings, k) for k in ("temperature", "top_k", "top_p", "min_p")}
        try:
            _, self._version = self.store.record_samples(
                self.session_id, job.branch_id, settings=settings, seed=job.seed, names=names, steps=job.steps,
                continuations=[[token for token, _ in c] for c in result.continuations],
                expected_version=self._version)
        except StaleCommand as exc:
            self.message = str(exc)
            return
        self._moved()
        self.message = f"sampled {job.count} continuations as {names[0]} .. {names[-1]} (seed {job.seed}; u removes them)"

    def _sample_names(self, count: int) -> list[str]:
        taken = [int(m.group(1)) for b in self._view.branches() if (m := re.fullmatch(r"sample (\d+)", b.name))]
        first = max(taken, default=0) + 1
        return [f"sample {first + i}" for i in range(count)]

    def fork_point(self, step: int) -> None:
        """Move the branch back (-1) or forward (+1, along the explored path) to the next node
        where the model was unsure (normalized entropy above `fork_entropy`) or the tree forks."""
        view = self._view
        threshold = self.config.explore.fork_entropy
        with view.reading():
            branch = self._focused_branch()
            path = view.path_of(branch.node_id)
            line = path + (self._ahead(branch) if step > 0 else [])
            outs = view.outputs_for([n.prefix_key for n in line])
            kids = view.children_counts([n.id for n in line])

            def fork(node) -> bool:
                out = outs.get(node.prefix_key)
                return is_fork(out.next.norm_entropy if out else None, kids.get(node.id, 0), threshold)

            k = next_fork(line, len(path) - 1, step, fork)
        if k is None:
            self.message = f"no fork point {'ahead' if step > 0 else 'before this'} (fork_entropy {threshold})"
            return
        target, tip = line[k], path[-1]
        self._command(self.store.move_branch, branch.id, target.id)
        if step < 0:
            trail = self._trail.get(branch.id)
            if trail is None or not view.on_path(tip.id, tip.depth, trail):
                self._trail[branch.id] = tip.id  # `]` and shift+right come back along this path
        self._moved()
        out = outs.get(target.prefix_key)
        why = f"entropy {out.next.norm_entropy:.2f}" if out and out.next.norm_entropy > threshold else "the tree forks"
        moved = abs(target.depth - tip.depth)
        self.message = f"fork point {moved} token{'s' if moved != 1 else ''} {'ahead' if step > 0 else 'back'}: {why}"

    def counterfactual(self, step: int) -> None:
        """Replace the last token by the next (+1) or previous (-1) candidate at its position:
        a pop and an append that undo as one step."""
        view = self._view
        with view.reading():
            branch = self._focused_branch()
            node = view.node(branch.node_id)
            if node.parent_id is None:
                self.message = "nothing to replace: the branch is one token long"
                return
            rows = self._screen.candidate_rows(view.node(node.parent_id))
            ids = [r.token_id for r in rows]
            j = ids.index(node.token_id) + step if node.token_id in ids else -1
            if not 0 <= j < len(rows):
                self.message = f"no {'next' if step > 0 else 'previous'} candidate at this position"
                return
        group = self._version + 1
        self._command(self.store.pop_token, branch.id, group=group)
        new_id = self._command(self.store.append_token, branch.id, rows[j].token_id, group=group)
        trail = self._trail.get(branch.id)
        if trail is not None and not view.on_path(new_id, node.depth, trail):
            del self._trail[branch.id]
        self._moved()
        self.message = f"replaced {rows[j - step].text} with {rows[j].text} (rank {rows[j].rank or '?'}; u undoes)"

    @property
    def focused_branch_name(self) -> str:
        return self._focused_branch().name

    def rename_branch(self, name: str) -> None:
        branch = self._focused_branch()
        self._command(self.store.rename_branch, branch.id, name)
        self.message = f"renamed {branch.name} to {name.strip()}"

    def search(self, query: str) -> None:
        """Find `query` in the text of every explored path; jump to the first match."""
        query = query.strip()
        if not query:
            self._search = None
            return
        view = self._view
        with view.reading():
            nodes = view.session_tree()
            pieces = view.pieces(n.token_id for n in nodes)
        self._search = _Search(query, search_matches(nodes, pieces, query))
        if not self._search.matches:
            self.message = f'no match for "{query}" in this session'
            return
        self.search_step(1)

    def search_step(self, step: int) -> None:
        """Jump to the next (+1) or previous (-1) match of the last search."""
        found = self._search
        if found is None or not found.matches:
            self.message = "no search: press / to search"
            return
        found.index = (found.index + step) % len(found.matches)
        node_id = found.matches[found.index]
        branches = self._view.branches()
        at = next((b for b in branches if b.node_id == node_id), None)
        if at is not None:
            if not at.focused:
                self._command(self.store.focus_branch, at.id)
        elif found.branch_id in {b.id for b in branches}:
            self._command(self.store.move_branch, found.branch_id, node_id)
            if not next(b for b in branches if b.id == found.branch_id).focused:
                self._command(self.store.focus_branch, found.branch_id)
        else:  # a branch of its own at the match, made once per search
            group = self._version + 1
            found.branch_id = self._command(self.store.duplicate_branch, self._focused_branch().id, group=group)
            self._command(self.store.move_branch, found.branch_id, node_id, group=group)
        self._moved(keep_search=True)

    def toggle_sampler(self) -> None:
        self.sampler_on = not self.sampler_on

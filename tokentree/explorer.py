"""The application core: commands become store events; model work becomes Jobs.

No urwid and no torch here. The UI thread calls the commands and `snapshot()`; it asks
`take_job()` for model work and runs each Job's `run` on the worker thread, then its
`finish`/`fail` back on the UI thread. Only `finish`/`fail` and the commands touch the store.
The engine is asked only for nodes whose output is not cached under the model fingerprint.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tokentree.errors import ModelLoadError, TokentreeError
from tokentree.jobs import Job
from tokentree.outputs import Analysis, NodeOutput
from tokentree.paths import saved_prompts_dir
from tokentree.snapshot import (
    LAYER_VIEWS,
    PROMPT_VIEWS,
    BranchRow,
    CandidateRow,
    PromptToken,
    Snapshot,
    Status,
)
from tokentree.text import prompt_pieces, visible
from tokentree.tree_outline import outline

log = logging.getLogger(__name__)


def _placeholder(token_id: int) -> str:
    return f"\u27e8{token_id}\u27e9"  # ⟨id⟩ until the token's bytes are known


def safe_stem(text: str, limit: int = 40) -> str:
    """A file name stem from text: ASCII letters, digits and '-', never empty, never a path."""
    stem = re.sub(r"[^a-z0-9]+", "-", text[: limit * 3].lower()).strip("-")[:limit].strip("-")
    return stem or "branch"


class Explorer:
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
        self._fingerprint = self.info.fingerprint
        self._outputs: dict[bytes, NodeOutput] = {}
        self._absent: set[bytes] = set()  # keys known to have no cached output
        self._analysis: dict[bytes, Analysis | None] = {}
        self._bytes: dict[int, bytes] = {}
        self._bytes_absent: set[int] = set()  # ids whose bytes are in neither memory nor store
        self._fresh_ms: dict[bytes, float] = {}  # nodes computed since the last move, with pass time
        self._queued_appends = 0  # `append` presses made while the node was still being computed
        self._selected_token: int | None = None  # selection by token id survives refreshes
        self._trail: dict[int, int] = {}  # branch id -> deepest node popped from (for walk forward)
        self._in_flight: Job | None = None
        self._failed: set[tuple] = set()
        if engine is not None:
            self.attach_engine(engine)

    # ------------------------------------------------------------------ engine
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def busy(self) -> str | None:
        return self._in_flight.label if self._in_flight else None

    def attach_engine(self, engine) -> None:
        """Use `engine` from now on (UI thread). Its tokenizer must match the session's."""
        loaded = engine.loaded
        if loaded.vocab_key != self.vocab_key:
            raise ModelLoadError(
                f"{loaded.name} has a different tokenizer than this session's model "
                f"({self.info.model_name}); its cached tree can be browsed but not extended"
            )
        if loaded.fingerprint != self._fingerprint:
            # Another dtype or revision: outputs are cached per fingerprint.
            self._fingerprint = loaded.fingerprint
            self._outputs.clear()
            self._absent.clear()
            self._analysis.clear()
        self.engine = engine
        self.error = None

    def loading_job(self, load_engine: Callable[[], Any]) -> Job:
        """The job that loads the model in the worker and attaches it when done."""
        job = self._job(("load",), f"loading {self.model_name}", load_engine, self.attach_engine)
        self._in_flight = job
        return job

    def take_job(self) -> Job | None:
        """The next model work to run, or None when idle, busy, or without an engine."""
        if self._in_flight is not None or self.engine is None:
            return None
        job = self._plan()
        self._in_flight = job
        return job

    def run_jobs_inline(self, limit: int = 1000) -> int:
        """Run every pending job on this thread (tests, scripts). Returns how many ran."""
        count = 0
        while count < limit and (job := self.take_job()) is not None:
            try:
                result = job.run()
            except Exception as exc:  # noqa: BLE001 -- same path as the worker
                job.fail(exc)
            else:
                job.finish(result)
            count += 1
        return count

    # ------------------------------------------------------------------ commands
    def cursor(self, step: int) -> None:
        rows = self._candidate_rows(self._focused_node())
        if not rows:
            return
        i = max(0, min(len(rows) - 1, self._selected_index(rows) + step))
        self._selected_token = rows[i].token_id

    def append(self) -> None:
        branch = self._focused_branch()
        node = self.store.node(branch.node_id)
        rows = self._candidate_rows(node)
        if not rows:
            if self.engine is None and self._in_flight is None:
                self.message = "no candidates: the model is not loaded"
                return
            # Queue it: it appends the top token as soon as the distribution arrives.
            self._queued_appends += 1
            self.message = f"waiting for the model ({self._queued_appends} append(s) queued)"
            return
        limit = self.engine.loaded.context_length if self.engine is not None else None
        if limit and node.depth >= limit:
            self.message = f"the model's context is full ({limit} tokens)"
            return
        token = rows[self._selected_index(rows)].token_id
        new_id = self.store.append_token(self.session_id, branch.id, token)
        trail = self._trail.get(branch.id)
        if trail is not None and new_id not in {n.id for n in self.store.path_nodes(trail)}:
            del self._trail[branch.id]  # left the remembered path
        queued = self._queued_appends
        self._moved()
        self._queued_appends = queued

    def pop(self) -> None:
        branch = self._focused_branch()
        node = self.store.node(branch.node_id)
        if node.depth <= 1:
            self.message = "nothing to pop: the branch is one token long"
            return
        trail = self._trail.get(branch.id)
        if trail is None or node.id not in {n.id for n in self.store.path_nodes(trail)}:
            self._trail[branch.id] = node.id
        self.store.pop_token(self.session_id, branch.id)
        self._moved()
        self._selected_token = node.token_id  # so `append` puts it right back

    def walk_forward(self) -> None:
        """Go down the explored tree to a leaf: back along the popped path if there is one."""
        branch = self._focused_branch()
        node = self.store.node(branch.node_id)
        target = None
        trail = self._trail.get(branch.id)
        if trail is not None and trail != node.id:
            if node.id in {n.id for n in self.store.path_nodes(trail)}:
                target = trail
        if target is None:
            children = self.store.children(node.id)
            if not children:
                self.message = "no explored path ahead"
                return
            rows = self._candidate_rows(node)
            chosen = rows[self._selected_index(rows)].token_id if rows else None
            by_token = {c.token_id: c for c in children}
            target = by_token[chosen].id if chosen in by_token else self._largest_child(children).id
        leaf = target
        while children := self.store.children(leaf):
            leaf = self._largest_child(children).id
        moved = self.store.node(leaf).depth - node.depth
        self.store.move_branch(self.session_id, branch.id, leaf)
        self._moved()
        self.message = f"walked forward {moved} token{'s' if moved != 1 else ''}"

    def switch_branch(self, step: int) -> None:
        branches = self.store.branches(self.session_id)
        i = next((k for k, b in enumerate(branches) if b.focused), 0)
        j = (i + step) % len(branches)
        if j != i:
            self.store.focus_branch(self.session_id, branches[j].id)
            self._moved()

    def duplicate_branch(self) -> None:
        new_id = self.store.duplicate_branch(self.session_id, self._focused_branch().id)
        self._queued_appends = 0
        name = next((b.name for b in self.store.branches(self.session_id) if b.id == new_id), "")
        self.message = f"duplicated the branch as {name}" if name else "duplicated the branch"

    def remove_branch(self) -> None:
        branches = self.store.branches(self.session_id)
        if len(branches) <= 1:
            self.message = "cannot remove the last branch"
            return
        branch = self._focused_branch()
        self.store.remove_branch(self.session_id, branch.id)
        self._moved()
        self.message = f"removed {branch.name} from the list (its nodes stay in the tree; u undoes)"

    def reset_branch(self) -> None:
        branch = self._focused_branch()
        if branch.node_id == branch.root_node_id:
            self.message = "already at the root prompt"
            return
        self.store.reset_branch(self.session_id, branch.id)
        self._moved()
        self.message = "reset to the root prompt (u undoes)"

    def undo(self) -> None:
        undone = self.store.undo(self.session_id)
        self._moved()
        self.message = f"undid: {undone.replace('_', ' ').replace('.', ' ')}" if undone else "nothing to undo"

    def cycle_prompt_view(self) -> None:
        self.prompt_view = PROMPT_VIEWS[(PROMPT_VIEWS.index(self.prompt_view) + 1) % len(PROMPT_VIEWS)]

    def cycle_layer_view(self) -> None:
        if not self.layer_prob:
            self.message = "layer views are off: start tokentree with --layer_prob to enable them"
            return
        self.layer_view = LAYER_VIEWS[(LAYER_VIEWS.index(self.layer_view) + 1) % len(LAYER_VIEWS)]

    def save_branch(self) -> Path | None:
        """Write the branch text to a new file in the saved-prompts dir; never overwrites."""
        branch = self._focused_branch()
        ids = [n.token_id for n in self.store.path_nodes(branch.node_id)]
        pieces = self._pieces(ids)
        if len(pieces) < len(set(ids)):
            self.message = "cannot save yet: token text is still loading"
            return None
        text = b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
        directory = saved_prompts_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = safe_stem(text)
        for n in itertools.count(1):
            path = directory / (f"{stem}.txt" if n == 1 else f"{stem}-{n}.txt")
            try:
                with open(path, "x", encoding="utf-8") as f:  # "x": fails instead of overwriting
                    f.write(text)
                break
            except FileExistsError:
                continue
        self.store.record_prompt_saved(self.session_id, branch.id, str(path))
        self.message = f"saved to {path}"
        return path

    def _moved(self) -> None:
        """The focused node changed: default selection, no queued appends, and the status
        bar reports the new node as cached unless a pass computes it now."""
        self._selected_token = None
        self._queued_appends = 0
        self._fresh_ms.clear()

    def _drain_queued_appends(self) -> None:
        while self._queued_appends > 0:
            rows = self._candidate_rows(self._focused_node())
            if not rows:
                return
            self._queued_appends -= 1
            self.append()

    # ------------------------------------------------------------------ reads
    def snapshot(self, *, with_tree: bool = False) -> Snapshot:
        branches = self.store.branches(self.session_id)
        focused = next((b for b in branches if b.focused), branches[0])
        path = self.store.path_nodes(focused.node_id)
        root_depth = self.store.node(focused.root_node_id).depth
        outs = self._outputs_for([n.prefix_key for n in path])
        current = path[-1]
        out = outs.get(current.prefix_key)
        analysis = self._analysis_for(current.prefix_key) if self._needs_analysis() else None

        rows = self._candidate_rows(current, out, analysis)
        num_layers = len(analysis.lens_probs) if analysis and analysis.lens_probs else 0
        return Snapshot(
            prompt=self._prompt_tokens(path, root_depth, outs, analysis),
            prompt_view=self.prompt_view,
            layer_view=self.layer_view,
            candidates=tuple(rows),
            selected=self._selected_index(rows),
            waiting=out is None,
            branches=tuple(self._branch_row(b) for b in branches),
            status=self._status(current, out),
            message=self.message,
            last_prob=out.token_prob if out else None,
            last_rank=out.token_rank if out else None,
            entropy=out.next.entropy if out else None,
            norm_entropy=out.next.norm_entropy if out else None,
            view_pending=self._view_pending(analysis, rows, out),
            num_layers=num_layers if self.layer_view != "off" else 0,
            tree=tuple(self.tree_lines(focused, branches)) if with_tree else (),
        )

    def tree_lines(self, focused=None, branches=None):
        branches = branches or self.store.branches(self.session_id)
        focused = focused or next((b for b in branches if b.focused), branches[0])
        nodes = self.store.session_nodes(self.session_id)
        at: dict[int, list[str]] = {}
        for b in branches:
            at.setdefault(b.node_id, []).append(b.name + ("*" if b.focused else ""))
        self._pieces(n.token_id for n in nodes)
        return outline(nodes, at, focused.node_id, self._join_text)

    # ------------------------------------------------------------------ internals: data
    def _focused_branch(self):
        branches = self.store.branches(self.session_id)
        return next((b for b in branches if b.focused), branches[0])

    def _focused_node(self):
        return self.store.node(self._focused_branch().node_id)

    def _outputs_for(self, keys: Sequence[bytes]) -> dict[bytes, NodeOutput]:
        want = [k for k in dict.fromkeys(keys) if k not in self._outputs and k not in self._absent]
        if want:
            got = self.store.get_outputs(want, self._fingerprint)
            self._outputs.update(got)
            self._absent.update(k for k in want if k not in got)
        return {k: self._outputs[k] for k in keys if k in self._outputs}

    def _analysis_for(self, key: bytes) -> Analysis | None:
        if key not in self._analysis:
            self._analysis[key] = self.store.get_analysis(key, self._fingerprint)
        return self._analysis[key]

    def _pieces(self, ids: Iterable[int]) -> dict[int, bytes]:
        ids = set(ids)
        want = [i for i in ids if i not in self._bytes and i not in self._bytes_absent]
        if want:
            got = self.store.token_bytes(self.vocab_key, want)
            self._bytes.update(got)
            self._bytes_absent.update(i for i in want if i not in got)
        return {i: self._bytes[i] for i in ids if i in self._bytes}

    def _join_text(self, ids: list[int]) -> str:
        """A tree segment's text; bytes of a character split across segments show as escapes."""
        pieces = self._pieces(ids)
        out, run = [], bytearray()
        for i in ids:
            if i in pieces:
                run += pieces[i]
            else:
                out += [run.decode("utf-8", errors="backslashreplace"), _placeholder(i)]
                run = bytearray()
        out.append(run.decode("utf-8", errors="backslashreplace"))
        return "".join(out)

    def _selected_index(self, rows: Sequence[CandidateRow]) -> int:
        if self._selected_token is not None:
            for i, row in enumerate(rows):
                if row.token_id == self._selected_token:
                    return i
        return 0

    def _largest_child(self, children):
        sizes = self.store.subtree_sizes([c.id for c in children])
        return max(children, key=lambda c: (sizes.get(c.id, 0), -c.id))

    def _candidate_rows(self, node, out: NodeOutput | None = None,
                        analysis: Analysis | None = None) -> list[CandidateRow]:
        """Top tokens_to_show next tokens, then explored children outside them."""
        if out is None:
            out = self._outputs_for([node.prefix_key]).get(node.prefix_key)
        children = {c.token_id: c for c in self.store.children(node.id)}
        sizes = self.store.subtree_sizes([c.id for c in children.values()]) if children else {}
        shown: list[tuple[int | None, int, float | None]] = []  # rank, id, prob
        if out is not None:
            n = self.config.display.tokens_to_show
            shown = [(r + 1, t, p) for r, (t, p) in enumerate(zip(out.next.top_ids[:n], out.next.top_probs[:n]))]
        in_table = {t for _, t, _ in shown}
        extra = [c for t, c in children.items() if t not in in_table]
        if extra:
            child_outs = self._outputs_for([c.prefix_key for c in extra])
            more = []
            for c in extra:
                o = child_outs.get(c.prefix_key)
                more.append((o.token_rank if o else None, c.token_id, o.token_prob if o else None))
            more.sort(key=lambda r: (r[0] is None, r[0] or 0, r[1]))
            shown += more
        pieces = self._pieces(t for _, t, _ in shown)
        lens = self._lens_cells(analysis, [t for _, t, _ in shown])
        rows = []
        for k, (rank, token, prob) in enumerate(shown):
            child = children.get(token)
            rows.append(CandidateRow(
                rank=rank, token_id=token,
                text=visible(pieces[token]) if token in pieces else _placeholder(token),
                prob=prob, explored=child is not None,
                subtree=sizes.get(child.id, 0) + 1 if child is not None else 0,
                layers=lens[k] if lens else None,
            ))
        return rows

    def _lens_cells(self, analysis: Analysis | None, ids: Sequence[int]):
        if self.layer_view == "off" or analysis is None or analysis.lens_ids is None or not analysis.lens_probs:
            return None
        index = {t: k for k, t in enumerate(analysis.lens_ids)}
        if not all(t in index for t in ids):
            return None
        cells = []
        for t in ids:
            curve = [layer[index[t]] for layer in analysis.lens_probs]
            if self.layer_view == "layer_norm":
                top = max(curve) or 1.0
                curve = [v / top for v in curve]
            cells.append(tuple(curve))
        return cells

    def _prompt_tokens(self, path, root_depth: int, outs, analysis: Analysis | None):
        ids = [n.token_id for n in path]
        pieces = self._pieces(ids)
        texts = prompt_pieces([pieces.get(i, b"") for i in ids])
        influence = analysis.influence if analysis is not None else None
        tokens = []
        for k, node in enumerate(path):
            value = None
            if self.prompt_view == "probability":
                o = outs.get(node.prefix_key)
                value = o.token_prob if o is not None else None
            elif self.prompt_view == "entropy" and k > 0:
                o = outs.get(path[k - 1].prefix_key)
                value = o.next.norm_entropy if o is not None else None
            elif self.prompt_view == "influence" and influence is not None and k < len(influence):
                value = influence[k]
            text = texts[k] if node.token_id in pieces else _placeholder(node.token_id)
            tokens.append(PromptToken(text=text, token_id=node.token_id,
                                      appended=node.depth > root_depth, value=value))
        return tuple(tokens)

    def _branch_row(self, branch) -> BranchRow:
        path = self.store.path_nodes(branch.node_id)
        root_depth = self.store.node(branch.root_node_id).depth
        appended = [n for n in path if n.depth > root_depth]
        outs = self._outputs_for([n.prefix_key for n in appended])
        logprob = perplexity = None
        probs = [outs[n.prefix_key].token_prob for n in appended if n.prefix_key in outs]
        if appended and len(probs) == len(appended) and all(p is not None for p in probs):
            logprob = sum(math.log(max(p, 1e-45)) for p in probs)
            perplexity = math.exp(-logprob / len(appended))
        return BranchRow(id=branch.id, name=branch.name, depth=len(path), appended=len(appended),
                         logprob=logprob, perplexity=perplexity, focused=branch.focused)

    def _status(self, node, out) -> Status:
        if self.engine is not None:
            loaded = self.engine.loaded
            model, device, dtype = loaded.name, loaded.device, loaded.dtype
        else:
            model, device, dtype = self.model_name, "\u2014", "\u2014"
        ms = self._fresh_ms.get(node.prefix_key)
        origin = "waiting" if out is None else ("forward" if ms is not None else "cache")
        return Status(model=model, device=device, dtype=dtype, session_id=self.session_id,
                      origin=origin, ms=ms, busy=self.busy, engine_ready=self.engine is not None,
                      error=self.error)

    # ------------------------------------------------------------------ internals: jobs
    def _needs_analysis(self) -> bool:
        return self.prompt_view == "influence" or (self.layer_view != "off" and self.layer_prob)

    def _view_pending(self, analysis, rows, out) -> bool:
        if self.prompt_view == "influence" and (analysis is None or analysis.influence is None):
            return True
        if self.layer_view != "off" and out is not None and rows and rows[0].layers is None:
            return True
        return False

    def _job(self, key: tuple, label: str, run: Callable[[], Any], apply: Callable[[Any], None]) -> Job:
        def finish(result: Any) -> None:
            self._in_flight = None
            try:
                apply(result)
            except TokentreeError as exc:
                self._failed.add(key)
                self.error = str(exc)

        def fail(exc: BaseException) -> None:
            self._in_flight = None
            self._failed.add(key)
            log.error("%s failed", label, exc_info=exc)
            self.error = f"{label} failed: {exc}"

        return Job(label=label, key=key, run=run, finish=finish, fail=fail)

    def _plan(self) -> Job | None:
        branches = self.store.branches(self.session_id)
        focused = next((b for b in branches if b.focused), branches[0])
        path = self.store.path_nodes(focused.node_id)
        job = self._outputs_job(path) or self._analysis_job(path)
        if job is not None:
            return job
        self._snapshot_ids(path)
        if job := self._bytes_job():
            return job
        # Background: fill the other branches so their log-probabilities show.
        for b in branches:
            if b.id != focused.id and (job := self._outputs_job(self.store.path_nodes(b.node_id))):
                return job
        return None

    def _snapshot_ids(self, path) -> None:
        """Make sure the ids the screen shows have been looked up (so missing ones are known)."""
        self._pieces(n.token_id for n in path)
        self._candidate_rows(path[-1])

    def _outputs_job(self, path) -> Job | None:
        keys = [n.prefix_key for n in path]
        outs = self._outputs_for(keys)
        missing = [k for k, key in enumerate(keys) if key not in outs]
        if not missing:
            return None
        key = ("outputs", keys[-1])
        if key in self._failed:
            return None
        tokens = [n.token_id for n in path]
        engine, known = self.engine, frozenset(self._bytes)
        one_step = missing == [len(path) - 1] and len(path) > 1

        def run():
            start = time.perf_counter()
            if one_step:
                results = {len(tokens) - 1: engine.step(tokens[:-1], tokens[-1])}
            else:
                every = engine.prefill(tokens)
                results = {k: every[k] for k in missing}
            ms = (time.perf_counter() - start) * 1000
            ids = set(tokens) | {t for o in results.values() for t in o.next.top_ids}
            return results, ms, engine.token_bytes(sorted(ids - known))

        def apply(result):
            results, ms, pieces = result
            items = [(keys[k], o) for k, o in results.items()]
            self.store.put_outputs(items, self._fingerprint)
            for prefix_key, _ in items:
                # Read back from the store, so this run shows the same (stored) numbers a resume will.
                self._absent.discard(prefix_key)
                self._fresh_ms[prefix_key] = ms
            self._remember_bytes(pieces)
            self._drain_queued_appends()

        label = "computing the next-token distribution" if one_step else f"reading {len(tokens)} tokens"
        return self._job(key, label, run, apply)

    def _analysis_job(self, path) -> Job | None:
        if not self._needs_analysis():
            return None
        current = path[-1]
        analysis = self._analysis_for(current.prefix_key)
        influence = self.prompt_view == "influence" and (analysis is None or analysis.influence is None)
        lens_ids = None
        if self.layer_view != "off" and self.layer_prob:
            ids = [r.token_id for r in self._candidate_rows(current)]
            have = set(analysis.lens_ids or ()) if analysis is not None else set()
            if ids and not set(ids) <= have:
                lens_ids = ids
        if not influence and lens_ids is None:
            return None
        key = ("analysis", current.prefix_key, influence, tuple(lens_ids or ()))
        if key in self._failed:
            return None
        engine, tokens = self.engine, [n.token_id for n in path]

        def run():
            return engine.analyze(tokens, influence=influence, lens_ids=lens_ids)

        def apply(result: Analysis):
            self.store.put_analysis(current.prefix_key, self._fingerprint, result)
            self._analysis.pop(current.prefix_key, None)  # re-read: the store merges fields

        parts = (("attention influence", influence), ("layer probabilities", lens_ids))
        what = " and ".join(w for w, on in parts if on)
        return self._job(key, f"computing {what}", run, apply)

    def _bytes_job(self) -> Job | None:
        ids = sorted(self._bytes_absent)
        key = ("bytes", tuple(ids))
        if not ids or key in self._failed:
            return None
        engine = self.engine

        def apply(pieces: dict[int, bytes]) -> None:
            self._remember_bytes(pieces)
            if self._bytes_absent.intersection(ids):
                self._failed.add(key)  # the tokenizer has no bytes for these: do not ask again

        return self._job(key, "reading token text", lambda: engine.token_bytes(ids), apply)

    def _remember_bytes(self, pieces: dict[int, bytes]) -> None:
        if pieces:
            self.store.put_token_bytes(self.vocab_key, pieces)
            self._bytes.update(pieces)
            self._bytes_absent.difference_update(pieces)

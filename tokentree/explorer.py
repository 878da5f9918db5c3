"""The application core: commands become store events; model work becomes Jobs.

No urwid and no torch here. The UI thread calls the commands and `snapshot()`; it asks
`take_job()` for model work and runs each Job's `run` on the worker thread, then its
`finish`/`fail` back on the UI thread. Only `finish`/`fail` and the commands touch the store.
The engine is asked only for nodes whose output is not cached under the model fingerprint.
Store reads go through a TreeReader (tokentree/tree_reader.py), which keeps what it read.
"""

from __future__ import annotations

import codecs
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tokentree.errors import ModelLoadError, TokentreeError
from tokentree.jobs import Job
from tokentree.outputs import Analysis, NodeOutput
from tokentree.paths import safe_stem, saved_prompts_dir
from tokentree.snapshot import (
    LAYER_VIEWS,
    PROMPT_VIEWS,
    BranchRow,
    CandidateRow,
    PromptToken,
    Snapshot,
    Status,
)
from tokentree.text import placeholder, show_controls, visible
from tokentree.tree_outline import Outline
from tokentree.tree_reader import TreeReader

log = logging.getLogger(__name__)


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
        # Every store read goes through this cache: one read transaction per entry point.
        self._tree = TreeReader(store, session_id, vocab_key=self.vocab_key,
                                fingerprint=self.info.fingerprint)
        self._fresh_ms: dict[bytes, float] = {}  # nodes computed since the last move, with pass time
        self._queued_appends = 0  # `append` presses made while the node was still being computed
        self._selected_token: int | None = None  # selection by token id survives refreshes
        self._trail: dict[int, int] = {}  # branch id -> deepest node popped from (for walk forward)
        self._in_flight: Job | None = None
        self._failed: set[tuple] = set()
        self._complete: set[int] = set()  # node ids whose whole path has cached outputs
        self._rows: dict[tuple[int, int], tuple] = {}  # (node id, root depth) -> branch row numbers
        self._outline = Outline()  # the tree pane's chains and texts (rebuilt when the node set grows)
        self._prompt: dict[str, Any] = {"ids": [], "raw": [], "states": [], "known": [], "stable": 0,
                                         "tokens": [], "key": None, "values_stable": 0}
        self._visible: dict[int, str] = {}  # token id -> its table text
        if engine is not None:
            self.attach_engine(engine)

    # ------------------------------------------------------------------ engine
    @property
    def fingerprint(self) -> str:
        return self._tree.fingerprint

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
        if loaded.fingerprint != self.fingerprint:
            # Another dtype or revision: outputs are cached per fingerprint.
            self._tree.use_fingerprint(loaded.fingerprint)
            self._complete.clear()
            self._rows.clear()
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
        with self._tree.reading():
            rows = self._candidate_rows(self._focused_node())
        if not rows:
            return
        i = max(0, min(len(rows) - 1, self._selected_index(rows) + step))
        self._selected_token = rows[i].token_id

    def append(self) -> None:
        with self._tree.reading():
            branch = self._focused_branch()
            node = self._tree.node(branch.node_id)
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
        if trail is not None and not self._tree.on_path(new_id, node.depth + 1, trail):
            del self._trail[branch.id]  # left the remembered path
        queued = self._queued_appends
        self._moved()
        self._queued_appends = queued

    def pop(self) -> None:
        with self._tree.reading():
            branch = self._focused_branch()
            node = self._tree.node(branch.node_id)
            if node.depth <= 1:
                self.message = "nothing to pop: the branch is one token long"
                return
            trail = self._trail.get(branch.id)
            if trail is None or not self._tree.on_path(node.id, node.depth, trail):
                self._trail[branch.id] = node.id
        self.store.pop_token(self.session_id, branch.id)
        self._moved()
        self._selected_token = node.token_id  # so `append` puts it right back

    def walk_forward(self) -> None:
        """Go down the explored tree to a leaf: back along the popped path if there is one."""
        with self._tree.reading():
            branch = self._focused_branch()
            node = self._tree.node(branch.node_id)
            target = None
            trail = self._trail.get(branch.id)
            if trail is not None and trail != node.id:
                if self._tree.on_path(node.id, node.depth, trail):
                    target = trail
            if target is None:
                children = self._tree.children_of(node.id)
                if not children:
                    self.message = "no explored path ahead"
                    return
                rows = self._candidate_rows(node)
                chosen = rows[self._selected_index(rows)].token_id if rows else None
                by_token = {c.token_id: c for c in children}
                target = by_token[chosen].id if chosen in by_token else self._largest_child(children).id
            leaf = target
            while children := self._tree.children_of(leaf):
                leaf = self._largest_child(children).id
            moved = self._tree.node(leaf).depth - node.depth
        self.store.move_branch(self.session_id, branch.id, leaf)
        self._moved()
        self.message = f"walked forward {moved} token{'s' if moved != 1 else ''}"

    def switch_branch(self, step: int) -> None:
        branches = self._tree.branches()
        i = next((k for k, b in enumerate(branches) if b.focused), 0)
        j = (i + step) % len(branches)
        if j != i:
            self.store.focus_branch(self.session_id, branches[j].id)
            self._moved()

    def duplicate_branch(self) -> None:
        new_id = self.store.duplicate_branch(self.session_id, self._focused_branch().id)
        self._queued_appends = 0
        name = next((b.name for b in self._tree.branches() if b.id == new_id), "")
        self.message = f"duplicated the branch as {name}" if name else "duplicated the branch"

    def remove_branch(self) -> None:
        with self._tree.reading():
            branches = self._tree.branches()
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
        with self._tree.reading():
            branch = self._focused_branch()
            ids = [n.token_id for n in self._tree.path_of(branch.node_id)]
            pieces = self._tree.pieces(ids)
        if len(pieces) < len(set(ids)):
            self.message = "cannot save yet: token text is still loading"
            return None
        text = b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
        directory = saved_prompts_dir()
        stem = safe_stem(text)
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for n in itertools.count(1):
                path = directory / (f"{stem}.txt" if n == 1 else f"{stem}-{n}.txt")
                try:
                    # O_EXCL: never overwrite (nor follow a planted link); 0600: prompts are private.
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                break
        except OSError as exc:
            self.message = f"cannot save the prompt: {exc.strerror or exc}"
            return None
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
            with self._tree.reading():
                rows = self._candidate_rows(self._focused_node())
            if not rows:
                return
            self._queued_appends -= 1
            self.append()

    # ------------------------------------------------------------------ reads
    def snapshot(self, *, with_tree: bool = False) -> Snapshot:
        with self._tree.reading():
            return self._snapshot(with_tree)

    def _snapshot(self, with_tree: bool) -> Snapshot:
        branches = self._tree.branches()
        focused = next((b for b in branches if b.focused), branches[0])
        path = self._tree.path_of(focused.node_id, keep=True)
        root_depth = self._tree.node(focused.root_node_id).depth
        self._prefetch_rows(branches)
        current = path[-1]
        out = self._tree.outputs_for([current.prefix_key]).get(current.prefix_key)
        analysis = self._tree.analysis_for(current.prefix_key) if self._needs_analysis() else None

        rows = self._candidate_rows(current, out, analysis)
        num_layers = len(analysis.lens_probs) if analysis and analysis.lens_probs else 0
        return Snapshot(
            prompt=self._prompt_tokens(path, root_depth, analysis),
            prompt_view=self.prompt_view,
            layer_view=self.layer_view,
            candidates=tuple(rows),
            selected=self._selected_index(rows),
            waiting=out is None,
            branches=tuple(self._branch_row(b, path if b is focused else None) for b in branches),
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
        with self._tree.reading():
            branches = branches or self._tree.branches()
            focused = focused or next((b for b in branches if b.focused), branches[0])
            nodes = self._tree.session_tree()
            at: dict[int, list[str]] = {}
            for b in branches:
                at.setdefault(b.node_id, []).append(b.name + ("*" if b.focused else ""))
            if not self._outline.has(nodes):
                self._tree.pieces(n.token_id for n in nodes)  # one read for the texts about to be built
            return self._outline.lines(nodes, at, focused.node_id, self._join_text, text_key=self._tree.known_bytes_count())

    # ------------------------------------------------------------------ internals: screen
    def _focused_branch(self):
        branches = self._tree.branches()
        return next((b for b in branches if b.focused), branches[0])

    def _focused_node(self):
        return self._tree.node(self._focused_branch().node_id)

    def _join_text(self, ids: list[int]) -> str:
        """A tree segment's text; bytes of a character split across segments show as escapes."""
        pieces = self._tree.pieces(ids)
        out, run = [], bytearray()
        for i in ids:
            if i in pieces:
                run += pieces[i]
            else:
                out += [run.decode("utf-8", errors="backslashreplace"), placeholder(i)]
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
        sizes = self._tree.subtree_sizes([c.id for c in children])
        return max(children, key=lambda c: (sizes.get(c.id, 0), -c.id))

    def _candidate_rows(self, node, out: NodeOutput | None = None,
                        analysis: Analysis | None = None) -> list[CandidateRow]:
        """Top tokens_to_show next tokens, then explored children outside them."""
        if out is None:
            out = self._tree.outputs_for([node.prefix_key]).get(node.prefix_key)
        children = {c.token_id: c for c in self._tree.children_of(node.id)}
        sizes = self._tree.subtree_sizes([c.id for c in children.values()]) if children else {}
        shown: list[tuple[int | None, int, float | None]] = []  # rank, id, prob
        if out is not None:
            n = self.config.display.tokens_to_show
            shown = [(r + 1, t, p) for r, (t, p) in enumerate(zip(out.next.top_ids[:n], out.next.top_probs[:n]))]
        in_table = {t for _, t, _ in shown}
        extra = [c for t, c in children.items() if t not in in_table]
        if extra:
            child_outs = self._tree.outputs_for([c.prefix_key for c in extra])
            more = []
            for c in extra:
                o = child_outs.get(c.prefix_key)
                more.append((o.token_rank if o else None, c.token_id, o.token_prob if o else None))
            more.sort(key=lambda r: (r[0] is None, r[0] or 0, r[1]))
            shown += more
        pieces = self._tree.pieces(t for _, t, _ in shown)
        lens = self._lens_cells(analysis, [t for _, t, _ in shown])
        rows = []
        for k, (rank, token, prob) in enumerate(shown):
            child = children.get(token)
            rows.append(CandidateRow(
                rank=rank, token_id=token,
                text=self._visible_text(token, pieces),
                prob=prob, explored=child is not None,
                subtree=sizes.get(child.id, 0) + 1 if child is not None else 0,
                layers=lens[k] if lens else None,
            ))
        return rows

    def _visible_text(self, token: int, pieces: dict[int, bytes]) -> str:
        text = self._visible.get(token)
        if text is None:
            if token not in pieces:
                return placeholder(token)
            text = self._visible[token] = visible(pieces[token])
        return text

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

    def _prompt_kept(self, path) -> int:
        """How many leading tokens of `path` the prompt cache holds, bytes known."""
        ids = self._prompt["ids"]
        # Equal ids at one depth mean equal paths above it: binary search the common prefix.
        lo, hi = 0, min(len(path), len(ids), self._prompt["stable"])
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ids[mid - 1] == path[mid - 1].id:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _prompt_tokens(self, path, root_depth: int, analysis: Analysis | None):
        """The prompt pane's tokens. Kept between calls and rebuilt only from where the path
        (or anything a token shows) may differ: a pop or an append touches one token."""
        n = len(path)
        cache = self._prompt
        ids = cache["ids"]
        start = self._prompt_kept(path)
        # The text layer: decoded pieces (a character split across tokens shows on the token
        # that completes it), with the decoder's state after each token to resume from.
        del ids[start:], cache["raw"][start:], cache["states"][start:], cache["known"][start:]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        if start:
            decoder.setstate(cache["states"][start - 1])
        new = path[start:]
        pieces = self._tree.pieces(node.token_id for node in new)
        stable = start  # tokens before this one have their bytes (those after may change)
        for node in new:
            piece = pieces.get(node.token_id)
            if piece is not None and stable == len(ids):
                stable += 1
            ids.append(node.id)
            cache["raw"].append(decoder.decode(piece or b"", final=False))
            cache["states"].append(decoder.getstate())
            cache["known"].append(piece is not None)
        cache["stable"] = stable
        tail = decoder.decode(b"", final=True) if n else ""  # an unfinished character at the end
        raw, known = cache["raw"], cache["known"]

        def text(k: int, final: str = "") -> str:
            if not known[k]:
                return placeholder(path[k].token_id)
            return show_controls(raw[k] + final)

        view = self.prompt_view
        influence = analysis.influence if analysis is not None and view == "influence" else None
        key = (root_depth, view, self.fingerprint, influence)
        tokens = cache["tokens"]
        if cache["key"] != key:
            cache["key"], tokens[:], cache["values_stable"] = key, [], 0
        keep = min(start, cache["values_stable"], len(tokens))
        del tokens[keep:]
        values_stable = keep
        outs = self._tree.outputs_for([x.prefix_key for x in path[max(0, keep - 1):]]) if view in (
            "probability", "entropy") else {}
        for k in range(keep, n):
            node = path[k]
            value = None
            if view == "probability":
                o = outs.get(node.prefix_key)
                value = o.token_prob if o is not None else None
                missing = o is None
            elif view == "entropy" and k > 0:
                o = outs.get(path[k - 1].prefix_key)
                value = o.next.norm_entropy if o is not None else None
                missing = o is None
            elif view == "influence" and influence is not None and k < len(influence):
                value = influence[k]
                missing = False
            else:
                missing = False
            tokens.append(PromptToken(text=text(k), token_id=node.token_id,
                                      appended=node.depth > root_depth, value=value))
            if values_stable == k and not missing:
                values_stable = k + 1  # an output that arrives later changes this token's value
        cache["values_stable"] = values_stable
        if n and tail:
            last = tokens[-1]
            return (*tokens[:-1], PromptToken(text=text(n - 1, tail), token_id=last.token_id,
                                              appended=last.appended, value=last.value))
        return tuple(tokens)

    def _prefetch_rows(self, branches) -> None:
        """Read, in one statement each, what the branch rows not known yet need."""
        known = self._tree.cached_node
        todo = [b for b in branches if known(b.node_id) is None or known(b.root_node_id) is None]
        if todo:
            self._tree.read_paths({b.node_id for b in todo} | {b.root_node_id for b in todo})
        keys: list[bytes] = []
        for b in branches:
            root = known(b.root_node_id)
            if root is not None and (b.node_id, root.depth) not in self._rows and known(b.node_id) is not None:
                keys += [n.prefix_key for n in self._tree.path_of(b.node_id) if n.depth > root.depth]
        if keys:
            self._tree.probs_for(keys)

    def _branch_row(self, branch, path=None) -> BranchRow:
        root_depth = self._tree.node(branch.root_node_id).depth
        known = self._rows.get((branch.node_id, root_depth))
        if known is None:
            if path is None:
                path = self._tree.path_of(branch.node_id)
            appended = [n for n in path if n.depth > root_depth]
            outs = self._tree.probs_for([n.prefix_key for n in appended])
            logprob = perplexity = None
            probs = [outs[n.prefix_key] for n in appended if n.prefix_key in outs]
            if appended and len(probs) == len(appended) and all(p is not None for p in probs):
                logprob = sum(math.log(max(p, 1e-45)) for p in probs)
                perplexity = math.exp(-logprob / len(appended))
            known = (len(path), len(appended), logprob, perplexity)
            if len(probs) == len(appended):  # every output is in: the row is final
                self._rows[(branch.node_id, root_depth)] = known
        depth, appended_n, logprob, perplexity = known
        return BranchRow(id=branch.id, name=branch.name, depth=depth, appended=appended_n,
                         logprob=logprob, perplexity=perplexity, focused=branch.focused)

    def _status(self, node, out) -> Status:
        if self.engine is not None:
            loaded = self.engine.loaded
            model, device, dtype = loaded.name, loaded.device, loaded.dtype
        else:
            # Until a model is attached, what is on screen is the session model's cache: say
            # so, even when another model (--model) is loading (the busy field names it).
            model, device, dtype = f"{self.info.model_name} (cached)", "\u2014", "\u2014"
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
        with self._tree.reading():
            branches = self._tree.branches()
            focused = next((b for b in branches if b.focused), branches[0])
            path = self._tree.path_of(focused.node_id, keep=True)
            job = self._outputs_job(path, focused=True) or self._analysis_job(path)
            if job is not None:
                return job
            self._snapshot_ids(path)
            if job := self._bytes_job():
                return job
            # Background: fill the other branches so their log-probabilities show.
            todo = [b for b in branches if b.id != focused.id and b.node_id not in self._complete]
            if todo and any(self._tree.cached_node(b.node_id) is None for b in todo):
                self._tree.read_paths({b.node_id for b in todo})
            for b in todo:
                if job := self._outputs_job(self._tree.path_of(b.node_id)):
                    return job
            return None

    def _snapshot_ids(self, path) -> None:
        """Make sure the ids the screen shows have been looked up (so missing ones are known)."""
        self._tree.pieces(n.token_id for n in path[self._prompt_kept(path):])
        self._candidate_rows(path[-1])

    def _outputs_job(self, path, *, focused: bool = False) -> Job | None:
        if path[-1].id in self._complete:
            return None
        keys = [n.prefix_key for n in path]
        outs = self._tree.probs_for(keys)
        missing = [k for k, key in enumerate(keys) if key not in outs]
        if not missing:
            self._complete.add(path[-1].id)
            return None
        key = ("outputs", keys[-1])
        if key in self._failed:
            return None
        tokens = [n.token_id for n in path]
        engine, known = self.engine, self._tree.known_byte_ids()
        one_step = missing == [len(path) - 1] and len(path) > 1
        # A new node under a view that needs its analysis: the step's own forward pass
        # gives it (one pass, not a step and then an analysis).
        influence, lens_count = False, 0
        if focused and one_step and self._needs_analysis() and hasattr(engine, "step_with_analysis"):
            stored = self._tree.analysis_for(keys[-1])
            influence = self.prompt_view == "influence" and (stored is None or stored.influence is None)
            if self.layer_view != "off" and self.layer_prob and (stored is None or not stored.lens_ids):
                lens_count = self.config.display.tokens_to_show
        with_analysis = influence or lens_count > 0

        def run():
            start = time.perf_counter()
            analysis = None
            if with_analysis:
                out, analysis = engine.step_with_analysis(tokens[:-1], tokens[-1], influence=influence,
                                                          lens_count=lens_count)
                results = {len(tokens) - 1: out}
            elif one_step:
                results = {len(tokens) - 1: engine.step(tokens[:-1], tokens[-1])}
            else:
                every = engine.prefill(tokens)
                results = {k: every[k] for k in missing}
            ms = (time.perf_counter() - start) * 1000
            ids = set(tokens) | {t for o in results.values() for t in o.next.top_ids}
            return results, ms, engine.token_bytes(sorted(ids - known)), analysis

        def apply(result):
            results, ms, pieces, analysis = result
            items = [(keys[k], o) for k, o in results.items()]
            self.store.put_outputs(items, self.fingerprint)
            if analysis is not None:
                self.store.put_analysis(keys[-1], self.fingerprint, analysis)
                self._tree.analysis_stored(keys[-1])
            for prefix_key, _ in items:
                # Read back from the store, so this run shows the same (stored) numbers a resume will.
                self._tree.output_stored(prefix_key)
                self._fresh_ms[prefix_key] = ms
            self._tree.remember_bytes(pieces)
            self._drain_queued_appends()

        label = "computing the next-token distribution" if one_step else f"reading {len(tokens)} tokens"
        return self._job(key, label, run, apply)

    def _analysis_job(self, path) -> Job | None:
        if not self._needs_analysis():
            return None
        current = path[-1]
        analysis = self._tree.analysis_for(current.prefix_key)
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
            self.store.put_analysis(current.prefix_key, self.fingerprint, result)
            self._tree.analysis_stored(current.prefix_key)

        parts = (("attention influence", influence), ("layer probabilities", lens_ids))
        what = " and ".join(w for w, on in parts if on)
        return self._job(key, f"computing {what}", run, apply)

    def _bytes_job(self) -> Job | None:
        ids = self._tree.missing_byte_ids()
        key = ("bytes", tuple(ids))
        if not ids or key in self._failed:
            return None
        engine = self.engine

        def apply(pieces: dict[int, bytes]) -> None:
            self._tree.remember_bytes(pieces)
            if set(ids).intersection(self._tree.missing_byte_ids()):
                self._failed.add(key)  # the tokenizer has no bytes for these: do not ask again

        return self._job(key, "reading token text", lambda: engine.token_bytes(ids), apply)

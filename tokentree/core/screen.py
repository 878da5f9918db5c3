"""Building the screen's Snapshot from the tree view and the UI state.

Everything here is a read: the Screen never writes to the store and never asks the model.
It keeps what is costly to rebuild on every key press (the prompt pane's decoded text, the
branch rows' totals, the tree outline, the table's token texts) in typed caches. Nodes,
outputs and token bytes never change once known, so those caches stay true; the one thing
that invalidates them is a change of model fingerprint: `model_changed()`.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from tokentree.outputs import Analysis, NodeOutput
from tokentree.sampling import describe, survivors
from .snapshot import BranchRow, CandidateRow, PromptToken, Snapshot, Status
from tokentree.tree.outline import Outline
from tokentree.tree.text import join_pieces, placeholder, show_controls, visible

from .view import TreeView


@dataclass(frozen=True)
class EngineInfo:
    """What the status bar says about the attached model."""

    name: str
    device: str
    dtype: str
    remote: bool = False  # a server: the status bar says "request N ms", not "forward pass"


@dataclass(frozen=True)
class ScreenState:
    """The UI state a snapshot is drawn with (not events: nothing here is recorded)."""

    prompt_view: str
    layer_view: str
    layer_prob: bool
    selected_token: int | None  # the selection follows a token id across refreshes
    message: str | None
    error: str | None
    busy: str | None  # what the model worker is doing
    engine: EngineInfo | None  # None until a model is attached
    fresh_ms: dict[bytes, float]  # nodes computed since the last move, with pass time
    cancellable: bool = False  # the busy work stops on `cancel` (a fill)
    sampler: Any = None  # the [sampling] settings while the sampler column is on
    search: str | None = None  # the active search's status line

    @property
    def needs_analysis(self) -> bool:
        return self.prompt_view == "influence" or (self.layer_view != "off" and self.layer_prob)


@dataclass
class _PromptText:
    """The prompt pane's decoded text along the focused path, kept between key presses so
    a pop or an append re-decodes one token."""

    ids: list[int] = field(default_factory=list)  # node ids, root first
    raw: list[str] = field(default_factory=list)  # decoded text per token
    states: list[tuple] = field(default_factory=list)  # the UTF-8 decoder's state after each token
    known: list[bool] = field(default_factory=list)  # whether the token's bytes were known
    stable: int = 0  # leading tokens whose bytes were all known (later ones may still change)


@dataclass
class _PromptValues:
    """The prompt pane's tokens with their view values, for one (root, view, model, influence)."""

    key: tuple | None = None
    tokens: list[PromptToken] = field(default_factory=list)
    stable: int = 0  # leading tokens whose values were final when built


class _RowTotals(NamedTuple):
    """A branch row's numbers, kept once every output on the branch is in."""

    depth: int
    appended: int
    logprob: float | None
    perplexity: float | None


class Screen:
    """Snapshots of one session. All methods run on the UI thread, inside or outside a
    `view.reading()` block (each public method opens one when it is not inside one)."""

    def __init__(self, view: TreeView, *, session_id: int, session_model: str, tokens_to_show: int) -> None:
        self.view = view
        self.session_id = session_id
        self.session_model = session_model
        self.tokens_to_show = tokens_to_show
        self._totals: dict[tuple[int, int], _RowTotals] = {}  # (node id, root depth) -> final numbers
        self._outline = Outline()
        self._text = _PromptText()
        self._values = _PromptValues()
        self._visible: dict[int, str] = {}  # token id -> its table text
        # A regex constraint: mask(node, out) -> what may follow the node, or None (none on).
        # The Explorer sets it (features/constraint/feature.py); see candidate_rows.
        self.mask = None

    def texts_changed(self) -> None:
        """Token texts may read differently (special tokens were just marked): build them again."""
        self._text, self._values, self._visible, self._outline = _PromptText(), _PromptValues(), {}, Outline()

    def model_changed(self) -> None:
        """Outputs are cached per fingerprint: forget every number computed from the old one."""
        self._totals.clear()
        self._values = _PromptValues()

    # ------------------------------------------------------------------ the snapshot
    def snapshot(self, state: ScreenState, *, with_tree: bool = False) -> Snapshot:
        with self.view.reading():
            view = self.view
            branches = view.branches()
            focused = next((b for b in branches if b.focused), branches[0])
            path = view.path_of(focused.node_id, keep=True)
            root_depth = view.node(focused.root_node_id).depth
            self._read_branch_rows(branches)
            current = path[-1]
            out = view.outputs_for([current.prefix_key]).get(current.prefix_key)
            analysis = view.analysis_for(current.prefix_key) if state.needs_analysis else None
            rows = self.candidate_rows(current, state.layer_view, out, analysis)
            sampler = None
            if state.sampler is not None:
                rows, exact = _with_sampler(rows, out, state.sampler)
                sampler = describe(state.sampler) + ("" if exact else " (approx.)")
            num_layers = len(analysis.lens_probs) if analysis and analysis.lens_probs else 0
            return Snapshot(
                prompt=self._prompt_tokens(path, root_depth, state.prompt_view, analysis),
                prompt_view=state.prompt_view,
                layer_view=state.layer_view,
                candidates=tuple(rows),
                selected=selected_index(rows, state.selected_token),
                waiting=out is None,
                branches=tuple(self._branch_row(b, path if b is focused else None) for b in branches),
                status=self._status(state, current, out),
                message=state.message,
                **self._last_token(path, out),
                entropy=out.next.entropy if out else None,
                norm_entropy=out.next.norm_entropy if out else None,
                entropy_exact=out.next.exact if out else True,
                view_pending=_view_pending(state, analysis, rows, out),
                sink_share=analysis.sink_share if analysis is not None and state.prompt_view == "influence" else None,
                num_layers=num_layers if state.layer_view != "off" else 0,
                tree=tuple(self.tree_lines()) if with_tree else (),
                version=view.version(),
                sampler=sampler,
                search=state.search,
                constraint=self._constraint_line(current, out),
            )

    def _last_token(self, path, out) -> dict:
        """The last token's probability and rank: from its node's output, else from its
        parent's cached top-K (a fill's new tip before its own pass), else pending."""
        if out is not None:
            return {"last_prob": out.token_prob, "last_rank": out.token_rank}
        if len(path) < 2:
            return {}
        parent = self.view.outputs_for([path[-2].prefix_key]).get(path[-2].prefix_key)
        token = path[-1].token_id
        if parent is not None and token in parent.next.top_ids:
            k = parent.next.top_ids.index(token)
            return {"last_prob": parent.next.top_probs[k], "last_rank": k + 1}
        return {"last_pending": True}

    def tree_lines(self):
        with self.view.reading():
            view = self.view
            branches = view.branches()
            focused = next((b for b in branches if b.focused), branches[0])
            nodes = view.session_tree()
            at: dict[int, list[str]] = {}
            for b in branches:
                at.setdefault(b.node_id, []).append(b.name + ("*" if b.focused else ""))
            if not self._outline.has(nodes):
                view.pieces(n.token_id for n in nodes)  # one read for the texts about to be built
            return self._outline.lines(nodes, at, focused.node_id, self._join_text,
                                       text_key=view.known_bytes_count())

    def look_up_shown_ids(self, path) -> None:
        """Look up the bytes of every token the screen shows, so the ones the store lacks
        are known (the planner then asks the tokenizer for them)."""
        with self.view.reading():
            self.view.pieces(n.token_id for n in path[self._prompt_kept(path):])
            self.candidate_rows(path[-1])

    # ------------------------------------------------------------------ the candidate table
    def candidate_rows(self, node, layer_view: str = "off", out: NodeOutput | None = None,
                       analysis: Analysis | None = None) -> list[CandidateRow]:
        """Top tokens_to_show next tokens, then explored children outside them. Under a
        regex constraint: only the tokens it allows, from the whole cached top K, with
        `prob` renormalized over the allowed ones and `raw` the model's own."""
        view = self.view
        with view.reading():
            if out is None:
                out = view.outputs_for([node.prefix_key]).get(node.prefix_key)
            children = {c.token_id: c for c in view.children_of(node.id)}
            sizes = view.subtree_sizes([c.id for c in children.values()]) if children else {}
            shown: list[tuple[int | None, int, float | None]] = []  # rank, id, prob
            if out is not None:
                n = self.tokens_to_show
                shown = [(r + 1, t, p) for r, (t, p) in enumerate(zip(out.next.top_ids[:n], out.next.top_probs[:n]))]
            mask = self.mask(node, out) if self.mask is not None else None
            if mask is not None and mask.filters:
                shown = [(r + 1, t, p) for r, (t, p) in enumerate(zip(out.next.top_ids, out.next.top_probs))
                         if mask.allows(t)][: self.tokens_to_show] if out is not None else []
                children = {t: c for t, c in children.items() if mask.allows(t)}
            else:
                mask = None
            in_table = {t for _, t, _ in shown}
            extra = [c for t, c in children.items() if t not in in_table]
            if extra:
                child_outs = view.outputs_for([c.prefix_key for c in extra])
                more = []
                for c in extra:
                    o = child_outs.get(c.prefix_key)
                    more.append((o.token_rank if o else None, c.token_id, o.token_prob if o else None))
                more.sort(key=lambda r: (r[0] is None, r[0] or 0, r[1]))
                shown += more
            pieces = view.shown_pieces(t for _, t, _ in shown)
            special = view.special_ids()
        lens = _lens_cells(layer_view, analysis, [t for _, t, _ in shown])
        rows = []
        for k, (rank, token, prob) in enumerate(shown):
            child = children.get(token)
            row = CandidateRow(
                rank=rank, token_id=token,
                text=self._visible_text(token, pieces),
                prob=prob, explored=child is not None,
                subtree=sizes.get(child.id, 0) + 1 if child is not None else 0,
                layers=lens[k] if lens else None, special=token in special,
            )
            rows.append(row if mask is None else replace(row, prob=mask.renormalized(prob), raw=prob))
        return rows

    def _constraint_line(self, node, out):
        mask = self.mask(node, out) if self.mask is not None else None
        return mask.line if mask is not None else None

    def _visible_text(self, token: int, pieces: dict[int, bytes]) -> str:
        text = self._visible.get(token)
        if text is None:
            if token not in pieces:
                return placeholder(token)
            text = self._visible[token] = visible(pieces[token])
        return text

    # ------------------------------------------------------------------ the prompt pane
    def _prompt_kept(self, path) -> int:
        """How many leading tokens of `path` the prompt text cache holds, bytes known."""
        ids = self._text.ids
        # Equal ids at one depth mean equal paths above it: binary search the common prefix.
        lo, hi = 0, min(len(path), len(ids), self._text.stable)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ids[mid - 1] == path[mid - 1].id:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _prompt_tokens(self, path, root_depth: int, prompt_view: str, analysis: Analysis | None):
        """The prompt pane's tokens, rebuilt only from where the path (or anything a token
        shows) may differ: a pop or an append touches one token."""
        n = len(path)
        text = self._text
        start = self._prompt_kept(path)
        # The text layer: decoded pieces (a character split across tokens shows on the token
        # that completes it), with the decoder's state after each token to resume from.
        del text.ids[start:], text.raw[start:], text.states[start:], text.known[start:]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        if start:
            decoder.setstate(text.states[start - 1])
        new = path[start:]
        pieces = self.view.shown_pieces(node.token_id for node in new)
        special = self.view.special_ids()
        stable = start
        for node in new:
            piece = pieces.get(node.token_id)
            if piece is not None and stable == len(text.ids):
                stable += 1
            text.ids.append(node.id)
            text.raw.append(decoder.decode(piece or b"", final=False))
            text.states.append(decoder.getstate())
            text.known.append(piece is not None)
        text.stable = stable
        tail = decoder.decode(b"", final=True) if n else ""  # an unfinished character at the end

        def shown(k: int, final: str = "") -> str:
            if not text.known[k]:
                return placeholder(path[k].token_id)
            return show_controls(text.raw[k] + final)

        influence = analysis.influence if analysis is not None and prompt_view == "influence" else None
        key = (root_depth, prompt_view, self.view.fingerprint, influence)
        values = self._values
        if values.key != key:
            values = self._values = _PromptValues(key=key)
        tokens = values.tokens
        keep = min(start, values.stable, len(tokens))
        del tokens[keep:]
        values_stable = keep
        outs = self.view.outputs_for([x.prefix_key for x in path[max(0, keep - 1):]]) if prompt_view in (
            "probability", "entropy") else {}
        for k in range(keep, n):
            node = path[k]
            value = None
            missing = False
            if prompt_view == "probability":
                o = outs.get(node.prefix_key)
                value = o.token_prob if o is not None else None
                missing = o is None
            elif prompt_view == "entropy" and k > 0:
                o = outs.get(path[k - 1].prefix_key)
                value = o.next.norm_entropy if o is not None else None
                missing = o is None
            elif prompt_view == "influence" and influence is not None and k < len(influence):
                value = influence[k]  # None (n/a) at position 0, the sink, and at the last
            tokens.append(PromptToken(text=shown(k), token_id=node.token_id,
                                      appended=node.depth > root_depth, value=value,
                                      special=node.token_id in special))
            if values_stable == k and not missing:
                values_stable = k + 1  # an output that arrives later changes this token's value
        values.stable = values_stable
        if n and tail:
            last = tokens[-1]
            return (*tokens[:-1], replace(last, text=shown(n - 1, tail)))
        return tuple(tokens)

    # ------------------------------------------------------------------ the branch list
    def _read_branch_rows(self, branches) -> None:
        """Read, in one statement each, what the branch rows not known yet need."""
        view = self.view
        known = view.cached_node
        todo = [b for b in branches if known(b.node_id) is None or known(b.root_node_id) is None]
        if todo:
            view.read_paths({b.node_id for b in todo} | {b.root_node_id for b in todo})
        keys: list[bytes] = []
        for b in branches:
            root = known(b.root_node_id)
            if root is not None and (b.node_id, root.depth) not in self._totals and known(b.node_id) is not None:
                keys += [n.prefix_key for n in view.path_of(b.node_id) if n.depth > root.depth]
        if keys:
            view.probs_for(keys)

    def _branch_row(self, branch, path=None) -> BranchRow:
        view = self.view
        root_depth = view.node(branch.root_node_id).depth
        totals = self._totals.get((branch.node_id, root_depth))
        if totals is None:
            if path is None:
                path = view.path_of(branch.node_id)
            appended = [n for n in path if n.depth > root_depth]
            outs = view.probs_for([n.prefix_key for n in appended])
            logprob = perplexity = None
            probs = [outs[n.prefix_key] for n in appended if n.prefix_key in outs]
            if appended and len(probs) == len(appended) and all(p is not None for p in probs):
                logprob = sum(math.log(max(p, 1e-45)) for p in probs)
                perplexity = math.exp(-logprob / len(appended))
            totals = _RowTotals(len(path), len(appended), logprob, perplexity)
            if len(probs) == len(appended):  # every output is in: the row is final
                self._totals[(branch.node_id, root_depth)] = totals
        return BranchRow(id=branch.id, name=branch.name, depth=totals.depth, appended=totals.appended,
                         logprob=totals.logprob, perplexity=totals.perplexity, focused=branch.focused)

    # ------------------------------------------------------------------ the tree pane
    def _join_text(self, ids: list[int]) -> str:
        return join_pieces(ids, self.view.shown_pieces(ids))

    # ------------------------------------------------------------------ the status bar
    def _status(self, state: ScreenState, node, out) -> Status:
        if state.engine is not None:
            model, device, dtype = state.engine.name, state.engine.device, state.engine.dtype
        else:
            # Until a model is attached, what is on screen is the session model's cache: say
            # so, even when another model (--model) is loading (the busy field names it).
            model, device, dtype = f"{self.session_model} (cached)", "\u2014", "\u2014"
        ms = state.fresh_ms.get(node.prefix_key)
        computed = "request" if state.engine is not None and state.engine.remote else "forward"
        origin = "waiting" if out is None else (computed if ms is not None else "cache")
        return Status(model=model, device=device, dtype=dtype, session_id=self.session_id,
                      origin=origin, ms=ms, busy=state.busy, engine_ready=state.engine is not None,
                      error=state.error, cancellable=state.cancellable)


def selected_index(rows: Sequence[CandidateRow], selected_token: int | None) -> int:
    """The row of the selected token, else the top row."""
    if selected_token is not None:
        for i, row in enumerate(rows):
            if row.token_id == selected_token:
                return i
    return 0


def _with_sampler(rows: list[CandidateRow], out: NodeOutput | None, settings) -> tuple[list[CandidateRow], bool]:
    """The rows with the probability a sampler with `settings` gives each (None: filtered
    out), and whether that is exact given only the cached top candidates."""
    if out is None:
        return rows, True
    tail = max(0.0, 1.0 - sum(out.next.top_probs))
    kept, exact = survivors(out.next.top_ids, out.next.top_probs, settings, tail)
    return [replace(r, sampled=kept.get(r.token_id)) for r in rows], exact


def _lens_cells(layer_view: str, analysis: Analysis | None, ids: Sequence[int]):
    """Per candidate, its logit-lens curve over the layers (normalized per curve in layer_norm)."""
    if layer_view == "off" or analysis is None or analysis.lens_ids is None or not analysis.lens_probs:
        return None
    index = {t: k for k, t in enumerate(analysis.lens_ids)}
    if not all(t in index for t in ids):
        return None
    cells = []
    for t in ids:
        curve = [layer[index[t]] for layer in analysis.lens_probs]
        if layer_view == "layer_norm":
            top = max(curve) or 1.0
            curve = [v / top for v in curve]
        cells.append(tuple(curve))
    return cells


def _view_pending(state: ScreenState, analysis, rows, out) -> bool:
    if state.prompt_view == "influence" and (analysis is None or analysis.influence is None):
        return True
    return state.layer_view != "off" and out is not None and bool(rows) and rows[0].layers is None

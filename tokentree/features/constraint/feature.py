"""Regex constraints (r / R), as a feature of the explorer.

A branch's constraint is recorded (`constraint.set` / `constraint.cleared` events, projected
into the `constraints` table), so a resume, another window and the exports see it: its name,
its pattern as matched, and the depth it was switched on at. Everything else is derived:

- the constraint's state at a node is the index's state after the branch's tokens since it
  was switched on (a fold over the tokens, cached per node: an append costs one lookup);
- the table shows the cached top-K with every token the pattern does not allow left out,
  probabilities renormalized over the allowed ones and the model's own beside them (`Mask`,
  applied by Screen.candidate_rows, so append, fill, counterfactuals and prefetch all see
  only allowed tokens; `g` draws only allowed tokens, each sample walking its own matcher
  in the worker). The cache keeps the model's raw top-K, never masked numbers.

The index (tokentree.features.constraint.index: llguidance over the model's vocabulary) is built in
the worker, once per vocabulary and pattern; the vocabulary's token table is kept in the data
dir, so only the first session of a vocabulary walks the model's tokenizer for it.
No urwid, no torch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import replace

from tokentree.core.feature import Feature
from tokentree.core.snapshot import ConstraintLine

from . import ConstraintError
from .catalog import Struct, load_catalog
from .index import ConstraintIndex, Position, TextPosition, Vocabulary, vocabulary_for
from .mask import Mask

log = logging.getLogger(__name__)

_COMPILING = "compiling"  # an index entry while the worker builds it
_POSITIONS = 512  # nodes whose constraint position is kept (a mask is vocabulary/8 bytes)


class Constraint(Feature):
    name = "constraint"

    def __init__(self, core) -> None:
        super().__init__(core)
        self._structs: list[Struct] | None = None  # the catalog, read on the first r / R
        self._struct_problems: list[str] = []
        self._pick = 0  # the catalog entry r switches on (R moves it)
        self._picked = False  # R was pressed: the status bar shows the pick while none is on
        self._vocabulary: Vocabulary | None = None  # llguidance's view of the model's tokens
        self._indexes: dict[str, ConstraintIndex | str] = {}  # pattern -> index, or why there is none
        self._positions: OrderedDict[tuple[str, int, int], Position] = OrderedDict()  # (pattern, depth, node)
        self._rx_seen: tuple[int, dict] | None = None  # (session version, branch id -> Constraint)
        self._rx_wanted: tuple[str, str] | None = None  # (name, pattern) whose index the screen waits for

    # ------------------------------------------------------------------ commands
    def toggle(self) -> None:
        """r: switch the focused branch's regex constraint off, or the picked one on from here."""
        with self.core.view.reading():
            branch = self.core.focused_branch()
            rule = self._branch_constraints().get(branch.id)
        if rule is not None:
            self.core.command(self.core.store.clear_constraint, branch.id)
            self._picked = True
            self.core.message = f"regex {rule.name} off (r: on again from the current token; u undoes)"
            return
        structs = self._catalog()
        if not structs:
            return
        self._switch_on(branch, structs[self._pick % len(structs)])

    def cycle(self) -> None:
        """R: the next constraint of the catalog; while one is on, it takes its place from here."""
        structs = self._catalog()
        if not structs:
            return
        with self.core.view.reading():
            branch = self.core.focused_branch()
            rule = self._branch_constraints().get(branch.id)
        names = [s.name for s in structs]
        current = rule.name if rule is not None else (names[self._pick % len(names)] if self._picked else None)
        self._pick = (names.index(current) + 1) % len(names) if current in names else 0
        self._picked = True
        struct = structs[self._pick]
        if rule is None:
            self.core.message = (f"regex {struct.name} ({self._pick + 1} of {len(structs)}): {_short(struct.pattern)}"
                            f"  (r switches it on){self._skipped()}")
            return
        if (struct.name, struct.pattern) == (rule.name, rule.pattern) and len(structs) == 1:
            self.core.message = f"regex {struct.name} is the only constraint"
            return
        self._switch_on(branch, struct, run="constraint")

    def _switch_on(self, branch, struct: Struct, run: str | None = None) -> None:
        with self.core.view.reading():
            depth = self.core.view.node(branch.node_id).depth
        self.core.command(self.core.store.set_constraint, branch.id, struct.name, struct.pattern, depth=depth, run=run)
        if struct.pattern not in self._indexes:
            self._rx_wanted = (struct.name, struct.pattern)  # the next take_job builds its index
        self.core.message = (f"regex {struct.name} on from here: {_short(struct.pattern)}  (r: off, R: next, u undoes)"
                        f"{self._skipped()}")

    def _catalog(self) -> list[Struct]:
        """The constraints to choose from (read once); a message says when there are none or
        some files were skipped."""
        if self._structs is None:
            self._structs, self._struct_problems = load_catalog(getattr(self.core.config, "structs", None))
        if not self._structs:
            self.core.message = ("no regex constraints: put one regular expression per file in prompts/structs/, "
                            "or add a [structs] table to config.toml"
                            + (f" (skipped: {self._struct_problems[0]})" if self._struct_problems else ""))
        return self._structs

    def _skipped(self) -> str:
        """Once: the constraints that were skipped, for the end of the first r / R message."""
        problems, self._struct_problems = self._struct_problems, []
        if not problems:
            return ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"; skipped {problems[0]}{more}"

    # ------------------------------------------------------------------ reads
    def _branch_constraints(self) -> dict:
        """branch id -> Constraint, read once per session version."""
        with self.core.view.reading() as r:
            version = self.core.view.version()
            if self._rx_seen is None or self._rx_seen[0] != version:
                self._rx_seen = (version, r.constraints(self.core.session_id))
            return self._rx_seen[1]

    def _position(self, index: ConstraintIndex, pattern: str, depth: int, node) -> Position:
        """Where `node`'s path stands after `depth` (kept per node: a mask is computed once)."""
        key = (pattern, depth, node.id)
        position = self._positions.get(key)
        if position is None:
            tokens = [n.token_id for n in self.core.view.path_of(node.id)[depth:]]
            position = self._positions[key] = index.position(tokens)
            if len(self._positions) > _POSITIONS:
                self._positions.popitem(last=False)
        else:
            self._positions.move_to_end(key)
        return position

    def token_filter(self, node, out) -> Mask | None:
        """The focused branch's constraint at `node` (Screen.candidate_rows applies it);
        None when the branch has none (and none was picked with R)."""
        with self.core.view.reading():
            branch = self.core.focused_branch()
            rule = self._branch_constraints().get(branch.id)
        if rule is None:
            if self._picked and self._structs:
                return Mask(ConstraintLine(self._structs[self._pick % len(self._structs)].name, "off"), False)
            return None
        if node.depth < rule.depth:
            return Mask(ConstraintLine(rule.name, "before", note=f"it starts after token {rule.depth}"), False)
        entry = self._indexes.get(rule.pattern)
        if isinstance(entry, str) and entry != _COMPILING:
            return Mask(ConstraintLine(rule.name, "failed", filters=True, note=entry), True)
        if entry is None or entry == _COMPILING:
            if entry is None:
                self._rx_wanted = (rule.name, rule.pattern)  # the next take_job builds its index
            position = self._text_position(rule, node, out)  # byte by byte until the index is built
            if position is None:
                note = "it compiles once the model is loaded" if self.core.engine is None else "compiling its index"
                return Mask(ConstraintLine(rule.name, "compiling", filters=True, note=note), True)
        else:
            position = self._position(entry, rule.pattern, rule.depth, node)
        line = ConstraintLine(rule.name, position.status, filters=True, vocab_allowed=position.allowed_count,
                              can_continue=position.can_continue)
        mass = 0.0
        if out is not None:
            allowed = 0
            for token, prob in zip(out.next.top_ids, out.next.top_probs):
                if position.allows(token):
                    allowed += 1
                    mass += prob
            line = replace(line, allowed=allowed, top_k=len(out.next.top_ids))
        return Mask(line, True, position, mass)

    def _text_position(self, rule, node, out) -> TextPosition | None:
        """The position walked byte by byte from the known token bytes (None: some unknown)."""
        view = self.core.view
        ids = [n.token_id for n in view.path_of(node.id)[rule.depth:]]
        more = list(out.next.top_ids) if out is not None else []
        more += [c.token_id for c in view.children_of(node.id)]
        pieces = view.pieces([*ids, *more])
        if any(t not in pieces for t in ids):
            return None
        stops = self.core.engine.stop_ids("eos") if self.core.engine is not None else ()
        return TextPosition(rule.pattern, b"".join(pieces[t] for t in ids), pieces, stops)

    # ------------------------------------------------------------------ model work
    def next_task(self, idle: bool):
        """The index the focused branch's constraint needs, built in the worker: the
        vocabulary once (its token table from the data dir when a session had it before),
        then the pattern's matcher."""
        if idle or self.core.engine is None or self._rx_wanted is None:
            return None  # no store read here: the screen says which index it waits for
        name, pattern = self._rx_wanted
        self._rx_wanted = None
        if pattern in self._indexes:
            return None
        engine, vocab_key, vocabulary = self.core.engine, self.core.vocab_key, self._vocabulary
        stops = sorted(engine.stop_ids("eos"))
        self._indexes[pattern] = _COMPILING

        def run():
            vocab = vocabulary or vocabulary_for(vocab_key, lambda: _all_bytes(engine), stops)
            try:
                return vocab, ConstraintIndex(pattern, vocab)
            except ConstraintError as exc:
                return vocab, str(exc)

        def finish(result) -> None:
            self._vocabulary, self._indexes[pattern] = result
            if isinstance(result[1], str):
                self.core.message = f"regex {name} cannot be used with this model: {result[1]}"

        def fail(exc: BaseException) -> None:
            log.error("compiling the regex %s failed", name, exc_info=exc)
            self._indexes[pattern] = f"compiling it failed: {exc}"

        return self.core.task(f"compiling regex {name}", run, finish, fail)

    # ------------------------------------------------------------------ sampling
    def sampling_filter(self, path):
        """For `g`: a function the worker runs over the tokens each sample has drawn, giving
        the allowed next-token bitmask; its own matcher (the UI thread's is not shared)."""
        with self.core.view.reading():
            rule = self._branch_constraints().get(self.core.focused_branch().id)
            if rule is None:
                return None
            tip = path[-1]
            if tip.depth < rule.depth:
                return None  # it starts further on: a sample may cross it (not filtered)
            mask = self.token_filter(tip, self.core.view.outputs_for([tip.prefix_key]).get(tip.prefix_key))
        entry = self._indexes.get(rule.pattern)
        if not isinstance(entry, ConstraintIndex):
            return mask.blocked() if mask is not None and mask.filters else None
        if not mask.position.allowed_count:
            return mask.blocked()
        since = [n.token_id for n in path[rule.depth:]]
        own = ConstraintIndex(rule.pattern, entry.vocabulary)  # a matcher of its own, used by the worker only

        def allowed(drawn) -> bytes:
            return own.position([*since, *drawn]).mask

        return allowed


def _all_bytes(engine) -> list[bytes]:
    """The bytes of every id of the model's vocabulary (b"" for an id without any)."""
    pieces = engine.token_bytes(range(engine.vocab_size))
    return [pieces.get(i, b"") for i in range(engine.vocab_size)]


def _short(pattern: str, limit: int = 48) -> str:
    return pattern if len(pattern) <= limit else pattern[: limit - 1] + "\u2026"

"""Plain data the explorer hands to the UI: one immutable picture of the screen's content.

The TUI draws only from a Snapshot, so widget tests can build one without a model and the
explorer can be tested without urwid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokentree.features.compare.divergence import Divergence
from tokentree.tree.outline import TreeLine

# "disagreement" (|Δ log p| between two models) is offered only with a compare model: keep it last.
DISAGREEMENT = "disagreement"  # the prompt view that needs a compare model (the last one)
PROMPT_VIEWS = ("plain", "probability", "entropy", "influence", DISAGREEMENT)
LAYER_VIEWS = ("off", "layer", "layer_norm")


@dataclass(frozen=True)
class PromptToken:
    text: str  # the piece as it reads in running text ('' for the first bytes of a split character)
    token_id: int
    appended: bool  # added by the user (not part of the branch's root prompt)
    # The view value in [0, 1], or None for "n/a" (first token, not computed yet; in the
    # influence view the first token, the usual attention sink, and the last, the query).
    value: float | None
    special: bool = False  # a special or control token (its text is its marked name)


@dataclass(frozen=True)
class Turn:
    """A chat turn in the prompt pane: it opens at `start` (an index into Snapshot.prompt)."""

    start: int
    role: str
    folded: bool = False  # shown as one line (role, size, its start), not its text


@dataclass(frozen=True)
class CandidateRow:
    rank: int | None  # 1 = most likely; None when unknown
    token_id: int
    text: str  # tokentree.tree.text.visible form
    prob: float | None
    explored: bool  # the child node exists in the tree
    subtree: int  # nodes in the child's subtree (itself included); 0 when unexplored
    layers: tuple[float, ...] | None = None  # heat-map cells in a layer view, in [0, 1]
    # With the sampler column on: the probability a sampler with the [sampling] settings
    # gives this candidate (renormalized over the survivors); None when filtered out or off.
    sampled: float | None = None
    # With a compare model (--compare-model): this token's probability under it; with
    # `compare_bound` an upper bound (the token is outside its cached top K).
    compare: float | None = None
    compare_bound: bool = False
    # Under a regex constraint `prob` is renormalized over the allowed candidates and this is
    # the model's own probability; None without a constraint.
    raw: float | None = None
    special: bool = False  # a special or control token


@dataclass(frozen=True)
class BranchRow:
    id: int
    name: str
    depth: int  # tokens on the path
    appended: int  # tokens after the root prompt
    logprob: float | None  # sum of log p of the appended tokens; None if unknown or none
    perplexity: float | None
    focused: bool


@dataclass(frozen=True)
class Status:
    model: str
    device: str
    dtype: str
    session_id: int
    origin: str  # "cache", "forward" (a local pass), "request" (a server's), "waiting"
    ms: float | None  # forward-pass time of the shown node
    busy: str | None  # what the model worker is doing, None when idle
    engine_ready: bool
    error: str | None = None  # the last model error
    cancellable: bool = False  # the busy work stops on the `cancel` command (a fill)


@dataclass(frozen=True)
class CompareInfo:
    """The compare model at the focused node (features/compare/divergence.py says what is exact)."""

    model: str
    loading: bool  # its engine is not attached yet (numbers may still come from the cache)
    failed: str | None  # why it is not available
    waiting: bool  # no output of it at this node yet
    divergence: Divergence | None  # KL(main ‖ compare) and TV, when both outputs are known


@dataclass(frozen=True)
class ConstraintLine:
    """The focused branch's regex constraint (r / R) at the focused node, as the status bar
    and the table say it (features/constraint/feature.py computes it)."""

    name: str
    # "live", "complete", "dead" (tokentree.features.constraint); "off": picked with R, not switched on;
    # "before": the branch is above where it was switched on; "compiling"; "failed" (see note).
    status: str
    filters: bool = False  # the table lists only the tokens it allows
    allowed: int | None = None  # allowed candidates among the cached top K (None: not computed yet)
    top_k: int | None = None  # candidates cached at the node
    vocab_allowed: int | None = None  # tokens of the whole vocabulary it allows
    can_continue: bool = False  # some text token may follow (a complete e-mail can grow)
    note: str | None = None


@dataclass(frozen=True)
class Snapshot:
    prompt: tuple[PromptToken, ...]
    prompt_view: str
    layer_view: str
    candidates: tuple[CandidateRow, ...]
    selected: int  # index into candidates (0 when empty)
    waiting: bool  # the current node has no model output yet
    branches: tuple[BranchRow, ...]
    status: Status
    message: str | None
    # The last token of the branch: its probability and rank under its context ("n/a" for a
    # first token), and the entropy of the distribution after it.
    last_prob: float | None = None
    last_rank: int | None = None
    last_pending: bool = False  # its probability is not known YET (its node is being computed)
    entropy: float | None = None  # nats
    norm_entropy: float | None = None
    entropy_exact: bool = True  # False: a lower bound from a server's top-k (shown "≥")
    view_pending: bool = False  # the active view's values are still being computed
    # Influence view: the mean attention weight of the last position on position 0 (the sink).
    sink_share: float | None = None
    num_layers: int = 0
    tree: tuple[TreeLine, ...] = field(default_factory=tuple)
    version: int = 0  # the session's event version this was built from (commands carry it)
    sampler: str | None = None  # the sampler column's settings when it is on ("T 0.7 · top-p 0.9")
    search: str | None = None  # the active search, e.g. 'search "cat": match 2 of 5'
    compare: CompareInfo | None = None  # the compare model's state and numbers (None: none)
    constraint: ConstraintLine | None = None  # the regex constraint (None: none on, none picked)
    turns: tuple[Turn, ...] = ()  # a chat session's turns on the focused branch (features/chat.py)

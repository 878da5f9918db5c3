"""Event types of the exploration log: stable names (never import paths), one frozen
dataclass per type, and the JSON payloads they are stored as.

Every payload is a JSON object with a schema version ``"v"`` (currently 2) and one key per
field of its class. Payloads carry what the projector needs to apply the event AND what it
needs to invert it exactly (the previous node, focus, position or name), so that ``undo``
never has to guess.

=====================  ==================  ==================================================
type                   class               payload (besides ``"v": 2``)
=====================  ==================  ==================================================
session.started        SessionStarted      model_name, fingerprint, vocab_key,
                                           prompt_sources: [str], chat: {template,
                                           end_of_turn: [int], openers: [int]}|null
branch.created         BranchCreated       branch_id, name, position, root_tokens: [int],
                                           source: str|null, prev_focus: int|null, group,
                                           messages: [{role, content}]|null
token.appended         TokenAppended       branch_id, token_id, from_node, group
token.popped           TokenPopped         branch_id, from_node, group
branch.moved           BranchMoved         branch_id, node_id, from_node, group
branch.duplicated      BranchDuplicated    source_branch_id, branch_id, name, position,
                                           prev_focus: int|null, group
branch.removed         BranchRemoved       branch_id, position, prev_focus: int|null,
                                           new_focus: int|null, group
branch.focused         BranchFocused       branch_id, prev_focus: int|null, group
branch.reset           BranchReset         branch_id, from_node, group
branch.renamed         BranchRenamed       branch_id, name, prev_name, group
prompt.saved           PromptSaved         branch_id, path
samples.drawn          SamplesDrawn        branch_id, settings: {temperature, top_k, top_p,
                                           min_p, ...}, seed, count, steps, group: int
constraint.set         ConstraintSet       branch_id, name, pattern, depth, prev_name,
                                           prev_pattern, prev_depth (null: none), group
constraint.cleared     ConstraintCleared   branch_id, name, pattern, depth, group
undo                   Undo                target_seqs: [int] (newest first), target_type
=====================  ==================  ==================================================

``group`` (int|null) ties several events together so that ONE undo reverts them all (a fill,
a counterfactual pop + append, a set of samples). The caller picks the number; by convention
it is the session version of the group's first event.

Undoable: every type that changes branches, focus, names or constraints (all but session.started,
prompt.saved, samples.drawn and undo itself). ``undo`` reverts the latest undoable event of
the session that is not yet undone and, when that event has a group, every older undoable
not-undone event right before it with the same group (the newest unbroken run of that group
among the not-undone undoable events), newest first, in one ``undo`` event; repeated undos
walk further back; there is no redo. ``samples.drawn`` records how a set of sample branches
was drawn (its group is that of the branches it made); it changes no projection.

``chat`` and ``messages`` were added to v2 payloads with a default (null): a payload without
them reads as a plain-text session, and an older tokentree ignores them.

Payload versions: v1 had no ``group`` (upcast: ``"group": null``) and ``undo`` had
``target_seq: int`` (upcast: ``target_seqs: [target_seq]``).

Changing a payload's shape: bump :data:`PAYLOAD_VERSION`, change the class, and add an
upcaster to :data:`UPCASTERS` that turns the old payload into the new one. Stored rows are
never rewritten; old ones are upcast every time they are read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Union

from tokentree.errors import StoreError

PAYLOAD_VERSION = 2

SESSION_STARTED = "session.started"
BRANCH_CREATED = "branch.created"
TOKEN_APPENDED = "token.appended"
TOKEN_POPPED = "token.popped"
BRANCH_MOVED = "branch.moved"
BRANCH_DUPLICATED = "branch.duplicated"
BRANCH_REMOVED = "branch.removed"
BRANCH_FOCUSED = "branch.focused"
BRANCH_RESET = "branch.reset"
BRANCH_RENAMED = "branch.renamed"
PROMPT_SAVED = "prompt.saved"
SAMPLES_DRAWN = "samples.drawn"
CONSTRAINT_SET = "constraint.set"
CONSTRAINT_CLEARED = "constraint.cleared"
UNDO = "undo"


class EventFormatError(StoreError):
    """A stored payload this tokentree cannot read (unknown type, newer version, bad shape)."""


# --------------------------------------------------------------------------- event classes


@dataclass(frozen=True)
class SessionStarted:
    model_name: str
    fingerprint: str
    vocab_key: str
    prompt_sources: tuple[str, ...]
    chat: dict[str, Any] | None = None  # a chat session's format (chat/template.py ChatFormat)


@dataclass(frozen=True)
class BranchCreated:
    branch_id: int
    name: str
    position: int
    root_tokens: tuple[int, ...]
    prev_focus: int | None
    source: str | None = None
    group: int | None = None
    messages: tuple[dict[str, str], ...] | None = None  # a chat root: what its tokens were rendered from


@dataclass(frozen=True)
class TokenAppended:
    branch_id: int
    token_id: int
    from_node: int
    group: int | None = None


@dataclass(frozen=True)
class TokenPopped:
    branch_id: int
    from_node: int
    group: int | None = None


@dataclass(frozen=True)
class BranchMoved:
    branch_id: int
    node_id: int
    from_node: int
    group: int | None = None


@dataclass(frozen=True)
class BranchDuplicated:
    source_branch_id: int
    branch_id: int
    name: str
    position: int
    prev_focus: int | None
    group: int | None = None


@dataclass(frozen=True)
class BranchRemoved:
    branch_id: int
    position: int
    prev_focus: int | None
    new_focus: int | None
    group: int | None = None


@dataclass(frozen=True)
class BranchFocused:
    branch_id: int
    prev_focus: int | None
    group: int | None = None


@dataclass(frozen=True)
class BranchReset:
    branch_id: int
    from_node: int
    group: int | None = None


@dataclass(frozen=True)
class BranchRenamed:
    branch_id: int
    name: str
    prev_name: str
    group: int | None = None


@dataclass(frozen=True)
class PromptSaved:
    branch_id: int
    path: str


@dataclass(frozen=True)
class SamplesDrawn:
    """Not undoable and no projection change: the record of how the sample branches of
    `group` were drawn from `branch_id` (`count` continuations of up to `steps` tokens)."""

    branch_id: int
    settings: dict[str, Any]  # temperature, top_k, top_p, min_p (JSON scalars)
    seed: int
    count: int
    steps: int
    group: int


@dataclass(frozen=True)
class ConstraintSet:
    """A regex constraint switched on for a branch (r), or put in place of another (R): the
    tokens after `depth` must keep the text a viable prefix of `pattern` (the pattern as
    matched, recorded whole so that a resume and an export show what was in force). `prev_*`:
    the constraint it replaced (None: none), so that undo restores it."""

    branch_id: int
    name: str
    pattern: str
    depth: int
    prev_name: str | None = None
    prev_pattern: str | None = None
    prev_depth: int | None = None
    group: int | None = None


@dataclass(frozen=True)
class ConstraintCleared:
    """The branch's regex constraint switched off (r); its fields, so that undo restores it."""

    branch_id: int
    name: str
    pattern: str
    depth: int
    group: int | None = None


@dataclass(frozen=True)
class Undo:
    target_seqs: tuple[int, ...]  # newest first; the first is of type target_type
    target_type: str


EventData = Union[
    SessionStarted, BranchCreated, TokenAppended, TokenPopped, BranchMoved, BranchDuplicated,
    BranchRemoved, BranchFocused, BranchReset, BranchRenamed, PromptSaved, SamplesDrawn, Undo,
    ConstraintSet, ConstraintCleared,
]

# THE mapping between stored type names and classes (names are stored: never change one).
EVENT_CLASSES: dict[str, type] = {
    SESSION_STARTED: SessionStarted,
    BRANCH_CREATED: BranchCreated,
    TOKEN_APPENDED: TokenAppended,
    TOKEN_POPPED: TokenPopped,
    BRANCH_MOVED: BranchMoved,
    BRANCH_DUPLICATED: BranchDuplicated,
    BRANCH_REMOVED: BranchRemoved,
    BRANCH_FOCUSED: BranchFocused,
    BRANCH_RESET: BranchReset,
    BRANCH_RENAMED: BranchRenamed,
    PROMPT_SAVED: PromptSaved,
    SAMPLES_DRAWN: SamplesDrawn,
    UNDO: Undo,
    CONSTRAINT_SET: ConstraintSet,
    CONSTRAINT_CLEARED: ConstraintCleared,
}
TYPE_NAMES: dict[type, str] = {cls: name for name, cls in EVENT_CLASSES.items()}

EVENT_TYPES = frozenset(EVENT_CLASSES)
UNDOABLE = EVENT_TYPES - {SESSION_STARTED, PROMPT_SAVED, SAMPLES_DRAWN, UNDO}


def _v1_add_group(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "group": None}


def _v1_undo(payload: dict[str, Any]) -> dict[str, Any]:
    body = dict(payload)
    if "target_seq" in body:
        body["target_seqs"] = [body.pop("target_seq")]
    return body


# (type name, payload version v) -> a function turning a payload of version v into one of
# version v + 1. A missing entry means that type's payload did not change at that step.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    # v1 -> v2: undoable events got a group; undo reverts a list of events.
    **{
        (name, 1): _v1_add_group
        for name in (
            BRANCH_CREATED, TOKEN_APPENDED, TOKEN_POPPED, BRANCH_MOVED, BRANCH_DUPLICATED,
            BRANCH_REMOVED, BRANCH_FOCUSED, BRANCH_RESET,
        )
    },
    (UNDO, 1): _v1_undo,
}


def type_name(data: EventData) -> str:
    return TYPE_NAMES[type(data)]


def event_class(name: str) -> type:
    cls = EVENT_CLASSES.get(name)
    if cls is None:
        raise EventFormatError(f"unknown event type {name!r} (written by a newer tokentree?)")
    return cls


# --------------------------------------------------------------------------- payloads


# Fields added to v2 payloads later: left out while null, so a plain-text session's events
# are stored byte for byte as before.
_OMITTED_WHEN_NULL = frozenset({"chat", "messages"})


def to_payload(data: EventData) -> dict[str, Any]:
    """The payload fields of an event (without "v"), as stored."""
    return {f.name: value for f in dataclasses.fields(data)
            if (value := getattr(data, f.name)) is not None or f.name not in _OMITTED_WHEN_NULL}


def dump_payload(payload: Mapping[str, Any]) -> str:
    """The stored JSON text: sorted keys and no spaces, so equal payloads are equal bytes."""
    body = {"v": PAYLOAD_VERSION, **payload}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_payload(text: str) -> dict[str, Any]:
    return json.loads(text)


def upcast(name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload in the current version's shape (a copy; "v" set to the current one)."""
    v = payload.get("v")
    if not isinstance(v, int) or v > PAYLOAD_VERSION:
        raise EventFormatError(f"payload version {v!r}; this tokentree reads up to {PAYLOAD_VERSION}")
    body = dict(payload)
    while v < PAYLOAD_VERSION:
        step = UPCASTERS.get((name, v))
        if step is not None:
            body = step(body)
        v += 1
        body["v"] = v
    return body


def decode(name: str, payload: Mapping[str, Any]) -> EventData:
    """The typed event for a stored (type name, payload), upcast first if it is old.
    Keys the class does not know are ignored."""
    cls = event_class(name)
    body = upcast(name, payload)
    fields = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            value = body[f.name]
            fields[f.name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**fields)
    except TypeError as exc:
        raise EventFormatError(f"malformed {name} payload: {exc}") from None


# --------------------------------------------------------------------------- stored events


@dataclass(frozen=True)
class Event:
    """One row of the log: where it sits, its type name and its payload as stored."""

    seq: int
    session_id: int
    version: int
    type: str
    payload: dict[str, Any]  # as stored (an old row keeps its old shape here)
    created_at: str  # UTC, ISO 8601 ("2025-01-31T12:00:00.123456Z")

    @property
    def data(self) -> EventData:
        """The typed event (upcast when the row is old). EventFormatError if unreadable."""
        return decode(self.type, self.payload)


def event_from_row(row) -> Event:
    """An Event from a row of the events table."""
    return Event(
        seq=row.seq,
        session_id=row.session_id,
        version=row.version,
        type=row.type,
        payload=load_payload(row.payload),
        created_at=row.created_at,
    )


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

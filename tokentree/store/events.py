"""Event types of the exploration log: stable names (never import paths), one frozen
dataclass per type, and the JSON payloads they are stored as.

Every payload is a JSON object with a schema version ``"v"`` (currently 1) and one key per
field of its class. Payloads carry what the projector needs to apply the event AND what it
needs to invert it exactly (the previous node, focus or position), so that ``undo`` never
has to guess.

=====================  ==================  ==================================================
type                   class               payload (besides ``"v": 1``)
=====================  ==================  ==================================================
session.started        SessionStarted      model_name, fingerprint, vocab_key,
                                           prompt_sources: [str]
branch.created         BranchCreated       branch_id, name, position, root_tokens: [int],
                                           source: str|null, prev_focus: int|null
token.appended         TokenAppended       branch_id, token_id, from_node
token.popped           TokenPopped         branch_id, from_node
branch.moved           BranchMoved         branch_id, node_id, from_node
branch.duplicated      BranchDuplicated    source_branch_id, branch_id, name, position,
                                           prev_focus: int|null
branch.removed         BranchRemoved       branch_id, position, prev_focus: int|null,
                                           new_focus: int|null
branch.focused         BranchFocused       branch_id, prev_focus: int|null
branch.reset           BranchReset         branch_id, from_node
prompt.saved           PromptSaved         branch_id, path
undo                   Undo                target_seq, target_type
=====================  ==================  ==================================================

Undoable: every type that changes branches or focus (all but session.started, prompt.saved
and undo itself). ``undo`` reverts the latest undoable event of the session that is not yet
undone, so repeated undos walk further back; there is no redo.

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

PAYLOAD_VERSION = 1

SESSION_STARTED = "session.started"
BRANCH_CREATED = "branch.created"
TOKEN_APPENDED = "token.appended"
TOKEN_POPPED = "token.popped"
BRANCH_MOVED = "branch.moved"
BRANCH_DUPLICATED = "branch.duplicated"
BRANCH_REMOVED = "branch.removed"
BRANCH_FOCUSED = "branch.focused"
BRANCH_RESET = "branch.reset"
PROMPT_SAVED = "prompt.saved"
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


@dataclass(frozen=True)
class BranchCreated:
    branch_id: int
    name: str
    position: int
    root_tokens: tuple[int, ...]
    prev_focus: int | None
    source: str | None = None


@dataclass(frozen=True)
class TokenAppended:
    branch_id: int
    token_id: int
    from_node: int


@dataclass(frozen=True)
class TokenPopped:
    branch_id: int
    from_node: int


@dataclass(frozen=True)
class BranchMoved:
    branch_id: int
    node_id: int
    from_node: int


@dataclass(frozen=True)
class BranchDuplicated:
    source_branch_id: int
    branch_id: int
    name: str
    position: int
    prev_focus: int | None


@dataclass(frozen=True)
class BranchRemoved:
    branch_id: int
    position: int
    prev_focus: int | None
    new_focus: int | None


@dataclass(frozen=True)
class BranchFocused:
    branch_id: int
    prev_focus: int | None


@dataclass(frozen=True)
class BranchReset:
    branch_id: int
    from_node: int


@dataclass(frozen=True)
class PromptSaved:
    branch_id: int
    path: str


@dataclass(frozen=True)
class Undo:
    target_seq: int
    target_type: str


EventData = Union[
    SessionStarted, BranchCreated, TokenAppended, TokenPopped, BranchMoved, BranchDuplicated,
    BranchRemoved, BranchFocused, BranchReset, PromptSaved, Undo,
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
    PROMPT_SAVED: PromptSaved,
    UNDO: Undo,
}
TYPE_NAMES: dict[type, str] = {cls: name for name, cls in EVENT_CLASSES.items()}

EVENT_TYPES = frozenset(EVENT_CLASSES)
UNDOABLE = EVENT_TYPES - {SESSION_STARTED, PROMPT_SAVED, UNDO}

# (type name, payload version v) -> a function turning a payload of version v into one of
# version v + 1. A missing entry means that type's payload did not change at that step.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def type_name(data: EventData) -> str:
    return TYPE_NAMES[type(data)]


def event_class(name: str) -> type:
    cls = EVENT_CLASSES.get(name)
    if cls is None:
        raise EventFormatError(f"unknown event type {name!r} (written by a newer tokentree?)")
    return cls


# --------------------------------------------------------------------------- payloads


def to_payload(data: EventData) -> dict[str, Any]:
    """The payload fields of an event (without "v"), as stored."""
    return {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}


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

"""Event types of the exploration log: stable names (never import paths) and JSON payloads.

Every payload is a JSON object with a schema version ``"v"`` (currently 1). Payloads carry
what the projector needs to apply the event AND what it needs to invert it exactly (the
previous node, focus or position), so that ``undo`` never has to guess.

=====================  =======================================================================
type                   payload (besides ``"v": 1``)
=====================  =======================================================================
session.started        model_name, fingerprint, vocab_key, prompt_sources: [str]
branch.created         branch_id, name, position, root_tokens: [int], source: str|null,
                       prev_focus: int|null
token.appended         branch_id, token_id, from_node
token.popped           branch_id, from_node
branch.moved           branch_id, node_id, from_node
branch.duplicated      source_branch_id, branch_id, name, position, prev_focus: int|null
branch.removed         branch_id, position, prev_focus: int|null, new_focus: int|null
branch.focused         branch_id, prev_focus: int|null
branch.reset           branch_id, from_node
prompt.saved           branch_id, path
undo                   target_seq, target_type
=====================  =======================================================================

Undoable: every type that changes branches or focus (all but session.started, prompt.saved
and undo itself). ``undo`` reverts the latest undoable event of the session that is not yet
undone, so repeated undos walk further back; there is no redo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

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

UNDOABLE = frozenset(
    {
        BRANCH_CREATED,
        TOKEN_APPENDED,
        TOKEN_POPPED,
        BRANCH_MOVED,
        BRANCH_DUPLICATED,
        BRANCH_REMOVED,
        BRANCH_FOCUSED,
        BRANCH_RESET,
    }
)
EVENT_TYPES = UNDOABLE | {SESSION_STARTED, PROMPT_SAVED, UNDO}


@dataclass(frozen=True)
class Event:
    seq: int
    session_id: int
    version: int
    type: str
    payload: dict[str, Any]
    created_at: str  # UTC, ISO 8601 ("2025-01-31T12:00:00.123456Z")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dump_payload(payload: dict[str, Any]) -> str:
    body = {"v": PAYLOAD_VERSION, **payload}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_payload(text: str) -> dict[str, Any]:
    return json.loads(text)

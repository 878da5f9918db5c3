"""Plain, frozen records the Store returns (no SQLAlchemy objects leave the store)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    id: int
    parent_id: int | None
    token_id: int
    depth: int  # root = 1
    prefix_key: bytes


@dataclass(frozen=True)
class Branch:
    id: int
    session_id: int
    name: str
    position: int  # 0-based display order
    node_id: int  # current node
    root_node_id: int  # the node at the end of the root prompt
    focused: bool
    source: str | None = None  # where the root prompt came from (a file path, "stdin", ...)
    messages: tuple[dict[str, str], ...] | None = None  # a chat root's messages; None: plain text


@dataclass(frozen=True)
class Constraint:
    """The regex constraint in force on a branch: the tokens after `depth` must keep the text
    a viable prefix of `pattern`."""

    branch_id: int
    name: str
    pattern: str
    depth: int  # the depth of the node it was switched on at


@dataclass(frozen=True)
class SessionInfo:
    id: int
    created_at: str  # UTC ISO 8601
    last_used_at: str  # UTC ISO 8601, time of the session's latest event
    model_name: str
    fingerprint: str
    vocab_key: str
    prompt_sources: tuple[str, ...]
    chat: dict | None = None  # a chat session's format (chat.ChatFormat.to_json); None: plain text


@dataclass(frozen=True, kw_only=True)
class SessionSummary(SessionInfo):
    n_branches: int
    n_nodes: int
    first_line: str  # first non-empty line of the first branch's root prompt


@dataclass(frozen=True)
class RootPrompt:
    """A root prompt for Store.start_session: its tokens, where it came from, a branch name."""

    tokens: tuple[int, ...]
    source: str | None = None
    name: str | None = None

"""The write side: commands that each validate against the projections and append ONE event
(``record_samples``: the events of one group), which the projector applies in the same
transaction.

:class:`Commands` runs inside the caller's ``BEGIN IMMEDIATE`` transaction (see
:meth:`Store.writing`), so what it validates cannot change before its event is written.

``expected_version``: a command built from a screen passes the session version that screen
was read at; when the session has moved on (another window wrote to it), the command is
refused with :class:`StaleCommand` and writes nothing. None: no such check.

``group``: events that share a group number are undone by ONE undo (see :mod:`.events`). The
caller picks the number; by convention the session version of the group's first event (the
``expected_version + 1`` of its first command).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select
from sqlalchemy import exc as sa_exc

from tokentree.errors import ConcurrencyError, StaleCommand, StoreError

from . import events as ev
from . import projector
from .events import Event, EventData, dump_payload, to_payload, type_name, utc_now
from .reads import Reader
from .schema import branches_t, events_t

_INS_EVENT = insert(events_t)
_SEL_BRANCH = select(branches_t).where(branches_t.c.id == bindparam("bid"))
_SEL_BRANCH_NODE = select(branches_t.c.node_id).where(branches_t.c.id == bindparam("bid"))
_SEL_LIVE_AT = select(branches_t.c.id).where(
    branches_t.c.session_id == bindparam("sid"),
    branches_t.c.removed.is_(False),
    branches_t.c.position == bindparam("pos"),
)


def check_token_id(token_id: int) -> int:
    token_id = int(token_id)
    if token_id < 0 or token_id >= 1 << 32:
        raise StoreError("token ids must be in [0, 2**32)")
    return token_id


MAX_NAME = 40
# Bidirectional-text controls (they reorder what a terminal shows after them).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_group(group: int | None) -> int | None:
    if group is None:
        return None
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise StoreError("a group must be a positive integer (the session version of its first event)")
    return group


def check_branch_name(name: str) -> str:
    """The name as stored (stripped). StoreError when it is empty, longer than 40 characters,
    or holds a control character (C0/C1 controls, line/paragraph separators, bidi controls)."""
    if not isinstance(name, str):
        raise StoreError("a branch name must be text")
    name = name.strip()
    if not name:
        raise StoreError("a branch name cannot be empty")
    if len(name) > MAX_NAME:
        raise StoreError(f"a branch name has at most {MAX_NAME} characters (this one has {len(name)})")
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI_CONTROLS:
            raise StoreError(f"a branch name cannot contain control characters (found U+{ord(ch):04X})")
    return name


MAX_PATTERN = 4000


def check_constraint(name: str, pattern: str, depth: int) -> tuple[str, str, int]:
    """A constraint's recorded fields, checked (the store does not parse the pattern: the
    explorer checks it against the regex library before it records it)."""
    name = check_branch_name(name)
    if not isinstance(pattern, str) or not pattern:
        raise StoreError("a constraint's pattern must be non-empty text")
    if len(pattern) > MAX_PATTERN:
        raise StoreError(f"a constraint's pattern has at most {MAX_PATTERN} characters")
    return name, pattern, _check_int(depth, "a constraint's depth", minimum=1)


def _check_int(value: object, what: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreError(f"{what} must be an integer")
    if minimum is not None and value < minimum:
        raise StoreError(f"{what} must be at least {minimum}")
    return int(value)


def check_samples(
    settings: Mapping[str, Any],
    seed: int,
    continuations: Sequence[Sequence[int]],
    names: Sequence[str],
    steps: int,
) -> tuple[dict[str, Any], int, list[list[int]], list[str], int]:
    """record_samples' arguments, checked and normalized (no database needed)."""
    if not isinstance(settings, Mapping):
        raise StoreError("sample settings must be a mapping (temperature, top_k, top_p, min_p)")
    clean: dict[str, Any] = {}
    for key, value in settings.items():
        if not isinstance(key, str):
            raise StoreError("sample setting names must be text")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise StoreError(f"sample setting {key} must be a number, text or null")
        if isinstance(value, float) and not math.isfinite(value):
            raise StoreError(f"sample setting {key} must be finite")
        clean[key] = value
    seed = _check_int(seed, "the sample seed")
    steps = _check_int(steps, "the sample steps", minimum=0)
    if isinstance(continuations, (str, bytes)) or isinstance(names, (str, bytes)):
        raise StoreError("continuations and names must be sequences")
    conts = [[check_token_id(t) for t in c] for c in continuations]
    names = list(names)
    if len(names) != len(conts):
        raise StoreError(f"{len(conts)} sample continuation(s) but {len(names)} name(s)")
    if not conts:
        raise StoreError("no samples to record")
    return clean, seed, conts, [check_branch_name(n) for n in names], steps


class Commands:
    """Every command of the store, on one write connection."""

    def __init__(self, conn: Connection, db_path: Path) -> None:
        self.conn = conn
        self.read = Reader(conn, db_path)
        # (session, version) known in this transaction: it holds the write lock, so only its
        # own events move a version it has read (the second read of it is saved).
        self._known_version: tuple[int, int] | None = None
        self.projected = None  # what the last event's projection returned (an append: the new node)

    # ------------------------------------------------------------------ the event log

    def append_event(
        self, session_id: int, type_: str, payload: dict[str, Any], expected_version: int | None
    ) -> Event:
        """Append one event at version `expected_version + 1` (None: the next one) and
        project it. ConcurrencyError when that version exists already."""
        if type_ not in ev.EVENT_TYPES:
            raise StoreError(f"unknown event type {type_!r}")
        known = self._known_version
        current = known[1] if known is not None and known[0] == session_id else self.read.version(session_id)
        expected = current if expected_version is None else expected_version
        if expected > current:
            raise ConcurrencyError(f"session {session_id} is at version {current}, not {expected}")
        created_at = utc_now()
        body = dump_payload(payload)
        try:
            seq = self.conn.execute(
                _INS_EVENT,
                dict(session_id=session_id, version=expected + 1, type=type_, payload=body, created_at=created_at),
            ).inserted_primary_key[0]
        except sa_exc.IntegrityError:
            raise ConcurrencyError(
                f"session {session_id} was changed by another tokentree process "
                f"(version {expected + 1} already exists); reopen the session"
            ) from None
        event = Event(
            seq=seq,
            session_id=session_id,
            version=expected + 1,
            type=type_,
            payload=ev.load_payload(body),
            created_at=created_at,
        )
        self.projected = projector.apply(self.conn, event)
        self._known_version = (session_id, expected + 1)
        return event

    def _append(self, session_id: int, data: EventData, expected_version: int | None) -> Event:
        return self.append_event(session_id, type_name(data), to_payload(data), expected_version)

    def _check_version(self, session_id: int, expected_version: int | None) -> None:
        """SessionNotFound for an unknown session; StaleCommand when the session is not at
        `expected_version`."""
        self.read.session_row(session_id)
        if expected_version is None:
            return
        current = self.read.version(session_id)
        self._known_version = (session_id, current)
        if current != expected_version:
            raise StaleCommand(
                f"session {session_id} was changed in another window (now at version {current}, "
                f"this screen shows {expected_version}); the screen has been refreshed"
            )

    # ------------------------------------------------------------------ validation helpers

    def _live_branch(self, session_id: int, branch_id: int):
        row = self.conn.execute(_SEL_BRANCH, {"bid": branch_id}).first()
        if row is None or row.session_id != session_id or row.removed:
            raise StoreError(f"no branch {branch_id} in session {session_id}")
        return row

    def _next_branch_id(self) -> int:
        """Max + 1 over every branch row, removed ones included: ids are never reused."""
        return (self.conn.execute(select(func.max(branches_t.c.id))).scalar() or 0) + 1

    def _default_name(self, session_id: int) -> str:
        made = self.conn.execute(
            select(func.count()).select_from(branches_t).where(branches_t.c.session_id == session_id)
        ).scalar_one()
        return f"branch {made + 1}"

    # ------------------------------------------------------------------ commands

    def start_session(
        self, *, model_name: str, fingerprint: str, vocab_key: str, prompt_sources: Sequence[str],
        chat: dict | None = None,
    ) -> int:
        sid = (self.conn.execute(select(func.max(events_t.c.session_id))).scalar() or 0) + 1
        started = ev.SessionStarted(
            model_name=model_name,
            fingerprint=fingerprint,
            vocab_key=vocab_key,
            prompt_sources=tuple(str(s) for s in prompt_sources),
            chat=chat,
        )
        self._append(sid, started, 0)
        return sid

    def create_branch(
        self,
        session_id: int,
        root_tokens: Sequence[int],
        *,
        source: str | None = None,
        name: str | None = None,
        expected_version: int | None = None,
        group: int | None = None,
        messages: Sequence[dict[str, str]] | None = None,
    ) -> int:
        group = check_group(group)
        tokens = [int(t) for t in root_tokens]
        if not tokens:
            raise StoreError("a branch needs a prompt of at least one token")
        if any(t < 0 or t >= 1 << 32 for t in tokens):
            raise StoreError("token ids must be in [0, 2**32)")
        self._check_version(session_id, expected_version)
        branch_id = self._next_branch_id()
        created = ev.BranchCreated(
            branch_id=branch_id,
            name=name if name is not None else self._default_name(session_id),
            position=self.read.live_branch_count(session_id),
            root_tokens=tuple(tokens),
            source=source,
            prev_focus=self.read.focus(session_id),
            group=group,
            messages=None if messages is None else tuple({"role": m["role"], "content": m["content"]} for m in messages),
        )
        self._append(session_id, created, expected_version)
        return branch_id

    def append_token(
        self,
        session_id: int,
        branch_id: int,
        token_id: int,
        *,
        expected_version: int | None = None,
        group: int | None = None,
    ) -> int:
        """Returns the branch's new node."""
        token_id = check_token_id(token_id)
        group = check_group(group)
        self._check_version(session_id, expected_version)
        branch = self._live_branch(session_id, branch_id)
        self._append(session_id, ev.TokenAppended(branch_id, token_id, branch.node_id, group), expected_version)
        return self.projected  # the projector's new node for the branch

    def pop_token(
        self, session_id: int, branch_id: int, *, expected_version: int | None = None, group: int | None = None
    ) -> int:
        """Returns the branch's new node (the parent of the old one)."""
        group = check_group(group)
        self._check_version(session_id, expected_version)
        branch = self._live_branch(session_id, branch_id)
        parent = self.read.node(branch.node_id).parent_id
        if parent is None:
            raise StoreError("cannot pop the only token of the path")
        self._append(session_id, ev.TokenPopped(branch_id, branch.node_id, group), expected_version)
        return parent

    def move_branch(
        self,
        session_id: int,
        branch_id: int,
        node_id: int,
        *,
        expected_version: int | None = None,
        group: int | None = None,
    ) -> None:
        group = check_group(group)
        self._check_version(session_id, expected_version)
        branch = self._live_branch(session_id, branch_id)
        self.read.node(node_id)  # StoreError when there is no such node
        self._append(session_id, ev.BranchMoved(branch_id, int(node_id), branch.node_id, group), expected_version)

    def duplicate_branch(
        self, session_id: int, branch_id: int, *, expected_version: int | None = None, group: int | None = None
    ) -> int:
        """A copy right after the source, focused; returns its id."""
        group = check_group(group)
        self._check_version(session_id, expected_version)
        src = self._live_branch(session_id, branch_id)
        name = self._default_name(session_id)
        return self._duplicate(session_id, src, name, src.position + 1, group, expected_version)

    def _duplicate(self, session_id: int, src, name: str, position: int, group: int | None, expected_version) -> int:
        new_id = self._next_branch_id()
        duplicated = ev.BranchDuplicated(
            source_branch_id=src.id,
            branch_id=new_id,
            name=name,
            position=position,
            prev_focus=self.read.focus(session_id),
            group=group,
        )
        self._append(session_id, duplicated, expected_version)
        return new_id

    def remove_branch(self, session_id: int, branch_id: int, *, expected_version: int | None = None) -> None:
        self._check_version(session_id, expected_version)
        branch = self._live_branch(session_id, branch_id)
        if self.read.live_branch_count(session_id) <= 1:
            raise StoreError("cannot remove the last branch")
        focus = self.read.focus(session_id)
        new_focus = focus
        if focus == branch_id or focus is None:
            # the neighbour: the branch after it, else the one before it
            after = self.conn.execute(_SEL_LIVE_AT, {"sid": session_id, "pos": branch.position + 1}).scalar()
            before = self.conn.execute(_SEL_LIVE_AT, {"sid": session_id, "pos": branch.position - 1}).scalar()
            new_focus = after if after is not None else before
        removed = ev.BranchRemoved(branch_id=branch_id, position=branch.position, prev_focus=focus, new_focus=new_focus)
        self._append(session_id, removed, expected_version)

    def focus_branch(
        self, session_id: int, branch_id: int, *, expected_version: int | None = None, group: int | None = None
    ) -> None:
        group = check_group(group)
        self._check_version(session_id, expected_version)
        self._live_branch(session_id, branch_id)
        self._append(session_id, ev.BranchFocused(branch_id, self.read.focus(session_id), group), expected_version)

    def rename_branch(self, session_id: int, branch_id: int, name: str, *, expected_version: int | None = None) -> None:
        """Names are stripped, 1..40 characters, without control characters; need not be
        unique. Renaming to the current name is refused (an event never records a no-op)."""
        name = check_branch_name(name)
        self._check_version(session_id, expected_version)
        branch = self._live_branch(session_id, branch_id)
        if branch.name == name:
            raise StoreError(f"the branch is already called {name}")
        self._append(session_id, ev.BranchRenamed(branch_id, name, branch.name), expected_version)

    def record_samples(
        self,
        session_id: int,
        branch_id: int,
        *,
        settings: Mapping[str, Any],
        seed: int,
        continuations: Sequence[Sequence[int]],
        names: Sequence[str],
        steps: int,
        expected_version: int | None = None,
    ) -> tuple[list[int], int]:
        """Samples drawn from `branch_id`, as ONE group g (the version of its first event):
        samples.drawn, then per continuation a duplicate of the branch named names[i] (right
        after the source and the samples before it) and one token.appended per token, then
        the focus on the first new branch. Returns (the new branch ids in order, the session
        version after the last event). One undo removes them all and restores the focus."""
        settings, seed, conts, names, steps = check_samples(settings, seed, continuations, names, steps)
        self._check_version(session_id, expected_version)
        src = self._live_branch(session_id, branch_id)
        group = self.read.version(session_id) + 1
        drawn = ev.SamplesDrawn(
            branch_id=branch_id, settings=settings, seed=seed, count=len(conts), steps=steps, group=group
        )
        self._append(session_id, drawn, expected_version)
        new_ids: list[int] = []
        for i, (tokens, name) in enumerate(zip(conts, names)):
            new_id = self._duplicate(session_id, src, name, src.position + 1 + i, group, None)
            new_ids.append(new_id)
            node = src.node_id
            for token_id in tokens:
                self._append(session_id, ev.TokenAppended(new_id, token_id, node, group), None)
                node = self.conn.execute(_SEL_BRANCH_NODE, {"bid": new_id}).scalar_one()
        self._append(session_id, ev.BranchFocused(new_ids[0], self.read.focus(session_id), group), None)
        return new_ids, self.read.version(session_id)

    def reset_branch(self, session_id: int, branch_id: int, *, expected_version: int | None = None) -> None:
        """Back to the end of the branch's root prompt."""
        self._check_version(session_id, expected_version)
        branch = self._live_branch(session_id, branch_id)
        self._append(session_id, ev.BranchReset(branch_id, branch.node_id), expected_version)

    def record_prompt_saved(
        self, session_id: int, branch_id: int, path: str, *, expected_version: int | None = None
    ) -> None:
        self._check_version(session_id, expected_version)
        self._live_branch(session_id, branch_id)
        self._append(session_id, ev.PromptSaved(branch_id, str(path)), expected_version)

    def set_constraint(
        self, session_id: int, branch_id: int, name: str, pattern: str, *, depth: int | None = None,
        expected_version: int | None = None, group: int | None = None,
    ) -> None:
        """Switch the regex constraint `name` on for the branch, from `depth` (default: the
        branch's current node), in place of the one it has. The same constraint at the same
        depth again is refused (an event never records a no-op)."""
        group = check_group(group)
        self._check_version(session_id, expected_version)
        branch = self._live_branch(session_id, branch_id)
        if depth is None:
            depth = self.read.node(branch.node_id).depth
        name, pattern, depth = check_constraint(name, pattern, depth)
        prev = self.read.constraint(branch_id)
        if prev is not None and (prev.name, prev.pattern, prev.depth) == (name, pattern, depth):
            raise StoreError(f"the constraint {name} is already on from token {depth + 1}")
        self._append(session_id, ev.ConstraintSet(
            branch_id, name, pattern, depth, prev.name if prev else None, prev.pattern if prev else None,
            prev.depth if prev else None, group), expected_version)

    def clear_constraint(
        self, session_id: int, branch_id: int, *, expected_version: int | None = None, group: int | None = None
    ) -> None:
        """Switch the branch's regex constraint off (StoreError when it has none)."""
        group = check_group(group)
        self._check_version(session_id, expected_version)
        self._live_branch(session_id, branch_id)
        prev = self.read.constraint(branch_id)
        if prev is None:
            raise StoreError("the branch has no regex constraint on")
        self._append(session_id, ev.ConstraintCleared(branch_id, prev.name, prev.pattern, prev.depth, group),
                     expected_version)

    def undo(self, session_id: int, *, expected_version: int | None = None) -> str | None:
        """Revert the latest undoable event not yet undone, with the rest of its group when it
        has one, in ONE undo event; returns the (newest) reverted event's type name, or None
        when there is nothing to undo (nothing is written then)."""
        self._check_version(session_id, expected_version)
        targets = self.read.undo_targets(session_id)
        if not targets:
            return None
        newest_type = targets[0][1]
        undo = ev.Undo(target_seqs=tuple(seq for seq, _ in targets), target_type=newest_type)
        self._append(session_id, undo, expected_version)
        return newest_type

"""Database maintenance behind `tokentree db rebuild|check|backup`."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Connection, func, select, text

from tokentree.errors import StoreError

from . import events as ev
from . import migrate, projector
from .schema import PROJECTION_TABLES, Base, events_t
from .store import Store


def snapshot(conn: Connection) -> dict[str, list[tuple]]:
    """Every projection row, table by table, in primary-key order (for comparisons)."""
    out: dict[str, list[tuple]] = {}
    for name in PROJECTION_TABLES:
        table = Base.metadata.tables[name]
        order = list(table.primary_key.columns)
        out[name] = [tuple(r) for r in conn.execute(select(table).order_by(*order))]
    return out


def rebuild(store: Store) -> int:
    """Wipe the projections and replay every event in seq order, in one transaction.
    The model-output cache and token bytes are kept. Returns the number of events replayed."""
    with store.write_transaction() as conn:
        return projector.replay(conn)


def _diff(before: dict[str, list[tuple]], after: dict[str, list[tuple]]) -> list[str]:
    problems = []
    for name in PROJECTION_TABLES:
        a, b = set(before[name]), set(after[name])
        if a != b or len(before[name]) != len(after[name]):
            problems.append(
                f"projection {name} differs from a replay of the events "
                f"({len(a - b)} stale row(s), {len(b - a)} missing row(s))"
            )
    return problems


def check(store: Store) -> list[str]:
    """Problems found (an empty list means the database is healthy): SQLite integrity and
    foreign keys, schema revision, the event log's shape, and projections == replay."""
    problems: list[str] = []
    with store.read_transaction() as conn:
        for (line,) in conn.execute(text("PRAGMA integrity_check")):
            if line != "ok":
                problems.append(f"integrity: {line}")
        for row in conn.execute(text("PRAGMA foreign_key_check")):
            problems.append(f"foreign key: table {row[0]} rowid {row[1]} -> {row[2]}")
        current = migrate.current_revisions(conn)
        head = migrate.head_revision()
        if current != (head,):
            problems.append(f"schema at revision {current or 'none'}, expected {head}")
        triggers = {
            r[0]
            for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"))
        }
        for name in ("events_no_update", "events_no_delete"):
            if name not in triggers:
                problems.append(f"trigger {name} is missing (events are not protected)")
        sessions: dict[int, list[tuple[int, str]]] = {}
        log = select(events_t.c.session_id, events_t.c.version, events_t.c.type).order_by(events_t.c.seq)
        for sid, version, type_ in conn.execute(log):
            sessions.setdefault(sid, []).append((version, type_))
        for sid, rows in sessions.items():
            versions = [v for v, _ in rows]
            if versions != list(range(1, len(rows) + 1)):
                problems.append(f"session {sid}: event versions are not 1..{len(rows)} in seq order")
            if rows[0][1] != ev.SESSION_STARTED or any(t == ev.SESSION_STARTED for _, t in rows[1:]):
                problems.append(f"session {sid}: {ev.SESSION_STARTED} is not (only) its first event")
            unknown = sorted({t for _, t in rows} - ev.EVENT_TYPES)
            if unknown:
                problems.append(f"session {sid}: unknown event types {', '.join(unknown)}")
        last = conn.execute(text("SELECT last_seq FROM projector_checkpoint WHERE id = 1")).scalar()
        top = conn.execute(select(func.max(events_t.c.seq))).scalar()
        if last != top:
            problems.append(f"projector checkpoint at seq {last}, the last event is {top}")
        problems += _shape_problems(conn)
    if any(p.startswith("integrity") for p in problems):
        return problems
    # Replay into the live tables inside a transaction that is always rolled back.
    try:
        with store.write_transaction(commit=False) as conn:
            before = snapshot(conn)
            projector.replay(conn)
            problems += _diff(before, snapshot(conn))
    except StoreError as exc:
        problems.append(f"replay failed: {exc}")
    return problems


def _shape_problems(conn: Connection) -> list[str]:
    problems = []
    rows = conn.execute(
        text("SELECT session_id, position FROM branches WHERE removed = 0 ORDER BY session_id, position")
    ).all()
    by_session: dict[int, list[int]] = {}
    for sid, pos in rows:
        by_session.setdefault(sid, []).append(pos)
    for sid, positions in by_session.items():
        if positions != list(range(len(positions))):
            problems.append(f"session {sid}: branch positions are {positions}, not 0..{len(positions) - 1}")
    bad_focus = conn.execute(
        text(
            "SELECT focus.session_id FROM focus JOIN branches ON branches.id = focus.branch_id "
            "WHERE branches.removed != 0 OR branches.session_id != focus.session_id"
        )
    ).all()
    for (sid,) in bad_focus:
        problems.append(f"session {sid}: focus is on a removed or foreign branch")
    return problems


def backup(store: Store, dest: str | Path) -> Path:
    """A consistent copy of the database (``VACUUM INTO``), created user-only (0600).
    Refuses to overwrite an existing non-empty file."""
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and (not dest.is_file() or dest.stat().st_size > 0):
        raise StoreError(f"{dest} already exists; choose a new file for the backup")
    if not dest.parent.is_dir():
        raise StoreError(f"cannot write the backup: {dest.parent} is not a directory")
    created = False
    try:
        if not dest.exists():
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            created = True
        raw = store.engine.raw_connection()
        try:
            raw.driver_connection.execute("VACUUM INTO ?", (str(dest),))
        finally:
            raw.close()
    except (OSError, sqlite3.Error) as exc:
        if created:
            dest.unlink(missing_ok=True)
        raise StoreError(f"backup to {dest} failed: {' '.join(str(exc).split())}") from None
    return dest

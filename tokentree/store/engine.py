"""SQLAlchemy engine for the tokentree SQLite file.

* ``foreign_keys=ON`` and ``busy_timeout`` on every connection.
* pysqlite's own transaction handling is switched off (``isolation_level = None``) and
  SQLAlchemy's ``begin`` event emits BEGIN itself (the documented pysqlite recipe), so that
  writes run in ``BEGIN IMMEDIATE`` (take the write lock up front: no deadlock-prone lock
  upgrades between two processes) while reads use a plain deferred ``BEGIN`` (WAL readers
  never block the writer).
* WAL is switched on by :func:`enable_wal` once the file is known to be ours (it is a
  persistent property of the file).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

from tokentree.errors import StoreError

BEGIN_OPTION = "tokentree_begin"


def make_engine(path: Path, *, timeout: float = 5.0) -> tuple[Engine, Engine]:
    """(read engine, write engine) sharing one pool: reads BEGIN, writes BEGIN IMMEDIATE."""
    engine = create_engine(
        URL.create("sqlite", database=str(path)),
        connect_args={"timeout": timeout, "check_same_thread": False},
    )
    busy_ms = max(0, int(timeout * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # pragma: no branch
        # Stop pysqlite from emitting BEGIN (and COMMIT before DDL) on its own.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            # WAL + NORMAL: a killed process loses nothing that was committed; only a power
            # cut can roll back the last few commits (the file stays consistent either way).
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get(BEGIN_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    return engine, engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})


def enable_wal(engine: Engine) -> None:
    raw = engine.raw_connection()
    try:
        mode = raw.driver_connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        raw.close()
    if str(mode).lower() != "wal":  # pragma: no cover - e.g. some network filesystems
        raise StoreError(f"could not switch the database to WAL mode (journal mode is {mode})")

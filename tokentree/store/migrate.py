"""Schema migrations, run in code at every start (never via the ``alembic`` binary).

The migrations live in the top-level ``migrations/`` folder of a checkout and in
``tokentree/_data/migrations`` in a wheel; :func:`tokentree.resources.resource_path` finds
either. ``migrations/env.py`` runs on the connection passed in
``config.attributes["connection"]`` (inside the caller's BEGIN IMMEDIATE transaction).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from tokentree.errors import StoreError
from tokentree.resources import resource_path

# The newest revision in migrations/versions. A database already at it is opened without
# importing alembic at all (a measurable part of `tokentree sessions`' start-up);
# tests/test_migrations.py keeps this equal to alembic's head.
SCHEMA_HEAD = "0005"

if TYPE_CHECKING:  # alembic is imported lazily: it is only needed when a database is opened
    from alembic.config import Config
    from alembic.script import ScriptDirectory


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resource_path("migrations")))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def script_directory() -> ScriptDirectory:
    """The migration scripts (read once per process: they do not change while it runs)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    heads = script_directory().get_heads()
    if len(heads) != 1:  # pragma: no cover - caught by the migrations test
        raise StoreError(f"tokentree is broken: {len(heads)} migration heads ({', '.join(heads)})")
    return heads[0]


def known_revisions() -> set[str]:
    return {rev.revision for rev in script_directory().walk_revisions()}


def current_revisions(conn: Connection) -> tuple[str, ...]:
    """The revisions recorded in alembic_version (read with plain SQL: no alembic import)."""
    if not inspect(conn).has_table("alembic_version"):
        return ()
    return tuple(sorted(r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))))


def check_database(conn: Connection, label: str) -> None:
    """Refuse a database this tokentree cannot use, before anything writes to it:
    a schema revision we do not know (written by a newer tokentree) or a SQLite file that
    belongs to some other program (tables, but no alembic_version)."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables:
        if tables:
            raise StoreError(f"{label} is an SQLite database but not a tokentree database")
        return
    current = current_revisions(conn)
    if current == (SCHEMA_HEAD,):
        return
    unknown = [rev for rev in current if rev not in known_revisions()]
    if unknown:
        raise StoreError(
            f"{label} was written by a newer tokentree (schema revision {unknown[0]}); upgrade tokentree to open it"
        )


def needs_upgrade(conn: Connection) -> bool:
    current = current_revisions(conn)
    return current != (SCHEMA_HEAD,) and current != (head_revision(),)


def upgrade(conn: Connection, revision: str = "head") -> None:
    """Upgrade the database on `conn` (already in a transaction, which the caller commits)."""
    from alembic import command

    command.upgrade(alembic_config(conn), revision)

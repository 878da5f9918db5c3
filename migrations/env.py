"""Alembic environment for tokentree.

tokentree runs migrations in code (``tokentree.store.migrate.upgrade``) on its own
connection, passed in ``config.attributes["connection"]``. For developers, running the
``alembic`` tool against a file (``-x db=PATH``) also works, e.g. to autogenerate a revision.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from tokentree.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        # When the caller's connection is already in a transaction, Alembic joins it and
        # leaves the commit to the caller.
        with context.begin_transaction():
            context.run_migrations()
        return
    db = context.get_x_argument(as_dictionary=True).get("db")
    if not db:
        raise SystemExit("tokentree migrations: pass a connection, or -x db=PATH")
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("tokentree migrations do not support offline (--sql) mode")
run_migrations_online()

"""Alembic migrations: one head, run in code, the migrated schema equals the ORM metadata,
and a database from a newer tokentree is refused without being touched."""

from __future__ import annotations

import sqlite3

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from tokentree.errors import StoreError
from tokentree.outputs import Analysis
from tokentree.resources import resource_path
from tokentree.store import Store, migrate, prefix_key
from tokentree.store.cache import pack_f32, pack_u32
from tokentree.store.schema import Base


def _fingerprint(path):
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns


def test_migrations_are_found_through_resource_path():
    folder = resource_path("migrations")
    assert (folder / "env.py").is_file()
    assert (folder / "script.py.mako").is_file()
    assert list((folder / "versions").glob("0001_*.py"))


def test_single_head():
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1
    assert migrate.head_revision() == script.get_current_head()
    assert migrate.SCHEMA_HEAD == script.get_current_head()  # the no-alembic fast path is current


def test_migrations_run_on_the_callers_connection_and_transaction_in_batch_mode(tmp_path, monkeypatch):
    """env.py configures Alembic with the connection it is given (so a migration joins the
    caller's transaction) and render_as_batch (ALTERs on SQLite need table rebuilds)."""
    seen = []
    run_migrations = MigrationContext.run_migrations

    def spy(self, **kw):
        seen.append((self.connection, self.opts.get("render_as_batch")))
        return run_migrations(self, **kw)

    monkeypatch.setattr(MigrationContext, "run_migrations", spy)
    store = Store.open(tmp_path / "t.db")
    try:
        with store.write_transaction(commit=False) as conn:  # always rolled back
            command.downgrade(migrate.alembic_config(conn), "base")
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
            assert seen[-1] == (conn, True)
        with store.read_transaction() as conn:  # the rollback undid the downgrade
            assert migrate.current_revisions(conn) == (migrate.head_revision(),)
            assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
    finally:
        store.close()
    assert len(seen) == 2 and all(batch is True for _conn, batch in seen)  # open's upgrade too


def _named(constraints: dict[str, list[str | None]]) -> set[tuple[str, str | None]]:
    return {(table, name) for table, names in constraints.items() for name in names}


def test_migrated_constraints_carry_the_naming_convention(tmp_path):
    """Every constraint of the migrated schema has the name the metadata's naming convention
    gives it (a later batch migration can then drop or alter it by name)."""
    expected = {t.name: [c.name for c in t.constraints] for t in Base.metadata.tables.values()}
    store = Store.open(tmp_path / "t.db")
    try:
        with store.read_transaction() as conn:
            insp = inspect(conn)
            found = {}
            for name in Base.metadata.tables:
                found[name] = [insp.get_pk_constraint(name)["name"]]
                found[name] += [c["name"] for c in insp.get_unique_constraints(name)]
                found[name] += [c["name"] for c in insp.get_foreign_keys(name)]
                found[name] += [c["name"] for c in insp.get_check_constraints(name)]
    finally:
        store.close()
    assert all(name for _table, name in _named(expected)), "an unnamed constraint in the metadata"
    assert _named(found) == _named(expected)
    wanted = {("nodes", "uq_nodes_parent_id_token_id"), ("nodes", "fk_nodes_parent_id_nodes")}
    assert wanted | {("events", "ck_events_version_positive")} <= _named(found)


def test_empty_database_migrates_to_head_and_matches_the_orm(tmp_path):
    store = Store.open(tmp_path / "t.db")
    try:
        with store.read_transaction() as conn:
            assert migrate.current_revisions(conn) == (migrate.head_revision(),)
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
            assert diff == []
            triggers = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
            assert {"events_no_update", "events_no_delete"} <= triggers
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    finally:
        store.close()


def test_downgrade_to_base_and_upgrade_again(tmp_path):
    store = Store.open(tmp_path / "t.db")
    try:
        with store.write_transaction() as conn:
            command.downgrade(migrate.alembic_config(conn), "base")
            names = set(inspect(conn).get_table_names())
            assert names <= {"alembic_version"}
            migrate.upgrade(conn)
            assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
    finally:
        store.close()


def test_reopen_does_not_migrate_again(tmp_path):
    path = tmp_path / "t.db"
    Store.open(path).close()
    before = _fingerprint(path)
    Store.open(path).close()
    assert _fingerprint(path) == before


def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "t.db"
    store = Store.open(path)
    store.start_session(model_name="m", fingerprint="f", vocab_key="v", prompt_sources=[])
    store.close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    raw.commit()
    raw.close()
    before = _fingerprint(path)
    with pytest.raises(StoreError, match="newer tokentree") as info:
        Store.open(path)
    assert "\n" not in str(info.value)
    assert _fingerprint(path) == before


def test_foreign_sqlite_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "other.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT)")
    raw.execute("INSERT INTO recipes (name) VALUES ('soup')")
    raw.commit()
    raw.close()
    before = _fingerprint(path)
    with pytest.raises(StoreError, match="not a tokentree database"):
        Store.open(path)
    assert _fingerprint(path) == before


def test_0002_adds_the_sink_share_and_clears_influence_of_the_old_definition(tmp_path):
    """Influence cached before 0002 ranked heads with the attention sink in: it is a cache,
    so the upgrade clears it (the view recomputes it) and keeps the rest of the row; the
    downgrade drops the column and clears influence of the new definition (NaN positions)."""
    path = tmp_path / "t.db"
    store = Store.open(path)
    with store.write_transaction() as conn:
        command.downgrade(migrate.alembic_config(conn), "0001")
    store.close()
    key = prefix_key(None, 1, "v")
    raw = sqlite3.connect(path)
    assert "sink_share" not in {r[1] for r in raw.execute("PRAGMA table_info(node_analyses)")}
    raw.execute("INSERT INTO models (id, fingerprint) VALUES (1, 'fp')")
    raw.execute(
        "INSERT INTO node_analyses (prefix_key, model_id, influence, lens_ids, lens_layers, lens_probs) "
        "VALUES (?, 1, ?, ?, 1, ?)",
        (key, pack_f32([1.0, 0.01, 0.02]), pack_u32([4]), pack_f32([0.5])),
    )
    raw.commit()
    raw.close()
    store = Store.open(path)  # upgrades to head
    try:
        got = store.get_analysis(key, "fp")
        assert got.influence is None and got.sink_share is None
        assert got.lens_ids == (4,) and got.lens_probs == ((0.5,),)
        store.put_analysis(key, "fp", Analysis(influence=(None, 1.0, None), sink_share=0.5))
        assert store.get_analysis(key, "fp").sink_share == 0.5
        with store.write_transaction() as conn:
            command.downgrade(migrate.alembic_config(conn), "0001")
            insp = inspect(conn)
            assert "sink_share" not in {c["name"] for c in insp.get_columns("node_analyses")}
            # The batch rebuild kept the constraints' conventional names.
            assert [c["name"] for c in insp.get_unique_constraints("node_analyses")] == [
                "uq_node_analyses_prefix_key_model_id"]
            assert [c["name"] for c in insp.get_foreign_keys("node_analyses")] == ["fk_node_analyses_model_id_models"]
            row = conn.exec_driver_sql("SELECT influence, lens_ids FROM node_analyses").one()
            assert row[0] is None and row[1] is not None
            migrate.upgrade(conn)
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
        assert store.get_analysis(key, "fp").lens_ids == (4,)
    finally:
        store.close()

"""What a key press costs the store: at most one write transaction, and no read of what the
explorer already holds (issue: the screen keeps up with a fast model). Counted on the real
SQLite file through SQLAlchemy's events, BEGIN by BEGIN."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fake_engine import FakeEngine, new_session
from tokentree.config import Config
from tokentree.core.explorer import Explorer
from tokentree.paths import default_db_path
from tokentree.store import Store

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.keypress_bench import SqlCounter  # noqa: E402  -- the benchmark's own count


@pytest.fixture
def explored(tokentree_home):
    """An explorer on a fake model with three appended tokens, every node computed."""
    store = Store.open(default_db_path())
    engine = FakeEngine()
    sid = new_session(store, engine, {"cat": " the cat sat"})
    ex = Explorer(store, sid, config=Config(), model_name=engine.loaded.name)
    ex.attach_engine(engine)
    ex.run_jobs_inline()
    for _ in range(3):
        ex.append()
        ex.run_jobs_inline()
    ex.snapshot()
    counter = SqlCounter(store)
    yield ex, counter
    counter.close()
    store.close()


def press(ex, counter, action) -> tuple[int, int, int]:
    """(statements, read transactions, write transactions) of one key's command and screen."""
    counter.take()
    action()
    ex.run_jobs_inline()
    ex.snapshot()
    return counter.take()


def test_a_cached_key_writes_once_and_reads_only_what_its_write_changed(explored):
    ex, counter = explored
    # A pop and an append of the explored child: one write each, then one read of the
    # branch state the write projected (nothing else: outputs, bytes, children are held).
    assert press(ex, counter, ex.pop)[1:] == (1, 1)
    assert press(ex, counter, ex.append)[1:] == (1, 1)
    # Keys that change no event: nothing read, nothing written, not one statement.
    assert press(ex, counter, lambda: ex.cursor(1)) == (0, 0, 0)
    assert press(ex, counter, ex.snapshot) == (0, 0, 0)


def test_the_follow_check_reads_the_store_again(explored):
    """Trust ends where the screen asks whether another window changed something."""
    ex, counter = explored
    counter.take()
    assert not ex.changed_elsewhere()
    assert counter.take()[1:] == (1, 0)

"""Speculative prefetch: the children of the candidates a user is looking at are computed
while they read, into the cache only; a key's own work never waits behind more than the one
step in flight."""

from __future__ import annotations

import threading
import time

import pytest

from fake_engine import FakeEngine, FakeLoaded, new_session
from tokentree.config import Config, DisplayConfig, ExploreConfig
from tokentree.core.explorer import Explorer
from tokentree.core.worker import Worker
from tokentree.outputs import Capabilities
from tokentree.paths import default_db_path
from tokentree.store import Store
from tokentree.store.keys import prefix_key


@pytest.fixture
def store():
    s = Store.open(default_db_path())
    yield s
    s.close()


def _explorer(store, engine, prefetch=3):
    sid = new_session(store, engine, {"cat": " the cat sat"})
    config = Config(display=DisplayConfig(tokens_to_show=5), explore=ExploreConfig(prefetch=prefetch))
    ex = Explorer(store, sid, config=config, engine=engine)
    ex.run_jobs_inline()
    return ex


def _run_prefetches(ex) -> int:
    n = 0
    while (task := ex.take_prefetch()) is not None:
        task.finish(task.run())
        n += 1
    return n


def test_the_selected_candidate_first_then_by_rank(store):
    engine = FakeEngine()
    ex = _explorer(store, engine)
    rows = ex.snapshot().candidates
    ex.cursor(2)  # select the third candidate
    order = []
    while (task := ex.take_prefetch()) is not None:
        order.append(task)
        task.finish(task.run())
    assert len(order) == 3
    # The third candidate's child came first: appending it finds its output cached.
    before = engine.forward_passes
    ex.append()
    snap = ex.snapshot()
    assert not snap.waiting and ex.take_job() is None  # shown at once, nothing to compute
    assert engine.forward_passes == before
    assert snap.prompt[-1].token_id == rows[2].token_id
    assert ex.features.prefetch.count == 3


def test_prefetched_outputs_are_cache_rows_never_events(store):
    engine = FakeEngine()
    ex = _explorer(store, engine)
    events = len(store.events(ex.session_id))
    assert _run_prefetches(ex) == 3
    assert len(store.events(ex.session_id)) == events
    assert _run_prefetches(ex) == 0  # all cached: nothing asked twice


def test_off_when_zero(store):
    ex = _explorer(store, FakeEngine(), prefetch=0)
    assert ex.take_prefetch() is None


def test_a_local_model_prefetches_only_when_idle(store):
    engine = FakeEngine()
    ex = _explorer(store, engine)
    ex.append()
    assert ex.take_job() is not None  # the append's own step is in flight
    assert ex.take_prefetch() is None  # so nothing speculative is started beside it


def test_a_server_keeps_several_in_flight(store):
    engine = FakeEngine()
    engine.capabilities = Capabilities(parallel=3)
    ex = _explorer(store, engine)
    tasks = [ex.take_prefetch() for _ in range(4)]
    assert all(tasks[:3]) and tasks[3] is None


def test_an_append_during_a_prefetch_waits_for_at_most_that_step(store):
    """A threaded worker, a model that holds each call until released: the append's job is
    handed over at once, right behind the one prefetch step in flight, never behind more."""
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    ex = _explorer(store, FakeEngine())  # the session's first outputs, unblocked
    ex.attach_engine(engine)
    worker = Worker()
    try:
        prefetch = ex.take_prefetch()
        worker.submit(prefetch)  # running, held by the gate
        assert ex.take_prefetch() is None  # one at a time on a local model
        ex.cursor(1)  # not the candidate being prefetched: its own step is needed
        ex.append()
        task = ex.take_job()
        assert task is not None  # not held back by the prefetch
        worker.submit(task)
        assert worker.pending == 2
        gate.set()
        deadline = time.monotonic() + 120  # a deadline for the state, generous on a busy machine
        while worker.pending:
            assert time.monotonic() < deadline, f"{worker.pending} job(s) still pending"
            worker.deliver()
            time.sleep(0.01)
        assert engine.forward_passes == 2  # the prefetch's step, then the append's
        assert not ex.snapshot().waiting
    finally:
        gate.set()
        worker.shutdown()


def test_an_append_of_the_candidate_being_prefetched_reuses_it(store):
    engine = FakeEngine()
    ex = _explorer(store, engine)
    prefetch = ex.take_prefetch()  # the selected (top) candidate's child
    ex.append()  # that very candidate
    assert ex.take_job() is None  # no second computation of the same node
    prefetch.finish(prefetch.run())
    assert not ex.snapshot().waiting


class _DownEngine(FakeEngine):
    """A backend whose every step fails as a server that went away does."""

    down = False

    def step(self, prefix, token):
        if self.down:
            from tokentree.lm.server import ServerError

            raise ServerError("cannot reach server 127.0.0.1:1 (refused)", transient=True)
        return super().step(prefix, token)


def test_a_failed_prefetch_never_blocks_the_keys_own_job(store):
    engine = _DownEngine()
    ex = _explorer(store, engine)
    engine.down = True
    task = ex.take_prefetch()
    try:
        task.finish(task.run())
    except Exception as exc:  # noqa: BLE001 -- as the worker delivers it
        task.fail(exc)
    assert ex.take_prefetch() is not None  # the next candidate, not the failed one again
    ex.main.prefetching.clear()
    ex.append()  # the very node the prefetch failed on
    job = ex.take_job()
    assert job is not None  # still asked for by the key
    try:
        job.finish(job.run())
    except Exception as exc:  # noqa: BLE001
        job.fail(exc)
    assert "retrying in" in ex.error  # and the failure is said, with the retry
    engine.down = False
    ex.main.retry_at = 0.0  # the back-off has passed
    ex.run_jobs_inline()
    assert not ex.snapshot().waiting and ex.message == "the server answers again"


class _DownCompare(_DownEngine):
    """A compare model (same vocabulary, its own numbers) that can go away like a server."""

    def __init__(self) -> None:
        super().__init__(FakeLoaded(name="fake-other", fingerprint="fake-other|float32"))

    def _probs(self, prefix) -> list[float]:
        return super()._probs(("other", *prefix))


def test_the_compare_model_is_prefetched_too(store):
    engine, other = FakeEngine(), _DownCompare()
    ex = _explorer(store, engine)
    ex.features.compare.set_model("fake-other", other.info.fingerprint, engine=other)
    ex.run_jobs_inline()  # the compare model's own path
    assert _run_prefetches(ex) == 6  # three children for each model
    tip = ex.focused_node()
    children = [prefix_key(tip.prefix_key, r.token_id, ex.vocab_key) for r in ex.snapshot().candidates[:3]]
    for fingerprint in (engine.info.fingerprint, other.info.fingerprint):
        assert set(store.get_outputs(children, fingerprint)) == set(children)
    before = (engine.forward_passes, other.forward_passes)
    ex.append()
    ex.run_jobs_inline()
    snap = ex.snapshot()
    assert not snap.waiting and not snap.compare.waiting and snap.compare.divergence is not None
    assert (engine.forward_passes, other.forward_passes) == before  # both from the prefetch


def test_the_compare_model_backs_off_like_the_main_model(store):
    engine, other = FakeEngine(), _DownCompare()
    ex = _explorer(store, engine, prefetch=0)
    ex.features.compare.set_model("fake-other", other.info.fingerprint, engine=other)
    ex.run_jobs_inline()  # the compare model's numbers for the path so far
    other.down = True
    ex.append()  # its next node is one step: the step fails as a server gone away
    ex.run_jobs_inline()
    assert ex.error.startswith("compare model fake-other: ") and "retrying in 1 s" in ex.error
    assert ex.take_job() is None and not ex.retry_due()  # waiting out the back-off, nothing lost
    assert not ex.snapshot().waiting  # the main model's numbers are there
    other.down = False
    ex.models[1].retry_at = 0.0  # the back-off has passed
    assert ex.retry_due()
    ex.run_jobs_inline()
    snap = ex.snapshot()
    assert not snap.compare.waiting and ex.message == "compare model fake-other: the server answers again"

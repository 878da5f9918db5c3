"""Exploration commands through the core: fill, sample, fork points, counterfactuals,
rename, search and the sampler column. Each change is events; undo takes a command back
whole; `db rebuild` equals the projections."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fake_engine import FakeEngine, new_session
from tokentree.config import Config, DisplayConfig, ExploreConfig, SamplingConfig
from tokentree.core.explorer import Explorer
from tokentree.errors import StoreError
from tokentree.paths import default_db_path
from tokentree.store import Store, maintenance

CONFIG = Config(display=DisplayConfig(tokens_to_show=5), explore=ExploreConfig(fill_tokens=6, sample_count=3))


@pytest.fixture
def store():
    s = Store.open(default_db_path())
    yield s
    assert maintenance.check(s) == []  # projections equal a replay of the events
    s.close()


@pytest.fixture
def engine():
    return FakeEngine()


def explorer_for(store, engine, config=CONFIG, prompts=None):
    sid = new_session(store, engine, prompts or {"cat": " the cat sat"})
    ex = Explorer(store, sid, config=config, model_name=engine.loaded.name)
    ex.attach_engine(engine)
    ex.run_jobs_inline()
    return ex


def tokens(ex) -> list[int]:
    return [t.token_id for t in ex.snapshot().prompt]


def greedy(engine, ids: list[int], n: int, stop=frozenset()) -> list[int]:
    """What a fill must append: the top token of each node, by an independent loop."""
    out = []
    for _ in range(n):
        top = engine.step(ids[:-1], ids[-1]).next.top_ids[0] if len(ids) > 1 else engine.prefill(ids)[-1].next.top_ids[0]
        ids = ids + [top]
        out.append(top)
        if top in stop:
            break
    return out


def test_fill_appends_the_top_candidate_and_undoes_as_one_step(store, engine):
    ex = explorer_for(store, engine)
    start = tokens(ex)
    expected = greedy(FakeEngine(), start, 6, engine.stop_ids("eos"))
    ex.features.fill.start()
    assert ex.busy and ex.busy.startswith("filling")
    ex.run_jobs_inline()
    assert tokens(ex) == start + expected
    assert ex.busy is None and "filled" in ex.message
    ex.undo()
    assert tokens(ex) == start  # one u takes the whole fill back


def test_fill_stops_at_a_newline_with_fill_stop_line(store, engine):
    config = replace(CONFIG, explore=ExploreConfig(fill_tokens=30, fill_stop="line"))
    ex = explorer_for(store, engine, config)
    start = tokens(ex)
    stops = engine.stop_ids("line")
    expected = greedy(FakeEngine(), start, 30, stops)
    ex.features.fill.start()
    ex.run_jobs_inline()
    assert tokens(ex) == start + expected
    assert (expected[-1] in stops) or len(expected) == 30


def test_esc_cancels_a_fill_and_keeps_what_it_appended(store, engine):
    ex = explorer_for(store, engine)
    start = tokens(ex)
    ex.features.fill.start()
    task = ex.take_job()  # one step computed ...
    task.finish(task.run())
    assert ex.cancel()  # ... then esc
    assert "stopped after" in ex.message
    ex.run_jobs_inline()
    done = tokens(ex)
    assert len(done) > len(start) and len(done) < len(start) + 6
    assert not ex.cancel()


def test_a_key_in_between_ends_the_fill(store, engine):
    ex = explorer_for(store, engine)
    ex.features.fill.start()
    task = ex.take_job()
    task.finish(task.run())
    ex.pop()  # the user moves on: the fill must not keep appending after this
    after_pop = tokens(ex)
    ex.run_jobs_inline()
    assert tokens(ex) == after_pop and ex.busy is None


def test_sample_makes_named_branches_reproducibly_and_undoes_as_one(store, engine):
    config = replace(CONFIG, sampling=SamplingConfig(seed=7))
    ex = explorer_for(store, engine, config)
    start = tokens(ex)
    ex.features.sample.start()
    ex.run_jobs_inline()
    snap = ex.snapshot()
    names = [b.name for b in snap.branches]
    assert names[-3:] == ["sample 1", "sample 2", "sample 3"]
    assert [b.focused for b in snap.branches if b.name == "sample 1"] == [True]
    drawn = FakeEngine().sample(start, count=3, steps=6, settings=config.sampling, seed=7,
                                stop_ids=engine.stop_ids("eos"))
    assert tokens(ex) == start + [t for t, _ in drawn[0]]
    event = next(e for e in store.events(ex.session_id) if e.type == "samples.drawn")
    assert event.payload["seed"] == 7 and event.payload["settings"]["temperature"] == 1.0
    ex.undo()
    assert [b.name for b in ex.snapshot().branches] == ["cat"]
    assert tokens(ex) == start


def test_counterfactual_replaces_the_last_token_and_undoes_as_one(store, engine):
    ex = explorer_for(store, engine)
    ex.append()  # the top candidate
    ex.run_jobs_inline()
    before = tokens(ex)
    top = FakeEngine().prefill(before[:-1])[-1].next.top_ids  # the parent's candidates, by rank
    assert before[-1] == top[0]
    ex.features.forks.counterfactual(1)
    ex.run_jobs_inline()
    assert tokens(ex) == before[:-1] + [top[1]]
    ex.features.forks.counterfactual(1)
    assert tokens(ex) == before[:-1] + [top[2]]
    ex.undo()  # pop + append come back as one step
    assert tokens(ex) == before[:-1] + [top[1]]
    ex.undo()
    assert tokens(ex) == before
    ex.features.forks.counterfactual(-1)
    assert tokens(ex) == before and "no previous candidate" in ex.message


def test_fork_points_move_to_unsure_nodes_and_back(store, engine):
    config = replace(CONFIG, explore=ExploreConfig(fill_tokens=8, fork_entropy=0.0))
    ex = explorer_for(store, engine, config)
    ex.features.fill.start()
    ex.run_jobs_inline()
    tip = tokens(ex)
    ex.features.forks.fork_point(-1)  # every node is "unsure" at threshold 0: one step back
    assert tokens(ex) == tip[:-1] and "fork point 1 token back" in ex.message
    ex.features.forks.fork_point(1)
    assert tokens(ex) == tip
    strict = replace(config, explore=ExploreConfig(fork_entropy=1.0))
    ex2 = Explorer(store, ex.session_id, config=strict)
    ex2.attach_engine(engine)
    ex2.features.forks.fork_point(-1)
    assert tokens(ex2) == tip and "no fork point" in ex2.message


def test_fork_point_stops_where_the_tree_branches(store, engine):
    config = replace(CONFIG, explore=ExploreConfig(fill_tokens=4, fork_entropy=1.0))
    ex = explorer_for(store, engine, config)
    ex.cursor(1)
    ex.append()  # a sibling branch of the tree at the prompt's tip
    ex.run_jobs_inline()
    ex.pop()
    ex.cursor(-1)  # the popped token is selected: take the top one instead
    ex.append()
    ex.run_jobs_inline()
    prompt_tip = tokens(ex)[:-1]
    ex.features.fill.start()
    ex.run_jobs_inline()
    ex.features.forks.fork_point(-1)
    assert tokens(ex) == prompt_tip and "the tree forks" in ex.message


def test_rename_is_an_event_and_undoes(store, engine):
    ex = explorer_for(store, engine)
    ex.features.branches.rename_branch("  my idea ")
    assert ex.features.branches.focused_branch_name == "my idea"
    assert store.events(ex.session_id)[-1].type == "branch.renamed"
    with pytest.raises(StoreError):
        ex.features.branches.rename_branch("")
    ex.undo()
    assert ex.features.branches.focused_branch_name == "cat"


def test_search_jumps_to_matches_and_steps_through_them(store, engine):
    ex = explorer_for(store, engine, prompts={"a": " the cat sat", "b": " a dog ran away"})
    ex.features.search.search("DOG")
    snap = ex.snapshot()
    assert "".join(t.text for t in snap.prompt).endswith(" a dog")
    assert snap.search == 'search "DOG": match 1 of 1'
    ex.features.search.search("the cat")
    snap = ex.snapshot()
    assert "".join(t.text for t in snap.prompt) == " the cat"  # a branch at the match
    branches = len(snap.branches)
    ex.features.search.step(1)  # one match: stays, no new branch per step
    assert len(ex.snapshot().branches) == branches
    ex.features.search.search("zebra")
    assert "no match" in ex.message
    ex.undo()  # the search's branch goes with one u
    assert len(ex.snapshot().branches) == branches - 1


def test_sampler_column_marks_survivors(store, engine):
    config = replace(CONFIG, sampling=SamplingConfig(top_k=2))
    ex = explorer_for(store, engine, config)
    ex.features.sampler.toggle()
    snap = ex.snapshot()
    kept = [r.sampled for r in snap.candidates]
    assert kept[2:] == [None] * (len(kept) - 2) and all(p is not None for p in kept[:2])
    p0, p1 = snap.candidates[0].prob, snap.candidates[1].prob
    assert kept[0] == pytest.approx(p0 / (p0 + p1)) and sum(kept[:2]) == pytest.approx(1.0)
    assert "top-k 2" in snap.sampler
    ex.features.sampler.toggle()
    assert ex.snapshot().sampler is None

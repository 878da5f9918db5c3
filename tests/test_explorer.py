"""The application core without a UI: commands become events, model work becomes jobs,
and cached nodes never reach the engine."""

from __future__ import annotations

import math

import pytest

from fake_engine import FakeEngine, FakeLoaded, new_session
from tokentree.config import Config, DisplayConfig
from tokentree.core.explorer import Explorer
from tokentree.errors import ModelLoadError, StaleCommand
from tokentree.paths import default_db_path, safe_stem, saved_prompts_dir
from tokentree.store import Store

CONFIG = Config(display=DisplayConfig(tokens_to_show=5))


@pytest.fixture
def store():
    s = Store.open(default_db_path())
    yield s
    s.close()


@pytest.fixture
def engine():
    return FakeEngine()


def explorer_for(store, engine, prompts=None, **kw):
    sid = new_session(store, engine, prompts or {"cat": " the cat sat", "dog": " a dog and"})
    ex = Explorer(store, sid, config=CONFIG, model_name=engine.loaded.name, **kw)
    ex.attach_engine(engine)
    ex.run_jobs_inline()
    return ex


def prompt_text(ex) -> str:
    return "".join(t.text for t in ex.snapshot().prompt)


def types(store, sid):
    return [e.type for e in store.events(sid)]


def test_prompt_is_one_pass_and_first_token_has_no_distribution(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat sat"})
    assert engine.forward_passes == 1  # the whole prompt in ONE pass
    snap = ex.snapshot()
    assert prompt_text(ex) == " the cat sat"
    assert len(snap.candidates) == 5 and snap.candidates[0].rank == 1 and not snap.waiting
    assert snap.status.origin == "forward" and snap.status.ms is not None
    ex.features.views.cycle_prompt_view()
    values = [t.value for t in ex.snapshot().prompt]
    assert values[0] is None and all(v is not None for v in values[1:])  # first token: n/a


def test_background_fills_other_branches(store, engine):
    ex = explorer_for(store, engine)
    rows = ex.snapshot().branches
    assert [r.name for r in rows] == ["cat", "dog"]
    assert [r.focused for r in rows] == [False, True]
    assert engine.forward_passes == 2  # one prefill per prompt, nothing else


def test_append_pop_and_revisit_costs_no_forward_pass(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat sat"})
    first = ex.snapshot().candidates
    ex.cursor(1)
    ex.append()
    ex.run_jobs_inline()
    assert ex.snapshot().prompt[-1].token_id == first[1].token_id
    passes = engine.forward_passes
    ex.pop()
    snap = ex.snapshot()
    assert snap.candidates[snap.selected].token_id == first[1].token_id  # popped token selected
    assert snap.candidates[snap.selected].explored and snap.candidates[snap.selected].subtree == 1
    ex.append()  # follows the existing child
    assert ex.run_jobs_inline() == 0
    assert engine.forward_passes == passes
    assert ex.snapshot().status.origin == "cache"
    assert types(store, ex.session_id)[-2:] == ["token.popped", "token.appended"]


def test_resume_reads_everything_from_the_cache(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat sat"})
    ex.append()
    ex.run_jobs_inline()
    before = ex.snapshot()
    # A new explorer on the same store: draws before any model is attached.
    again = Explorer(store, ex.session_id, config=CONFIG)
    snap = again.snapshot()
    assert snap.prompt == before.prompt and snap.candidates == before.candidates
    assert snap.status.engine_ready is False and snap.status.origin == "cache"
    fresh = FakeEngine()
    job = again.loading_job(lambda: fresh)
    assert again.busy and again.take_job() is None  # one job at a time
    job.finish(job.run())
    assert again.engine is fresh and again.run_jobs_inline() == 0
    assert fresh.forward_passes == 0


def test_resume_with_another_model_never_passes_off_old_numbers(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat sat"})
    ex.append()
    ex.run_jobs_inline()
    old = ex.snapshot()
    again = Explorer(store, ex.session_id, config=CONFIG, model_name="other-model")
    job = again.loading_job(lambda: FakeEngine(FakeLoaded(name="other-model", fingerprint="other-model|float32")))
    snap = again.snapshot()
    # While the new model loads, the screen shows the session model's cache and says so.
    assert snap.status.model == "fake-model (cached)" and "other-model" in snap.status.busy
    assert snap.candidates == old.candidates
    other = job.run()
    job.finish(other)
    waiting = again.snapshot()
    assert waiting.status.model == "other-model"
    assert waiting.waiting and waiting.status.origin == "waiting"  # nothing of fake-model's shown as its own
    again.run_jobs_inline()
    assert other.forward_passes >= 1 and again.snapshot().status.origin == "forward"


def test_attach_refuses_another_tokenizer(store, engine):
    ex = explorer_for(store, engine)
    with pytest.raises(ModelLoadError, match="different tokenizer"):
        ex.attach_engine(FakeEngine(FakeLoaded(vocab_key="other")))
    job = ex.loading_job(lambda: FakeEngine(FakeLoaded(vocab_key="other")))
    job.finish(job.run())
    assert "different tokenizer" in ex.snapshot().status.error


def test_model_error_is_reported_not_retried(store):
    class Broken(FakeEngine):
        def prefill(self, tokens):
            self.forward_passes += 1
            raise RuntimeError("boom")

    engine = Broken()
    ex = explorer_for(store, engine, {"cat": " the cat"})
    assert "boom" in ex.snapshot().status.error
    assert ex.run_jobs_inline() == 0 and engine.forward_passes == 1


def test_appends_queue_while_the_node_is_computed(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat"})
    ex.append()
    ex.append()  # the node from the first append has no distribution yet
    ex.append()
    assert ex.message == "waiting for the model (2 append(s) queued)"
    ex.run_jobs_inline()
    assert ex.snapshot().branches[0].appended == 3
    assert ex.message is None  # the queue is done: no count of appends still waiting


def test_walk_forward_returns_along_the_popped_path(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat"})
    for _ in range(3):
        ex.append()
        ex.run_jobs_inline()
    leaf = ex.snapshot().prompt
    ex.pop(), ex.pop(), ex.pop()
    assert len(ex.snapshot().prompt) == len(leaf) - 3
    ex.walk_forward()
    assert ex.snapshot().prompt == leaf
    assert types(store, ex.session_id)[-1] == "branch.moved"
    ex.walk_forward()
    assert ex.message == "no explored path ahead"


def test_walk_forward_follows_the_selected_child(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat"})
    base = len(ex.snapshot().prompt)
    for row in (0, 1):
        ex.selected_token = ex.snapshot().candidates[row].token_id
        ex.append()
        ex.run_jobs_inline()
        ex.append()
        ex.run_jobs_inline()
        ex.features.branches.reset_branch()
    ex.cursor(1)  # the second child, explored two deep
    ex.walk_forward()
    snap = ex.snapshot()
    assert len(snap.prompt) == base + 2


def test_branch_commands_and_undo(store, engine):
    ex = explorer_for(store, engine)
    names = lambda: [(b.name, b.focused) for b in ex.snapshot().branches]  # noqa: E731
    ex.features.branches.switch_branch(-1)
    assert names() == [("cat", True), ("dog", False)]
    ex.features.branches.switch_branch(-1)  # wraps around
    assert names() == [("cat", False), ("dog", True)]
    ex.features.branches.duplicate_branch()
    assert len(names()) == 3 and names()[2][1] is True
    ex.features.branches.remove_branch()
    assert len(names()) == 2
    ex.undo()
    assert len(names()) == 3 and ex.message.startswith("undid")
    ex.features.branches.remove_branch(), ex.features.branches.remove_branch()
    ex.features.branches.remove_branch()
    assert ex.message == "cannot remove the last branch" and len(names()) == 1


def test_reset_and_stats(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat"})
    ex.features.branches.reset_branch()
    assert ex.message == "already at the root prompt"
    for _ in range(2):
        ex.append()
        ex.run_jobs_inline()
    row = ex.snapshot().branches[0]
    probs = [t.value for t in ex.snapshot().prompt]  # plain view: values unused
    assert row.appended == 2 and row.logprob is not None and probs
    ex.features.views.cycle_prompt_view()
    appended = [t.value for t in ex.snapshot().prompt if t.appended]
    assert row.logprob == pytest.approx(sum(math.log(p) for p in appended))
    assert row.perplexity == pytest.approx(math.exp(-row.logprob / 2))
    ex.features.branches.reset_branch()
    assert ex.snapshot().branches[0].appended == 0
    assert types(store, ex.session_id)[-1] == "branch.reset"


def test_pop_stops_at_the_first_token(store, engine):
    ex = explorer_for(store, engine, {"cat": " the"})
    ex.pop()
    assert "nothing to pop" in ex.message


def test_influence_is_computed_once_and_cached(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat sat"})
    for _ in range(3):
        ex.features.views.cycle_prompt_view()
    assert ex.prompt_view == "influence" and ex.snapshot().view_pending
    ex.run_jobs_inline()
    snap = ex.snapshot()
    assert not snap.view_pending and snap.prompt[-2].value == 1.0
    assert snap.prompt[0].value is None and snap.prompt[-1].value is None  # the sink, the query: n/a
    assert snap.sink_share == 0.75
    assert engine.analyze_calls == 1
    again = Explorer(store, ex.session_id, config=CONFIG)
    again.attach_engine(engine)
    for _ in range(3):
        again.features.views.cycle_prompt_view()
    assert again.run_jobs_inline() == 0 and engine.analyze_calls == 1  # from the store


def test_layer_view_needs_layer_prob(store, engine):
    ex = explorer_for(store, engine)
    ex.features.views.cycle_layer_view()
    assert ex.layer_view == "off" and "--layer_prob" in ex.message
    ex = explorer_for(store, engine, layer_prob=True)
    ex.features.views.cycle_layer_view()
    ex.run_jobs_inline()
    snap = ex.snapshot()
    assert snap.num_layers == 4 and all(len(r.layers) == 4 for r in snap.candidates)
    ex.features.views.cycle_layer_view()
    assert max(ex.snapshot().candidates[1].layers) == pytest.approx(1.0)  # normalized per row


def test_layer_views_say_when_the_model_has_no_faithful_lens(store, engine):
    """A model whose last-layer lens does not match its own output (e.g. soft-capped
    logits) gets no layer numbers at all: the view says why instead."""
    from dataclasses import replace

    note = "not available for this model (soft-capped logits)"
    ex = explorer_for(store, engine, layer_prob=True)
    ex.features.views.cycle_layer_view()
    assert ex.layer_view == "layer"
    engine.capabilities = replace(engine.capabilities, layer_lens=False, layer_lens_note=note)
    ex.attach_engine(engine)  # e.g. the model loaded after a resume
    assert ex.layer_view == "off" and note in ex.message
    ex.features.views.cycle_layer_view()
    assert ex.layer_view == "off" and note in ex.message
    calls = engine.analyze_calls + engine.step_analysis_calls
    ex.append()
    ex.run_jobs_inline()
    assert engine.analyze_calls + engine.step_analysis_calls == calls
    assert all(r.layers is None for r in ex.snapshot().candidates)


def test_save_branch_never_overwrites(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat sat"})
    first = ex.features.branches.save_branch()
    assert first.parent == saved_prompts_dir() and first.name == "the-cat-sat.txt"
    assert first.read_text(encoding="utf-8") == " the cat sat"
    again = ex.features.branches.save_branch()  # the same text: no second file, and it says so
    assert again == first and ex.message == f"already saved as {first}"
    assert types(store, ex.session_id).count("prompt.saved") == 1
    first.write_text("edited by hand", encoding="utf-8")  # taken by other text: a new name
    second = ex.features.branches.save_branch()
    assert second.name == "the-cat-sat-2.txt" and first.read_text(encoding="utf-8") == "edited by hand"
    assert types(store, ex.session_id)[-1] == "prompt.saved"


@pytest.mark.parametrize("text,stem", [("../../etc/passwd", "etc-passwd"), ("", "branch"),
                                       ("\u65e5\u672c", "branch"), ("/abs/..", "abs")])
def test_safe_stem_cannot_escape(text, stem):
    assert safe_stem(text) == stem


def test_tree_lines_show_forks_and_branches(store, engine):
    ex = explorer_for(store, engine, {"cat": " the cat"})
    ex.append()
    ex.run_jobs_inline()
    ex.features.branches.duplicate_branch()
    ex.pop()
    ex.cursor(1)
    ex.append()
    ex.run_jobs_inline()
    lines = ex.snapshot(with_tree=True).tree
    assert lines[0].text.endswith(" the cat") and lines[0].indent == ""
    assert [line.indent for line in lines[1:]] == ["\u251c\u2500 ", "\u2514\u2500 "]
    assert [line.branches for line in lines] == [(), ("cat",), ("branch 2*",)]  # * = focused
    assert [line.current for line in lines] == [False, False, True]


def test_real_engine_revisiting_a_cached_node_runs_no_forward_pass(store, tiny_model):
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model

    engine = Engine(load_model(str(tiny_model)), top_k=CONFIG.top_k)
    ex = explorer_for(store, engine, {"story": "Once upon a time"})
    assert engine.forward_passes == 1
    ex.append()
    ex.run_jobs_inline()
    assert engine.forward_passes == 2
    ex.pop()
    ex.append()  # the same child again
    ex.pop()
    ex.walk_forward()
    assert ex.run_jobs_inline() == 0 and engine.forward_passes == 2
    # A second explorer on the same store (a resume) needs no pass either.
    again = Explorer(store, ex.session_id, config=CONFIG)
    again.attach_engine(engine)
    assert again.run_jobs_inline() == 0 and engine.forward_passes == 2
    assert again.snapshot().candidates == ex.snapshot().candidates


class _SqlCounter:
    """Statements (BEGIN included) and read transactions on the store's engine."""

    def __init__(self, store):
        from sqlalchemy import event

        from tokentree.store.engine import BEGIN_OPTION

        self.statements = self.reads = 0

        def on_exec(*args, **kwargs):
            self.statements += 1

        def on_begin(conn):
            if conn.get_execution_options().get(BEGIN_OPTION) != "IMMEDIATE":
                self.reads += 1

        event.listen(store.engine, "before_cursor_execute", on_exec)
        event.listen(store.engine, "begin", on_begin)

    def take(self):
        out = (self.statements, self.reads)
        self.statements = self.reads = 0
        return out


def test_cached_key_press_reads_the_store_a_bounded_number_of_times(store, engine):
    """A key press over cached nodes (command + its event + jobs + next snapshot) costs a
    few read transactions and a bounded number of SQL statements, however many branches the
    session has and however long the path is: no per-branch or per-token queries."""
    ex = explorer_for(store, engine, {"cat": " the cat sat on the mat"})
    for _ in range(12):
        ex.features.branches.duplicate_branch()
        ex.append()
        ex.run_jobs_inline()
    ex.snapshot()
    passes = engine.forward_passes
    counter = _SqlCounter(store)
    for action in [ex.pop, ex.append] * 4 + [ex.pop, ex.pop, ex.append, ex.append]:
        action()
        assert ex.run_jobs_inline() == 0
        snap = ex.snapshot()
        assert not snap.waiting and len(snap.branches) == 13
        statements, reads = counter.take()
        assert reads <= 3, f"{action.__name__}: {reads} read transactions"
        # ~20 of them are the command's own write transaction (event + projection).
        assert statements <= 35, f"{action.__name__}: {statements} SQL statements"
    assert engine.forward_passes == passes  # cached nodes: no model work


def test_new_node_in_an_analysis_view_is_one_forward_pass(store, engine):
    """Influence and layer views on: a new node's step also gives its analysis (one pass,
    `step_with_analysis`), not a step and then an analysis."""
    ex = explorer_for(store, engine, {"cat": " the cat sat"}, layer_prob=True)
    while ex.prompt_view != "influence":
        ex.features.views.cycle_prompt_view()
    ex.features.views.cycle_layer_view()
    ex.run_jobs_inline()  # the prompt's own analysis
    passes, analyses = engine.forward_passes, engine.analyze_calls
    for k in range(3):
        ex.append()
        assert ex.run_jobs_inline() == 1
        snap = ex.snapshot()
        assert not snap.view_pending and snap.num_layers == 4
        assert all(r.layers is not None for r in snap.candidates)
        assert snap.prompt[-2].value == 1.0 and snap.prompt[-1].value is None  # the new node's influence
        assert engine.forward_passes == passes + k + 1 and engine.analyze_calls == analyses
    assert engine.step_analysis_calls == 3
    # The same numbers a separate analysis would give, and they were stored.
    again = Explorer(store, ex.session_id, config=CONFIG, layer_prob=True)
    again.attach_engine(engine)
    while again.prompt_view != "influence":
        again.features.views.cycle_prompt_view()
    again.features.views.cycle_layer_view()
    assert again.run_jobs_inline() == 0
    a, b = again.snapshot(), ex.snapshot()
    assert (a.prompt, a.candidates, a.num_layers) == (b.prompt, b.candidates, b.num_layers)


def test_changes_by_another_explorer_show_in_the_cached_tree(store, engine):
    """Children, subtree sizes and the tree pane are kept in memory; nodes that another
    process adds (here an Explorer of another session, on its own connection to the file,
    growing the same prefix) still show on the next screen."""
    ex = explorer_for(store, engine, {"cat": " the cat"})
    ex.append()
    ex.run_jobs_inline()
    ex.pop()
    before = ex.snapshot(with_tree=True)
    assert [r.subtree for r in before.candidates if r.explored] == [1]
    with Store.open(store.path) as other_store:
        sid = new_session(other_store, engine, {"cat": " the cat"})  # the same nodes
        other = Explorer(other_store, sid, config=CONFIG)
        other.attach_engine(engine)
        other.run_jobs_inline()
        for _ in range(2):
            other.append()  # follows the explored child, then grows it
            other.run_jobs_inline()
        other.pop()
        other.pop()
        other.cursor(1)
        other.append()  # and a sibling of it
        other.run_jobs_inline()
    assert ex.changed_elsewhere()  # what the screen's follow check asks (every 0.5 s)
    snap = ex.snapshot(with_tree=True)
    fresh = Explorer(store, ex.session_id, config=CONFIG).snapshot(with_tree=True)
    assert snap.candidates == fresh.candidates and snap.tree == fresh.tree
    assert sorted(r.subtree for r in snap.candidates if r.explored) == [1, 2]


def test_tree_lines_after_changes_equal_a_fresh_explorers(store, engine):
    """The tree pane's caches (chains, texts, the session's node list) never go stale."""
    ex = explorer_for(store, engine, {"cat": " the cat"})
    steps = [ex.append, ex.append, ex.features.branches.duplicate_branch, ex.pop, lambda: ex.cursor(1), ex.append,
             ex.append, lambda: ex.features.branches.switch_branch(1), ex.pop, ex.pop, lambda: ex.cursor(2), ex.append,
             ex.undo, ex.walk_forward, ex.features.branches.duplicate_branch, ex.append, ex.features.branches.remove_branch]
    for step in steps:
        step()
        ex.run_jobs_inline()
        lines = ex.snapshot(with_tree=True).tree
        fresh = Explorer(store, ex.session_id, config=CONFIG, model_name=engine.loaded.name)
        fresh.attach_engine(engine)
        assert lines == fresh.snapshot(with_tree=True).tree


def test_a_command_from_a_stale_screen_is_refused(store, engine):
    """Two windows on one session file: what one window shows is what its keys act on.
    When the other window changed the session since, the command is refused (nothing is
    written) and the next screen shows the new state, from which commands work again."""
    ex = explorer_for(store, engine, {"cat": " the cat"})
    with Store.open(store.path) as other_store:
        other = Explorer(other_store, ex.session_id, config=CONFIG, model_name=engine.loaded.name)
        other.attach_engine(engine)
        mine = ex.snapshot()
        theirs = other.snapshot()
        assert mine.version == theirs.version
        other.cursor(2)
        other.append()  # the other window moves the branch on
        other.run_jobs_inline()
        before = store.events(ex.session_id)
        with pytest.raises(StaleCommand, match="another window"):
            ex.append()  # built from a screen that no longer shows the session
        assert store.events(ex.session_id) == before  # nothing written
        snap = ex.snapshot()  # the refresh shows the other window's change
        assert snap.version == mine.version + 1
        assert snap.prompt[-1].token_id == theirs.candidates[2].token_id
        ex.append()  # now built from the screen the user sees
        node = store.node(store.branches(ex.session_id)[0].node_id)
        assert node.token_id == ex.snapshot().prompt[-1].token_id
        assert store.events(ex.session_id)[-1].version == snap.version + 1
        with pytest.raises(StaleCommand):
            other.pop()  # and the other way round: its screen is stale now
        assert store.events(ex.session_id)[-1].version == snap.version + 1
        other.snapshot()
        other.pop()
        assert store.events(ex.session_id)[-1].type == "token.popped"


def test_a_run_of_the_same_key_undoes_as_one_step(store, engine):
    """Held left (or right) is one change for `u`; another key in between starts a new one."""
    ex = explorer_for(store, engine, {"cat": " the cat sat on the mat"})
    full = [t.token_id for t in ex.snapshot().prompt]
    for _ in range(4):
        ex.pop()
    assert len(ex.snapshot().prompt) == len(full) - 4
    ex.undo()  # all four pops
    assert [t.token_id for t in ex.snapshot().prompt] == full
    ex.append()
    ex.run_jobs_inline()
    ex.append()
    ex.run_jobs_inline()
    ex.cursor(1)  # another key: the next append is a new step
    ex.append()
    ex.run_jobs_inline()
    ex.undo()
    assert len(ex.snapshot().prompt) == len(full) + 2
    ex.undo()
    assert [t.token_id for t in ex.snapshot().prompt] == full

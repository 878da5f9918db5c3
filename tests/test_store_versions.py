"""Commands carry the session version their screen was built from: a stale one is refused
with StaleCommand and writes nothing; a current one appends exactly one event."""

from __future__ import annotations

import pytest

from tokentree.errors import ConcurrencyError, SessionNotFound, StaleCommand
from tokentree.store import Store, maintenance


@pytest.fixture
def two_windows(tmp_path):
    path = tmp_path / "t.db"
    one, two = Store.open(path), Store.open(path)
    yield one, two
    one.close()
    two.close()


def _commands(store, sid, a, b):
    """Every command, as (name, call(expected_version)); each is valid on the state they
    are run in, in this order."""
    node = store.branches(sid)[0].node_id
    return [
        ("create_branch", lambda v: store.create_branch(sid, [7, 8], expected_version=v)),
        ("append_token", lambda v: store.append_token(sid, a, 3, expected_version=v)),
        ("pop_token", lambda v: store.pop_token(sid, a, expected_version=v)),
        ("move_branch", lambda v: store.move_branch(sid, b, node, expected_version=v)),
        ("duplicate_branch", lambda v: store.duplicate_branch(sid, a, expected_version=v)),
        ("remove_branch", lambda v: store.remove_branch(sid, b, expected_version=v)),
        ("focus_branch", lambda v: store.focus_branch(sid, a, expected_version=v)),
        ("append_token in a group", lambda v: store.append_token(sid, a, 4, expected_version=v, group=v + 1)),
        ("rename_branch", lambda v: store.rename_branch(sid, a, "renamed", expected_version=v)),
        ("reset_branch", lambda v: store.reset_branch(sid, a, expected_version=v)),
        ("record_prompt_saved", lambda v: store.record_prompt_saved(sid, a, "p.txt", expected_version=v)),
        ("undo", lambda v: store.undo(sid, expected_version=v)),
    ]


def test_record_samples_refuses_a_stale_screen_and_counts_its_versions(two_windows):
    one, two = two_windows
    sid = one.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])
    a = one.create_branch(sid, [1, 2])
    seen = two.version(sid)
    one.append_token(sid, a, 9)
    conts = [[3, 4], [], [5]]
    kwargs = dict(settings={"temperature": 0.5}, seed=3, continuations=conts, names=["x", "y", "z"], steps=2)
    with pytest.raises(StaleCommand):
        two.record_samples(sid, a, expected_version=seen, **kwargs)
    assert one.version(sid) == seen + 1
    ids, version = two.record_samples(sid, a, expected_version=seen + 1, **kwargs)
    assert version == one.version(sid) == seen + 1 + 1 + sum(1 + len(c) for c in conts) + 1
    assert len(ids) == 3
    assert two.undo(sid, expected_version=version) is not None
    assert one.version(sid) == version + 1
    assert maintenance.check(one) == []


def test_stale_commands_are_refused_and_current_ones_add_one_version(two_windows):
    one, two = two_windows
    sid = one.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])
    a = one.create_branch(sid, [1, 2])
    b = one.create_branch(sid, [1, 5])
    with two.reading() as r:  # window two builds its screen
        seen = r.session_version(sid)
        assert r.branches(sid)[0].id == a
    one.append_token(sid, a, 9)  # window one changes the session meanwhile
    now = seen + 1
    events = one.events(sid)
    for name, run in _commands(two, sid, a, b):
        with pytest.raises(StaleCommand) as info:
            run(seen)
        message = str(info.value)
        assert message == (
            f"session {sid} was changed in another window (now at version {now}, this screen shows {seen}); "
            "the screen has been refreshed"
        ), name
        assert isinstance(info.value, ConcurrencyError)
    assert one.events(sid) == events  # nothing was written

    for name, run in _commands(two, sid, a, b):
        with two.reading() as r:
            version = r.session_version(sid)
        run(version)
        assert one.version(sid) == version + 1, name
        assert len(one.events(sid)) == version + 1, name
        with pytest.raises(StaleCommand):  # the same screen again: now it is stale
            run(version)
    assert maintenance.check(one) == []


def test_without_expected_version_commands_do_not_check(two_windows):
    one, two = two_windows
    sid = one.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])
    a = one.create_branch(sid, [1])
    one.append_token(sid, a, 2)
    two.append_token(sid, a, 3)
    assert one.version(sid) == 4


def test_a_version_ahead_of_the_session_is_stale_too(two_windows):
    one, _two = two_windows
    sid = one.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])
    a = one.create_branch(sid, [1])
    with pytest.raises(StaleCommand, match="now at version 2, this screen shows 5"):
        one.append_token(sid, a, 2, expected_version=5)
    assert one.version(sid) == 2


def test_session_version(two_windows):
    one, _two = two_windows
    sid = one.start_session(model_name="m", fingerprint="fp", vocab_key="v", prompt_sources=[])
    with one.reading() as r:
        assert r.session_version(sid) == 1 == r.version(sid)
        with pytest.raises(SessionNotFound):
            r.session_version(sid + 1)
        assert r.version(sid + 1) == 0  # the lenient form Store.version uses
    with pytest.raises(SessionNotFound):
        one.append_token(sid + 1, 1, 2, expected_version=0)

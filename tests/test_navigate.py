"""Fork points and search matches: pure functions, checked against brute force."""

from __future__ import annotations

import random
from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from tokentree.core.navigate import is_fork, next_fork, search_matches


class N(NamedTuple):
    id: int
    parent_id: int | None
    token_id: int


PIECES = {0: b"The", 1: b" cat", 2: b" sat", 3: b" on", 4: b" the", 5: b" mat", 6: b"\xe6\x97", 7: b"\xa5",
          8: b"CAT", 9: b"\n"}


def test_is_fork():
    assert is_fork(0.5, 1, 0.3) and is_fork(None, 2, 0.3) and is_fork(0.0, 3, 0.9)
    assert not is_fork(0.3, 1, 0.3) and not is_fork(None, 0, 0.3)


def test_next_fork_looks_strictly_on_one_side():
    path = [0.1, 0.9, 0.1, 0.1, 0.8, 0.1]
    fork = lambda x: x > 0.5  # noqa: E731
    assert next_fork(path, 3, -1, fork) == 1
    assert next_fork(path, 1, -1, fork) is None
    assert next_fork(path, 1, 1, fork) == 4
    assert next_fork(path, 4, 1, fork) is None


def random_tree(rng: random.Random, size: int) -> list[N]:
    nodes = [N(0, None, rng.randrange(len(PIECES)))]
    for i in range(1, size):
        parent = rng.randrange(i) if rng.random() < 0.8 else None
        nodes.append(N(i, parent, rng.randrange(len(PIECES))))
    return nodes


def brute_force(nodes: list[N], query: str) -> list[int]:
    by_id = {n.id: n for n in nodes}

    def text(node_id):
        ids = []
        while node_id is not None:
            ids.append(by_id[node_id].token_id)
            node_id = by_id[node_id].parent_id
        return b"".join(PIECES[t] for t in reversed(ids)).decode("utf-8", "replace").casefold()

    q = query.casefold()
    return [n.id for n in nodes if q in text(n.id) and (n.parent_id is None or q not in text(n.parent_id))]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.integers(1, 40),
       query=st.sampled_from(["cat", "the", " s", "at o", "\u65e5", "mat\n", "t", "xyz", "CAT on"]))
def test_search_matches_equal_brute_force(seed, size, query):
    nodes = random_tree(random.Random(seed), size)
    assert search_matches(nodes, PIECES, query) == brute_force(nodes, query)


def test_a_character_split_across_tokens_is_found():
    nodes = [N(1, None, 0), N(2, 1, 6), N(3, 2, 7)]
    assert search_matches(nodes, PIECES, "The\u65e5") == [3]
    assert search_matches(nodes, PIECES, "") == []

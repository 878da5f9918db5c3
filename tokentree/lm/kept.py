"""What both in-process backends (transformers, llama.cpp) share: the LRU of recent
next-token logits, and the checks on a sample request's arguments."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch


class KeptLogits:
    """float32 [V] next-token logits after recent prefixes, least recently used first: a step
    after a pop finds its parent's distribution here and feeds one token."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self._rows: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()

    def keep(self, tokens: tuple[int, ...], row: torch.Tensor) -> torch.Tensor:
        """Remember a float32 copy of `row` (a view would keep a whole [n, V] tensor alive)."""
        kept = self._rows[tokens] = row.to(torch.float32, copy=True)
        self._rows.move_to_end(tokens)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)
        return kept

    def get(self, tokens: tuple[int, ...]) -> torch.Tensor | None:
        kept = self._rows.get(tokens)
        if kept is not None:
            self._rows.move_to_end(tokens)
        return kept

    def __iter__(self):
        """The kept prefixes, least recently used first."""
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, tokens: tuple[int, ...]) -> bool:
        return tokens in self._rows


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


def closest_line(lines, target: tuple[int, ...], limit: int):
    """(the line sharing the longest prefix with `target`, capped at `limit`, and that
    length); the most recently used first wins ties, and a line that needs no crop beats
    one that does. (None, 0) when no line shares a token. `lines`: least recent first, each
    with a `tokens` tuple."""
    best, best_key = None, (0, False)
    for line in reversed(lines):
        start = min(common_prefix(line.tokens, target), limit)
        key = (start, len(line.tokens) == start)
        if key > best_key:
            best, best_key = line, key
    return best, best_key[0]


def sample_request(prefix: Sequence[int], settings, count: int, steps: int) -> tuple[tuple[int, ...], int, int]:
    """(prefix, count, steps) of a sample request, checked: a prefix of at least one token,
    a temperature > 0, no negative counts."""
    prefix = tuple(prefix)
    if not prefix:
        raise ValueError("sample needs a prefix of at least one token")
    if not settings.temperature > 0:
        raise ValueError(f"temperature must be > 0, not {settings.temperature!r}")
    return prefix, max(0, int(count)), max(0, int(steps))

"""The sampler column (v): which candidates a sampler with the [sampling] settings could
draw, and with what probability (tokentree/sampling.py computes it from the cached top-K)."""

from __future__ import annotations

from dataclasses import replace

from tokentree.core.feature import Feature


class SamplerColumn(Feature):
    name = "sampler"

    def __init__(self, core) -> None:
        super().__init__(core)
        self.on = False

    def toggle(self) -> None:
        self.on = not self.on

    def screen_state(self, state):
        return replace(state, sampler=self.core.config.sampling) if self.on else state

"""A model the explorer runs (the main model, a compare model): its engine, the cache view
its outputs are read and written through, its planner, its back-off after a server stopped
answering, and its speculative work in flight. No urwid, no torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .planner import Planner

MAX_BACKOFF = 30.0  # seconds between retries of a server that stopped answering


@dataclass
class ModelSlot:
    name: str
    view: Any  # the TreeView (main model) or a ModelView (its outputs under its own fingerprint)
    planner: Planner
    who: str = ""  # how errors name it: "" for the main model, "compare model NAME: " else
    engine: Any = None
    retry_at: float | None = None  # when a failed server request may be retried
    backoff: float = 0.0  # seconds; doubles on each transient failure, 0 after a success
    prefetching: dict[bytes, Any] = field(default_factory=dict)  # child prefix key -> its task
    prefetch_failed: set[bytes] = field(default_factory=set)  # never speculated on again

    def waiting(self) -> bool:
        """A server request failed and its back-off time has not passed yet."""
        if self.retry_at is None:
            return False
        if time.monotonic() < self.retry_at:
            return True
        self.retry_at = None
        return False

    def retry_due(self) -> bool:
        return self.retry_at is not None and time.monotonic() >= self.retry_at

    def back_off(self) -> float:
        """A transient failure (down, timed out, 5xx): the seconds until the next try."""
        self.backoff = min(MAX_BACKOFF, max(1.0, self.backoff * 2))
        self.retry_at = time.monotonic() + self.backoff
        return self.backoff

    def answered(self) -> bool:
        """A request succeeded. True when it had been backing off (it answers again)."""
        was, self.backoff = self.backoff, 0.0
        return bool(was)

    def attach(self, engine) -> None:
        self.engine = engine
        self.planner.whole_paths = engine.capabilities.prompt_logprobs
        self.planner.model_changed()

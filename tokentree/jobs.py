"""A unit of model work: `run` happens on the worker thread and may touch only the engine;
`finish`/`fail` happen on the UI thread and may touch the store and the explorer's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(eq=False)
class Job:
    label: str  # what the status bar says while it runs
    key: tuple  # identifies the work, so a failing job is not retried forever
    run: Callable[[], Any]
    finish: Callable[[Any], None]
    fail: Callable[[BaseException], None]

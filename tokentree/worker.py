"""The model worker: one thread runs every Job's `run` (the engine is single-threaded);
results are handed back to the UI thread, which applies them in `deliver()`.

The worker never touches the store or the widgets. After each job it calls `notify()` from
its own thread; the TUI passes a callback that wakes the urwid loop (a watch_pipe write),
and the loop then calls `deliver()` on the UI thread.
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from tokentree.jobs import Job

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, notify: Callable[[], None] = lambda: None) -> None:
        self._notify = notify
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokentree-model")
        self._done: queue.SimpleQueue[tuple[Job, Future]] = queue.SimpleQueue()
        self.pending = 0  # submitted, not yet delivered

    def submit(self, job: Job) -> None:
        self.pending += 1
        future = self._executor.submit(job.run)
        future.add_done_callback(lambda f: self._completed(job, f))

    def _completed(self, job: Job, future: Future) -> None:  # worker thread
        self._done.put((job, future))
        try:
            self._notify()
        except OSError:  # the UI is gone (pipe closed while quitting)
            pass

    def deliver(self) -> int:
        """Apply finished jobs on the calling (UI) thread; returns how many."""
        count = 0
        while True:
            try:
                job, future = self._done.get_nowait()
            except queue.Empty:
                return count
            self.pending -= 1
            count += 1
            exc = future.exception()
            if exc is not None:
                job.fail(exc)
            else:
                job.finish(future.result())

    def shutdown(self) -> None:
        """Stop taking work; a forward pass already running finishes in the background."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class InlineWorker:
    """Same interface, no thread: `submit` runs the job at once, `deliver` applies it.
    Used by widget tests so every key press has a deterministic result."""

    def __init__(self) -> None:
        self._done: list[tuple[Job, object, BaseException | None]] = []
        self.pending = 0

    def submit(self, job: Job) -> None:
        self.pending += 1
        try:
            self._done.append((job, job.run(), None))
        except Exception as exc:  # noqa: BLE001 -- delivered as a failure, like the thread
            self._done.append((job, None, exc))

    def deliver(self) -> int:
        done, self._done = self._done, []
        for job, result, exc in done:
            self.pending -= 1
            if exc is not None:
                job.fail(exc)
            else:
                job.finish(result)
        return len(done)

    def shutdown(self) -> None:
        pass

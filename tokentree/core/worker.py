"""The model worker: one thread runs every Task's `run` (the engine is single-threaded);
results are handed back to the UI thread, which applies them in `deliver()`.

The worker never touches the store or the widgets. After each job it calls `notify()` from
its own thread; the TUI passes a callback that wakes the urwid loop (a watch_pipe write),
and the loop then calls `deliver()` on the UI thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Task:
    """A unit of model work: `run` happens on the worker thread and may touch only the
    engine; `finish`/`fail` happen on the UI thread and may touch the store."""

    label: str  # what the status bar says while it runs
    run: Callable[[], Any]
    finish: Callable[[Any], None]
    fail: Callable[[BaseException], None]
    beside: bool = False  # may run beside the keys' own work (a server's prefetch: its own pool)


class Worker:
    """One daemon thread: quitting never waits for a forward pass or a model load to end
    (the process exits; the UI has already recorded everything)."""

    def __init__(self, notify: Callable[[], None] = lambda: None, *, threads: int = 1,
                 name: str = "tokentree-model") -> None:
        """`threads` > 1: a pool, for a backend that serves requests in parallel (a server)."""
        self._notify = notify
        self._todo: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[Task, object, BaseException | None]] = queue.SimpleQueue()
        self._ready = threading.Event()  # set after each finished job (see `wait`)
        self._threads = [threading.Thread(target=self._loop, name=name, daemon=True) for _ in range(max(1, threads))]
        for thread in self._threads:
            thread.start()
        self.pending = 0  # submitted, not yet delivered

    def submit(self, job: Task) -> None:
        self.pending += 1
        self._todo.put(job)

    def _loop(self) -> None:  # worker thread
        while (job := self._todo.get()) is not None:
            try:
                self._done.put((job, job.run(), None))
            except BaseException as exc:  # noqa: BLE001 -- delivered to the UI thread as a failure
                self._done.put((job, None, exc))
            self._ready.set()
            try:
                self._notify()
            except OSError:  # the UI is gone (pipe closed while quitting)
                pass

    def wait(self, timeout: float) -> bool:
        """Block the calling (UI) thread until a finished job is ready to deliver, at most
        `timeout` seconds; whether one is."""
        self._ready.clear()
        if not self._done.empty():  # cleared after it was set: the job is there
            return True
        return self._ready.wait(timeout)

    def deliver(self) -> int:
        """Apply finished jobs on the calling (UI) thread; returns how many."""
        count = 0
        while True:
            try:
                job, result, exc = self._done.get_nowait()
            except queue.Empty:
                return count
            self.pending -= 1
            count += 1
            if exc is not None:
                job.fail(exc)
            else:
                job.finish(result)

    def shutdown(self) -> None:
        """Stop taking work; a forward pass already running is abandoned with the process."""
        while True:
            try:
                self._todo.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._todo.put(None)


class InlineWorker:
    """Same interface, no thread: `submit` runs the job at once, `deliver` applies it.
    Used by widget tests so every key press has a deterministic result."""

    def __init__(self) -> None:
        self._done: list[tuple[Task, object, BaseException | None]] = []
        self.pending = 0

    def submit(self, job: Task) -> None:
        self.pending += 1
        try:
            self._done.append((job, job.run(), None))
        except Exception as exc:  # noqa: BLE001 -- delivered as a failure, like the thread
            self._done.append((job, None, exc))

    def wait(self, timeout: float) -> bool:
        """Never waits: a test sees the "waiting" screen until it delivers (`settle`)."""
        return False

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

"""ctrl+c in the explorer: a request to stop, acted on by the main loop, not an exception
raised wherever the main thread happens to be.

Python raises KeyboardInterrupt from the signal handler at the next bytecode; when that is a
weakref callback (urwid's canvas cache cleans up through them) or a `__del__`, the exception
is printed as "ignored" and lost, and the explorer goes on as if ctrl+c was never pressed.
Here the handler only writes a byte to a pipe the main loop watches; the loop's callback
then stops the loop from a known place.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import urwid


class Interrupted(Exception):
    """The user pressed ctrl+c; raised out of the main loop from its own pipe callback."""


@contextlib.contextmanager
def ctrl_c_stops(loop: urwid.MainLoop) -> Iterator[None]:
    """While inside, SIGINT stops `loop.run()` with `Interrupted`. A SIGINT the parent chose
    to ignore stays ignored (the handler is only replaced where it is Python's default)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def stop(data: bytes) -> bool:
        if data:
            raise Interrupted
        return False

    fd = loop.watch_pipe(stop)

    def on_sigint(_signum, _frame) -> None:
        with contextlib.suppress(OSError):  # the pipe is already closed: we are on the way out
            os.write(fd, b"i")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        with contextlib.suppress(OSError):
            os.close(fd)

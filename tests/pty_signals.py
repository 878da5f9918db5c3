"""The signal dispositions a program started from a terminal has.

A test run started in the background (`cmd &` in a script, nohup, some CI runners) ignores
SIGINT and SIGQUIT, and an ignored signal stays ignored across exec: the child would never
see the ctrl+c a test types (Python installs its KeyboardInterrupt handler only where SIGINT
is not ignored). Every pty child resets them first (pexpect's preexec_fn), as a login shell
would have them."""

from __future__ import annotations

import signal


def as_from_a_terminal() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)

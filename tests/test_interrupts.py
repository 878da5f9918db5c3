"""ctrl+c reaches the explorer wherever the main thread is when it comes.

The case that lost it: SIGINT arriving while a weakref callback runs (urwid's canvas cache
cleans up through them). Python raises KeyboardInterrupt inside the callback, prints it as
"ignored", and the main loop goes on. Here the signal is sent from inside such a callback, so
the case is hit every run, not by chance.
"""

from __future__ import annotations

import gc
import os
import signal
import weakref

import pytest
import urwid

from tokentree.tui.interrupts import Interrupted, ctrl_c_stops


class _Thing:
    pass


def _loop_on_a_pty():
    master, slave = os.openpty()
    tty_in = os.fdopen(slave, "rb", buffering=0)
    tty_out = open(os.ttyname(slave), "w", encoding="utf-8")  # noqa: SIM115 -- closed by the fixture
    screen = urwid.display.raw.Screen(input=tty_in, output=tty_out)
    loop = urwid.MainLoop(urwid.SolidFill("."), screen=screen, handle_mouse=False)
    return loop, (master, tty_in, tty_out)


def _interrupt_inside_a_weakref_callback(loop, ended: list[str]) -> None:
    def in_callback(_ref) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    thing = _Thing()
    keep = weakref.ref(thing, in_callback)
    del thing  # the callback runs here; the signal arrives inside it
    gc.collect()
    assert keep() is None

    def give_up(*_):
        ended.append("went on")
        raise urwid.ExitMainLoop

    loop.set_alarm_in(1.0, give_up)  # only reached when the interrupt was lost


def _run(loop, ended, *, with_handler: bool) -> str:
    loop.set_alarm_in(0, lambda *_: _interrupt_inside_a_weakref_callback(loop, ended))
    try:
        if with_handler:
            with ctrl_c_stops(loop):
                loop.run()
        else:
            loop.run()
    except (Interrupted, KeyboardInterrupt):
        return "interrupted"
    return ended[0] if ended else "stopped"


@pytest.fixture
def loop():
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # e.g. pytest run in the background
    loop, (master, tty_in, tty_out) = _loop_on_a_pty()
    yield loop
    tty_out.close()
    tty_in.close()
    os.close(master)


def test_ctrl_c_in_a_weakref_callback_stops_the_loop(loop):
    assert _run(loop, [], with_handler=True) == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost interrupt
def test_without_it_that_ctrl_c_is_lost(loop):
    """The control: Python's own handler loses this interrupt, so the test above can fail."""
    assert _run(loop, [], with_handler=False) == "went on"


def test_an_ignored_sigint_stays_ignored(loop):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_stops(loop):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)

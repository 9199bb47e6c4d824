"""Stop signals as exceptions: SIGINT, SIGTERM and SIGHUP raise :class:`Interrupt` inside a block.

A command that must clean up when stopped (a half-written output, a child process) runs its
work inside :func:`stop_signals_raise`, so ``finally`` blocks and context managers run; the exit
status is then the shell's 128 + N (:func:`signal_exit_code`). :func:`signals_held` keeps a step
whole that must not be cut between two statements (start a child and store its handle; rename a
keyring and write its audit line).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

from kms_plugin.errors import Interrupt

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

__all__ = [
    "INTERRUPTED_EXIT",
    "STOP_SIGNALS",
    "interrupt_signal",
    "signal_exit_code",
    "signals_held",
    "stop_signals_held",
    "stop_signals_raise",
]

# Signals that ask a command to stop: Ctrl-C, kill/systemd/timeout(1), a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def signal_exit_code(signum: int) -> int:
    """The exit status of a command stopped by ``signum``: 128 + N, as shells report it."""
    return 128 + signum


INTERRUPTED_EXIT = signal_exit_code(signal.SIGINT)


def interrupt_signal(exc: KeyboardInterrupt) -> int:
    """The signal behind ``exc``: its own for an :class:`Interrupt`, else SIGINT (Ctrl-C)."""
    return getattr(exc, "signum", signal.SIGINT)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupt`; restored after.

    A signal the process was started ignoring (``nohup``) stays ignored. Only the first signal
    raises: later ones are dropped while the block unwinds, so a second SIGTERM cannot cut the
    clean-up of the first short. Outside the main thread (where Python cannot set handlers)
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if _held.depth:
            _held.pending = _held.pending or signum  # raised when signals_held() ends
        elif not raised:
            raised = True
            raise Interrupt(signum)

    previous = {}
    try:
        for signum in STOP_SIGNALS:
            old = signal.getsignal(signum)
            if old is not signal.SIG_IGN:
                previous[signum] = signal.SIG_DFL if old is None else old
                signal.signal(signum, handler)
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class _Held:
    """State of :func:`signals_held` (main thread only, where handlers run)."""

    depth = 0
    pending: int | None = None


_held = _Held()


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold back :func:`stop_signals_raise`'s :class:`Interrupt` until the block ends.

    For a step that must not be cut between two statements: starting a child process and
    storing its handle (an Interrupt in between would leave the child running, unknown to the
    clean-up). The first stop signal that arrives inside is re-raised when the block ends; a
    system call it interrupted is retried meanwhile (PEP 475). Outside :func:`stop_signals_raise`
    or the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held.depth += 1
    try:
        yield
    finally:
        _held.depth -= 1
        if _held.depth == 0 and _held.pending is not None:
            signum, _held.pending = _held.pending, None
            signal.raise_signal(signum)  # the handler runs again, now free to raise


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """A step kept whole even where no :func:`stop_signals_raise` is active: a stop signal that
    arrives inside raises :class:`Interrupt` when the block ends, not before (and does not kill
    the process outright, as SIGTERM's default action would)."""
    with stop_signals_raise(), signals_held():
        yield

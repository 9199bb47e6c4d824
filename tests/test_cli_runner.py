"""``kms_plugin.stop_signals`` and ``cli_runner``: stop signals as exceptions, one exit-code rule.

Signals are sent to this very process; each test first installs a handler of its own, so a
guard that failed to take over could not kill the test run.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from kms_plugin.errors import Interrupt
from kms_plugin.stop_signals import (
    INTERRUPTED_EXIT,
    STOP_SIGNALS,
    interrupt_signal,
    signal_exit_code,
    signals_held,
    stop_signals_raise,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

SEEN: list[int] = []


def _outer(signum: int, frame: FrameType | None) -> None:
    SEEN.append(signum)


@pytest.fixture
def outer_handlers() -> Iterator[None]:
    """A harmless handler for every stop signal while the test runs, restored after."""
    saved = {s: signal.signal(s, _outer) for s in STOP_SIGNALS}
    SEEN.clear()
    try:
        yield
    finally:
        for s, old in saved.items():
            signal.signal(s, old)


def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    for _ in range(100):  # handlers run between bytecodes of the main thread
        time.sleep(0.001)


@pytest.mark.parametrize("sig", STOP_SIGNALS)
@pytest.mark.usefixtures("outer_handlers")
def test_each_stop_signal_raises_an_interrupt_and_the_handler_is_restored(sig: int) -> None:
    with pytest.raises(Interrupt) as info, stop_signals_raise():
        _deliver(sig)
    assert isinstance(info.value, KeyboardInterrupt)
    assert interrupt_signal(info.value) == info.value.signum == sig
    assert signal.getsignal(sig) is _outer
    _deliver(sig)
    assert [sig] == SEEN


@pytest.mark.usefixtures("outer_handlers")
def test_only_the_first_signal_raises_so_clean_up_finishes() -> None:
    cleaned = False

    def run_and_clean_up() -> None:
        nonlocal cleaned
        try:
            _deliver(signal.SIGTERM)
        finally:
            _deliver(signal.SIGTERM)  # a second "kill" while cleaning up
            _deliver(signal.SIGHUP)
            cleaned = True

    with pytest.raises(Interrupt), stop_signals_raise():
        run_and_clean_up()
    assert cleaned
    assert SEEN == []


@pytest.mark.usefixtures("outer_handlers")
def test_a_signal_ignored_at_start_stays_ignored() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    with stop_signals_raise():
        _deliver(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_exit_codes_are_128_plus_the_signal() -> None:
    assert INTERRUPTED_EXIT == signal_exit_code(signal.SIGINT) == 130
    assert signal_exit_code(signal.SIGTERM) == 143
    assert signal_exit_code(signal.SIGHUP) == 129
    assert interrupt_signal(KeyboardInterrupt()) == signal.SIGINT


@pytest.mark.usefixtures("outer_handlers")
def test_a_held_signal_raises_when_the_block_ends_not_inside_it() -> None:
    steps: list[str] = []

    def start_and_store() -> None:
        with signals_held():
            _deliver(signal.SIGTERM)  # a process started here would not be lost
            _deliver(signal.SIGHUP)  # only the first held signal is raised
            steps.append("stored")
        steps.append("after")  # never reached: the held signal raises at the block's end

    with pytest.raises(Interrupt) as info, stop_signals_raise():
        start_and_store()
    assert steps == ["stored"]
    assert info.value.signum == signal.SIGTERM
    assert SEEN == []
    with stop_signals_raise(), signals_held():  # nothing is left pending from the last block
        steps.append("quiet")
    assert steps == ["stored", "quiet"]


@pytest.mark.usefixtures("outer_handlers")
def test_a_held_signal_wins_over_an_error_of_the_block() -> None:
    def start_fails() -> None:
        with signals_held():
            _deliver(signal.SIGINT)
            raise OSError("the child could not be started")

    with pytest.raises(Interrupt) as info, stop_signals_raise():
        start_fails()
    assert info.value.signum == signal.SIGINT
    assert isinstance(info.value.__context__, OSError)


@pytest.mark.usefixtures("outer_handlers")
def test_holding_outside_stop_signals_raise_changes_nothing() -> None:
    with signals_held():
        _deliver(signal.SIGTERM)
    assert SEEN == [signal.SIGTERM]  # the handler in place ran at once


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_a_command_stopped_by_a_signal_exits_128_plus_n_with_one_line(
    sig: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # Typer turns a KeyboardInterrupt escaping a command into a silent Exit(130): a SIGTERM'd
    # `keyring retire` exited 130 with nothing on stderr.
    import typer

    from kms_plugin.cli_runner import run_app
    from kms_plugin.errors import Error, exit_code_for

    app = typer.Typer()

    @app.command()
    def work() -> None:
        raise Interrupt(sig)

    @app.command()
    def other() -> None:
        pass

    code = run_app(app, "prog", Error, exit_code_for, ["work"])
    err = capsys.readouterr().err
    assert code == signal_exit_code(sig)
    assert err.count("\n") == 1 and err.startswith("prog: error: interrupted")

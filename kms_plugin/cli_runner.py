"""Run a Typer app with the project's exit-code policy: one line on stderr, never a traceback.

Shared by both console scripts (``snapshot_tools`` may import ``kms_plugin``, not the reverse):
with :mod:`kms_plugin.api` it is the public surface ``snapshot_tools`` uses. Each package maps
its error classes to exit codes in one table (``errors.exit_code_for``), handed to
:func:`run_app`. Set ``K8S_AT_REST_DEBUG=1`` to see the traceback of an unexpected error.

A command stopped by a signal (:mod:`kms_plugin.stop_signals`: an :class:`Interrupt`, a
``KeyboardInterrupt`` carrying the signal) exits with the shell's 128 + N, also for a package
error that carries the signal (``signum``) it was raised for.

References: pip ``Command._main`` and ``status_codes.py`` (STYLE.md 8).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperArgument, TyperOption

from kms_plugin import __version__
from kms_plugin.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, Interrupt
from kms_plugin.stop_signals import INTERRUPTED_EXIT, interrupt_signal, signal_exit_code
from kms_plugin.terminal import printable

# Typer (>= 0.29) vendors click: its usage errors derive from typer.TyperException, and Exit and
# Abort are typer's own. Importing click itself would add an undeclared dependency.
_EXIT = typer.Exit
_ABORT = typer.Abort
_CLICK_ERRORS = typer.TyperException

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "Interrupt",
    "add_version_option",
    "printable",
    "run_app",
]

def add_version_option(app: typer.Typer, prog: str) -> None:
    """``PROG --version``: the distribution's version (both CLIs ship in one), then exit 0."""

    def show(value: bool) -> None:
        if value:
            print(f"{prog} {__version__}")
            raise typer.Exit

    # The option as a default value: an annotation could not name the local callback.
    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", is_eager=True, callback=show, help="Print the version and exit."
        ),
    ) -> None:
        pass


# Help shows a value's kind the way CLIs usually do (TEXT, INTEGER, PATH, table|json), not the
# Python annotation Typer would print (<str>, <list[str]>); flags show none.
_PLAIN_TYPES = {"bool": "", "str": "TEXT", "int": "INTEGER", "float": "FLOAT", "int range": "INTEGER"}


def _plain(display: Callable[..., str | None]) -> Callable[..., str | None]:
    def display_type_rich(self: TyperArgument | TyperOption, ctx: object) -> str | None:
        shown = display(self, ctx)
        if shown is None or (self.metavar is not None and shown == self.metavar):
            return shown
        more = shown.endswith("...")
        label = shown.removesuffix("...").removeprefix("<").removesuffix(">")
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
        label = _PLAIN_TYPES.get(label, label if "|" in label else label.upper())
        if not label:
            return None
        return label + ("..." if more else "")

    return display_type_rich


def _plain_help_types() -> None:
    for cls in (TyperArgument, TyperOption):
        if not getattr(cls.display_type_rich, "_plain", False):
            plain = _plain(cls.display_type_rich)
            plain._plain = True  # type: ignore[attr-defined]
            setattr(cls, "display_type_rich", plain)  # noqa: B010 - mypy refuses assigning a method


def _say(prog: str, message: str) -> None:
    # Keep it to one line whatever the message holds.
    line = printable(" ".join(str(message).split()))  # messages quote paths and etcd keys
    print(f"{prog}: error: {line}", file=sys.stderr, flush=True)


class _Stopped(Exception):
    """A KeyboardInterrupt (an :class:`Interrupt` too) that left a command, carried past Typer,
    which would turn it into a silent exit 130 whatever the signal."""

    def __init__(self, cause: KeyboardInterrupt) -> None:
        super().__init__("stopped")
        self.cause = cause


def _carry_stops(command: Any) -> None:
    """Wrap ``command.invoke`` (a group runs its subcommands inside it) so that a stop leaving
    any command reaches :func:`run_app` as :class:`_Stopped`."""
    invoke = command.invoke

    def carried(ctx: Any) -> Any:
        try:
            return invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Stopped(exc) from None

    command.invoke = carried


def _interrupted(prog: str, exc: KeyboardInterrupt) -> int:
    signum = interrupt_signal(exc)
    _say(prog, "interrupted" if signum == signal.SIGINT else f"interrupted ({signal.Signals(signum).name})")
    return signal_exit_code(signum)


def run_app(
    app: typer.Typer,
    prog: str,
    error_base: type[Exception],
    exit_code_for: Callable[[Exception], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Run ``app`` and return its exit code.

    ``error_base`` subclasses are the package's own errors: one line on stderr, and the exit
    code ``exit_code_for`` gives (the package's table), or 128 + N if the error carries the
    stop signal ``signum`` it was raised for. Anything else is an internal error.
    """
    _plain_help_types()
    command = typer.main.get_command(app)
    _carry_stops(command)
    try:
        rc = command.main(
            args=list(argv) if argv is not None else None,
            prog_name=prog,
            standalone_mode=False,
        )
    except _EXIT as exc:
        return int(exc.exit_code)
    except _CLICK_ERRORS as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":
            # No command: the message is the help (empty when rich has printed it already).
            if message.strip():
                print(message)
            return int(getattr(exc, "exit_code", EXIT_USAGE))
        _say(prog, f"{message} (see '{prog} --help')")
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    except _ABORT:
        _say(prog, "interrupted")
        return INTERRUPTED_EXIT
    except _Stopped as stop:
        return _interrupted(prog, stop.cause)
    except KeyboardInterrupt as exc:
        return _interrupted(prog, exc)
    except BrokenPipeError:
        # The reader went away (``| head``); nothing more to say.
        with suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return EXIT_OK
    except error_base as exc:
        _say(prog, str(exc))
        signum = getattr(exc, "signum", None)
        if isinstance(signum, int):
            return signal_exit_code(signum)
        return exit_code_for(exc)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        if os.environ.get("K8S_AT_REST_DEBUG"):
            traceback.print_exc()
        _say(prog, f"internal error ({type(exc).__name__}); rerun with K8S_AT_REST_DEBUG=1 for details")
        return EXIT_INTERNAL
    if isinstance(rc, int):
        return rc
    return EXIT_OK

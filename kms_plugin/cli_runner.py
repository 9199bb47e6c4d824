"""Run a Typer app with the project's exit-code policy: one line on stderr, never a traceback.

Shared by both console scripts (``snapshot_tools`` may import ``kms_plugin``, not the reverse).
Set ``K8S_AT_REST_DEBUG=1`` to see the traceback of an unexpected error.

References: pip ``Command._main`` and ``status_codes.py`` (STYLE.md 8).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import TYPE_CHECKING

import typer

# Typer (>= 0.29) vendors click: its usage errors derive from typer.TyperException, and Exit and
# Abort are typer's own. Importing click itself would add an undeclared dependency.
_EXIT = typer.Exit
_ABORT = typer.Abort
_CLICK_ERRORS = typer.TyperException

if TYPE_CHECKING:
    from collections.abc import Sequence

USAGE_EXIT = 2
INTERNAL_EXIT = 70
INTERRUPTED_EXIT = 130


def _say(prog: str, message: str) -> None:
    # Keep it to one line whatever the message holds.
    line = " ".join(str(message).split())
    print(f"{prog}: error: {line}", file=sys.stderr, flush=True)


def run_app(
    app: typer.Typer,
    prog: str,
    error_base: type[Exception],
    argv: Sequence[str] | None = None,
) -> int:
    """Run ``app`` and return its exit code, mapping ``error_base`` subclasses via ``exit_code``."""
    command = typer.main.get_command(app)
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
        _say(prog, f"{message} (see '{prog} --help')")
        return int(getattr(exc, "exit_code", USAGE_EXIT))
    except _ABORT:
        _say(prog, "interrupted")
        return INTERRUPTED_EXIT
    except KeyboardInterrupt:
        _say(prog, "interrupted")
        return INTERRUPTED_EXIT
    except BrokenPipeError:
        # The reader went away (``| head``); nothing more to say.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except error_base as exc:
        _say(prog, str(exc))
        return int(getattr(exc, "exit_code", 1))
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        if os.environ.get("K8S_AT_REST_DEBUG"):
            traceback.print_exc()
        _say(prog, f"internal error ({type(exc).__name__}); rerun with K8S_AT_REST_DEBUG=1 for details")
        return INTERNAL_EXIT
    if isinstance(rc, int):
        return rc
    return 0

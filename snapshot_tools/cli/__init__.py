"""The ``snapshot-tools`` command line: builds the Typer app from one module per command."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer

from kms_plugin.cli_runner import add_version_option, run_app
from snapshot_tools.errors import Error, exit_code_for

if TYPE_CHECKING:
    from collections.abc import Sequence

app = typer.Typer(
    name="snapshot-tools",
    help="Inspect, check and rewrite etcd snapshots holding Kubernetes objects encrypted at rest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
add_version_option(app, "snapshot-tools")

# gRPC logs a refused TLS handshake (--etcd-endpoint) at INFO on stderr, ahead of our one error
# line; it reads this when imported, so it is set before the commands import it. A user's value wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


# Each command lives in its own module and registers itself on ``app`` when imported.
# Import order is the order of the commands in --help.
from snapshot_tools.cli import status  # noqa: E402, F401, I001
from snapshot_tools.cli import check, extract, reencrypt  # noqa: E402, F401
from snapshot_tools.cli import keys  # noqa: E402, F401
from snapshot_tools.cli import quarantine  # noqa: E402, F401
from snapshot_tools.cli import drill  # noqa: E402, F401


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run_app(app, "snapshot-tools", Error, exit_code_for, argv))

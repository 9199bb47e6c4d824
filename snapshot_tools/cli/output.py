"""Small rendering helpers shared by the commands: output format, plain tables, progress."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import time
from typing import TYPE_CHECKING

from kms_plugin.cli_runner import printable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from snapshot_tools.unwrap import KmsProblem


class OutputFormat(enum.StrEnum):
    """``--output`` choices."""

    table = "table"
    json = "json"


__all__ = [
    "TRAILER_MISMATCH",
    "OutputFormat",
    "diagnostic",
    "kms_diagnostics",
    "printable",
    "progress_reporter",
    "render_table",
]

TRAILER_MISMATCH = "warning: the snapshot's SHA-256 trailer does not match its contents"


def diagnostic(message: str) -> None:
    """One line on stderr, after the program name (data goes to stdout, never this)."""
    print(f"snapshot-tools: {message}", file=sys.stderr)


def kms_diagnostics(problems: Sequence[KmsProblem], unavailable: bool, consequence: str) -> None:
    """One stderr line per KMS endpoint that did not answer, and why; ``K8S_AT_REST_DEBUG=1``
    adds the gRPC status code and details. The generic line only when no endpoint was named."""
    debug = bool(os.environ.get("K8S_AT_REST_DEBUG"))
    for problem in problems:
        diagnostic(f"warning: {printable(problem.describe(debug))}; {consequence}")
    if unavailable and not problems:
        diagnostic(f"warning: a KMS plugin could not be reached; {consequence}")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; plain text that survives pipes and grep.

    Cells are user data (etcd keys, file names): non-printable characters are escaped.
    """
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers).rstrip()]
    out.extend(fmt.format(*row).rstrip() for row in rows)
    return "\n".join(out)


@contextlib.contextmanager
def progress_reporter(label: str, min_seconds: float = 1.0) -> Iterator[Callable[[int], None] | None]:
    """A callback that shows a count on stderr when it is a terminal and the work is long.

    Quiet (``None``) when stderr is not a terminal, so pipelines and CI logs stay clean.
    """
    if not sys.stderr.isatty():
        yield None
        return
    start = time.monotonic()
    shown = False

    def update(done: int) -> None:
        nonlocal shown
        if time.monotonic() - start >= min_seconds:
            sys.stderr.write(f"\r{label}: {done:,} records")
            sys.stderr.flush()
            shown = True

    try:
        yield update
    finally:
        if shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

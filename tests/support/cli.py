"""Run the two command lines: in-process (fast, output captured by pytest) or as a subprocess.

In-process, ``snapshot-tools`` exits through ``SystemExit``; :class:`Cli` (the ``cli`` fixture)
turns that into a :class:`CliResult`. A subprocess is for what only a real process shows: signals,
resource limits, the interpreter's exit, a fresh import of the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from kms_plugin.cli import app as _kms_plugin_app
from kms_plugin.cli_runner import run_app
from kms_plugin.errors import Error as _KmsPluginError
from kms_plugin.errors import exit_code_for as _kms_plugin_exit_code
from snapshot_tools.cli import main as _snapshot_tools_main

if TYPE_CHECKING:
    from collections.abc import Sequence

Arg = str | os.PathLike[str]

# argv prefixes that run the console scripts' code with this interpreter (no PATH lookup).
SNAPSHOT_TOOLS = [sys.executable, "-c", "from snapshot_tools.cli import main; main()"]
KMS_PLUGIN = [sys.executable, "-c", "from kms_plugin.cli import main; main()"]


class CliResult(NamedTuple):
    """Exit code, stdout and stderr of one in-process ``snapshot-tools`` run."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_snapshot_tools(argv: Sequence[Arg], capsys: pytest.CaptureFixture[str]) -> CliResult:
    """``snapshot-tools ARGV`` in this process: its own stdout and stderr (earlier output dropped)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _snapshot_tools_main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return CliResult(int(info.value.code or 0), out, err)


class Cli:
    """``snapshot-tools`` in-process: ``cli("check", snap, "-c", config)`` -> :class:`CliResult`."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *argv: Arg) -> CliResult:
        return run_snapshot_tools(argv, self._capsys)

    def json(self, *argv: Arg) -> tuple[int, Any]:
        """Exit code and stdout parsed as JSON (``{}`` when the command wrote nothing)."""
        result = self(*argv)
        return result.code, json.loads(result.out) if result.out.strip() else {}

    def check_json(self, *argv: Arg) -> tuple[int, Any]:
        """``check ARGV --output json``: exit code and the report."""
        return self.json("check", *argv, "--output", "json")


def snapshot_tools_process(
    *argv: Arg, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``snapshot-tools ARGV`` as a subprocess, output captured as text."""
    return subprocess.run(
        [*SNAPSHOT_TOOLS, *map(os.fspath, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def plugin_cli(*argv: str) -> int:
    """``kms-plugin ARGV`` in this process; returns its exit code (output goes to sys.stdout/err)."""
    return run_app(_kms_plugin_app, "kms-plugin", _KmsPluginError, _kms_plugin_exit_code, list(argv))


def without_source(report: dict[str, Any]) -> dict[str, Any]:
    """A ``check -o json`` report minus what names its source: the path or URL, the trailer
    state and the integrity verdict (a file's ``passed``; ``not-applicable`` for a running etcd,
    which has no file to hash), so a live read and a snapshot of it compare equal."""
    out = dict(report)
    snap = dict(out.pop("snapshot"))
    assert snap.pop("path")
    assert snap.pop("trailer") in ("valid", "live")
    assert (snap.pop("integrity"), snap.pop("integrity_reason") is None) in (
        ("passed", True),
        ("not-applicable", False),
    )
    out["snapshot"] = snap
    return out

"""Option values a careless operator (or a job with an unset variable) gives: one line, right exit code.

``--fail-on ""`` must not turn the gate off; ``--s3-endpoint-url`` that is no URL is a usage error,
not an internal one; ``--cacert`` that is a FIFO or a device must not hang or fill memory. All
refusals happen before anything is fetched or connected to.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.support.fixtures import EXAMPLE, EXAMPLE_SNAPSHOT

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

LOST_KEY = EXAMPLE / "new-key-only.yaml"  # all 14 Secrets unreadable: any real gate fails


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("value", ["", ",", " , "])
@pytest.mark.parametrize("command", ["check", "drill"])
def test_an_empty_fail_on_is_refused_not_a_gate_that_passes(cli: Cli, command: str, value: str) -> None:
    # Before: exit 0 on a snapshot nothing can read, as with --fail-on none.
    extra = ["--no-restore"] if command == "drill" else []
    result = cli(command, EXAMPLE_SNAPSHOT, "-c", LOST_KEY, "--fail-on", value, *extra)
    assert result.code == 2, result.err
    assert "--fail-on" in _one_error_line(result.err)


@pytest.mark.parametrize(
    "argv", [["--s3-endpoint-url", "notaurl"], ["--s3-endpoint-url", "ftp://x"], ["--s3-region", "bad region!"]]
)
@pytest.mark.parametrize("command", ["status", "drill"])
def test_s3_options_botocore_refuses_are_usage_errors(cli: Cli, command: str, argv: list[str]) -> None:
    extra = ["-c", LOST_KEY, "--no-restore"] if command == "drill" else []
    result = cli(command, "s3://bucket/etcd-snapshot-node1-1700000000.zip", *argv, *extra)
    assert result.code == 2, result.err  # was an internal error (ValueError, exit 70)
    assert "S3" in _one_error_line(result.err)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_tls_files_that_are_not_regular_are_refused(tmp_path: Path, cli: Cli, kind: str) -> None:
    # Before: a FIFO --cacert hung the run; /dev/zero would be read until memory ran out.
    path = tmp_path / "ca.pem"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    result = cli("check", "--etcd-endpoint", "https://127.0.0.1:1", "--cacert", path, "-c", LOST_KEY)
    assert result.code == 3, result.err
    assert "--cacert" in _one_error_line(result.err)

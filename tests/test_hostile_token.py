"""``--k3s-token @FILE`` against a careless operator: the token file is an input like the snapshot.

The K3s snapshot is built offline (tests/support/snapshots.py) with a bootstrap record sealed by
the spec's recipe (tests/support/k3s.py); its one Secret is judged unreadable, which is enough:
these are refusals before or instead of any output.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from tests.support.files import sha256
from tests.support.fixtures import EXAMPLE_CONFIG, EXAMPLE_SNAPSHOT
from tests.support.k3s import IDENTITY, aescbc, bootstrap_files, bootstrap_record, full_token, k3s_config
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

PASSWORD = "hostile-token-pw"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def k3s(tmp_path: Path) -> tuple[Path, Path]:
    """A K3s snapshot and its token file (``K10...::server:pw``, newline-terminated as K3s writes it)."""
    config = k3s_config(aescbc(("aescbckey", b"\x01" * 32)), IDENTITY)
    key, value = bootstrap_record(PASSWORD, bootstrap_files(config, password=PASSWORD))
    secret = b"k8s:enc:aescbc:v1:aescbckey:" + b"\x00" * 32
    snap = write_snapshot(tmp_path / "etcd-snapshot-node1-1700000000", {key: value, "/registry/secrets/ns/s": secret})
    token = tmp_path / "token"
    token.write_text(full_token(PASSWORD) + "\n")
    return snap, token


def _argv(command: str, snap: Path, token: Path, tmp_path: Path) -> list[str | Path]:
    at = f"@{token}"
    return {
        "keys": ["keys", snap, "--k3s-token", at, "--export", token, "--force"],
        "quarantine": ["quarantine", snap, token, "--k3s-token", at, "--to-dir", tmp_path / "dir", "--force"],
        "decrypt": ["decrypt", snap, token, "--k3s-token", at, "--force", "--skip-unreadable"],
        "reencrypt": ["reencrypt", snap, token, "--k3s-token", at, "--to", EXAMPLE_CONFIG, "--force"],
        "drill-junit": ["drill", snap, "--k3s-token", at, "--no-restore", "--junit", token],
        "drill-metrics": ["drill", snap, "--k3s-token", at, "--no-restore", "--metrics-file", token],
    }[command]


@pytest.mark.parametrize(
    "command", ["keys", "quarantine", "decrypt", "reencrypt", "drill-junit", "drill-metrics"]
)
def test_no_output_replaces_the_token_file(k3s: tuple[Path, Path], tmp_path: Path, cli: Cli, command: str) -> None:
    # Before: every one of these replaced the token (the only way into the snapshot) and exited 0 or 1.
    snap, token = k3s
    before = sha256(token)
    result = cli(*_argv(command, snap, token, tmp_path))
    assert result.code == 2, result.err
    assert "is the input file" in _one_error_line(result.err)
    assert sha256(token) == before


def test_a_token_file_that_is_a_directory_is_one_line(k3s: tuple[Path, Path], tmp_path: Path, cli: Cli) -> None:
    snap, _ = k3s
    (tmp_path / "tokendir").mkdir()
    result = cli("keys", snap, "--k3s-token", f"@{tmp_path / 'tokendir'}")
    assert result.code == 2, result.err  # was an internal error (IsADirectoryError, exit 70)
    assert "not a regular file" in _one_error_line(result.err)


def test_drill_reports_never_replace_a_file_of_a_config_directory(tmp_path: Path, cli: Cli) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    current = configs / "10-current.yaml"
    shutil.copy(EXAMPLE_CONFIG, current)
    before = sha256(current)
    result = cli("drill", EXAMPLE_SNAPSHOT, "-c", configs, "--no-restore", "--junit", current)
    assert result.code == 2, result.err
    assert "is the input file" in _one_error_line(result.err)
    assert sha256(current) == before

"""``keyring archive`` and the retired-KEK archive against careless and hostile input: a path
that is no keyring must not answer "no retired KEKs" (exit 0); ids and times read from the
archive are user data and must not carry terminal escapes to the table."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from kms_plugin.keks.archive import archive_path
from tests.support.lifecycle import run_plugin

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("kind", ["missing", "directory", "device"])
def test_archive_of_a_path_that_is_no_keyring_fails(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = {"missing": tmp_path / "nope.json", "directory": tmp_path, "device": "/dev/null"}[kind]
    res = run_plugin(capsys, "keyring", "archive", path)
    assert res.code == 2, res
    assert res.out == ""
    assert res.err.count("\n") == 1 and "keyring" in res.err


def test_archive_ids_are_checked_before_they_reach_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyring = tmp_path / "k.json"
    assert run_plugin(capsys, "keyring", "init", keyring).code == 0
    hostile = "\x1b]0;pwned\x07\x1b[2J"
    doc = {
        "format": "kms-plugin-retired-keks",
        "version": 1,
        "keks": [{"id": hostile, "created": hostile, "retired": hostile, "sealed_by": hostile, "sealed": ""}],
    }
    path = archive_path(keyring)
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    res = run_plugin(capsys, "keyring", "archive", keyring)
    assert res.code == 3, res
    assert "\x1b" not in res.out + res.err
    assert res.err.count("\n") == 1 and "keks[0]" in res.err


@pytest.mark.parametrize(
    "argv",
    [
        ("keyring", "rotate"),
        ("keyring", "restore", "0123456789abcdef"),
        ("keyring", "purge", "0123456789abcdef", "--yes-destroy-keys"),
        ("keyring", "init", "--force"),
    ],
)
def test_a_change_to_a_directory_leaves_no_lock_or_log(
    argv: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "keyring-dir"
    target.mkdir()
    res = run_plugin(capsys, *argv[:2], target, *argv[2:])
    assert res.code == 2, res
    assert res.err.count("\n") == 1 and "not a regular file" in res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring-dir"]


@pytest.mark.parametrize("argv", [("keyring", "rotate"), ("keyring", "restore", "0123456789abcdef")])
def test_a_change_to_a_missing_keyring_leaves_no_lock_or_log(
    argv: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    res = run_plugin(capsys, *argv[:2], tmp_path / "typo.json", *argv[2:])
    assert res.code == 2, res
    assert res.err.count("\n") == 1 and "typo.json" in res.err
    assert list(tmp_path.iterdir()) == []

"""``quarantine`` against a careless operator and a crafted set-aside directory.

The snapshot is the examples/aescbc one (a real kube-apiserver's); with ``new-key-only.yaml`` all
14 Secrets are unreadable, so every run sets them aside. No etcd is needed: these are refusals.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.errors import OutputError
from snapshot_tools.quarantine import Finding, QuarantinedObject
from snapshot_tools.set_aside import SetAsideDir, read_set_aside
from snapshot_tools.snapshot import Snapshot
from tests.support.files import sha256
from tests.support.fixtures import EXAMPLE, EXAMPLE_SNAPSHOT
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

LOST_KEY = EXAMPLE / "new-key-only.yaml"  # does not hold key1: all 14 Secrets unreadable


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLE_SNAPSHOT, tmp_path / "snap.db")
    shutil.copy(LOST_KEY, tmp_path / "config.yaml")
    return tmp_path


@pytest.fixture
def set_aside(work: Path, cli: Cli) -> Path:
    """A real set-aside directory of the 14 Secrets (and the quarantined snapshot beside it)."""
    result = cli("quarantine", work / "snap.db", work / "q.db", "-c", work / "config.yaml", "--to-dir", work / "dir")
    assert result.code == 0, result.err
    return work / "dir"


@pytest.mark.parametrize("name", ["manifest.json", "00001-79_0.value"])
def test_out_may_not_be_a_file_the_set_aside_directory_will_hold(work: Path, cli: Cli, name: str) -> None:
    # OUT at DIR/manifest.json would replace the only record of what was set aside (exit 0 before).
    directory = work / "dir"
    directory.mkdir()
    (directory / "unrelated").write_bytes(b"x")
    result = cli(
        "quarantine", work / "snap.db", directory / name, "-c", work / "config.yaml", "--to-dir", directory, "--force"
    )
    assert result.code == 2, result.err
    assert "set-aside" in _one_error_line(result.err)
    assert sorted(p.name for p in directory.iterdir()) == ["unrelated"]


@pytest.mark.parametrize("name", ["manifest.json", "00001-79_0.value"])
def test_force_into_a_directory_never_replaces_an_input(work: Path, cli: Cli, name: str) -> None:
    # The snapshot (or the config) itself sits in DIR under a name the set-aside files take.
    directory = work / "dir"
    directory.mkdir()
    snap = directory / name
    shutil.copy(EXAMPLE_SNAPSHOT, snap)
    before = sha256(snap)
    result = cli("quarantine", snap, work / "q.db", "-c", work / "config.yaml", "--to-dir", directory, "--force")
    assert result.code == 2, result.err
    assert "input" in _one_error_line(result.err)
    assert sha256(snap) == before
    assert sorted(p.name for p in directory.iterdir()) == [name]
    assert not (work / "q.db").exists()


def test_force_into_a_directory_never_replaces_the_config(work: Path, cli: Cli) -> None:
    directory = work / "dir"
    directory.mkdir()
    config = directory / "manifest.json"
    shutil.copy(LOST_KEY, config)
    before = sha256(config)
    result = cli("quarantine", work / "snap.db", work / "q.db", "-c", config, "--to-dir", directory, "--force")
    assert result.code == 2, result.err
    assert sha256(config) == before


def test_restore_from_never_writes_over_its_manifest(set_aside: Path, work: Path, cli: Cli) -> None:
    manifest = set_aside / "manifest.json"
    before = sha256(manifest)
    result = cli("quarantine", "--restore-from", set_aside, work / "q.db", manifest, "--force")
    assert result.code == 2, result.err
    assert "input" in _one_error_line(result.err)
    assert sha256(manifest) == before


def _first_value(directory: Path) -> Path:
    manifest = json.loads((directory / "manifest.json").read_text())
    return directory / manifest["objects"][0]["revisions"][-1]["file"]


@pytest.mark.parametrize("kind", ["fifo-manifest", "fifo-value", "dev-zero-value", "directory-value"])
def test_restore_from_refuses_files_that_are_not_regular(set_aside: Path, work: Path, cli: Cli, kind: str) -> None:
    # Before: a FIFO hung the run, /dev/zero behind a value file ate memory until the OOM killer.
    if kind == "fifo-manifest":
        (set_aside / "manifest.json").unlink()
        os.mkfifo(set_aside / "manifest.json")
    else:
        value = _first_value(set_aside)
        value.unlink()
        if kind == "fifo-value":
            os.mkfifo(value)
        elif kind == "dev-zero-value":
            value.symlink_to("/dev/zero")
        else:
            value.mkdir()
    result = cli("quarantine", "--restore-from", set_aside, work / "q.db", work / "back.db")
    assert result.code == 3, result.err
    assert "not a regular file" in _one_error_line(result.err)
    assert not (work / "back.db").exists()


def _edit_manifest(directory: Path, edit: str) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    first = manifest["objects"][0]
    if edit == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
        return
    if edit == "lease-overflow":
        first["revisions"][-1]["lease"] = 10**30
    elif edit == "lease-float":
        path.write_text(path.read_text().replace('"lease": 0,', '"lease": 1e400,', 1))
        return
    elif edit == "lease-negative":
        first["revisions"][-1]["lease"] = -1
    elif edit == "empty-key":
        first["key_base64"] = ""
    elif edit == "huge-key":
        first["key_base64"] = base64.b64encode(b"/registry/secrets/ns/" + b"x" * 70_000).decode()
    elif edit == "duplicate-key":
        manifest["objects"].append(first)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "edit", ["deep", "lease-overflow", "lease-float", "lease-negative", "empty-key", "huge-key", "duplicate-key"]
)
def test_restore_from_refuses_a_crafted_manifest(set_aside: Path, work: Path, cli: Cli, edit: str) -> None:
    # Before: internal errors (exit 70), or a "verified" OUT that etcd (or our own reader) refuses.
    _edit_manifest(set_aside, edit)
    result = cli("quarantine", "--restore-from", set_aside, work / "q.db", work / "back.db")
    assert result.code == 3, result.err
    assert "manifest" in _one_error_line(result.err)
    assert not (work / "back.db").exists()


def _one_object(tmp_path: Path) -> tuple[Snapshot, list[QuarantinedObject]]:
    key = "/registry/secrets/ns/lost"
    snap = Snapshot.open(write_snapshot(tmp_path / "one.db", {key: b"k8s:enc:aescbc:v1:lost:" + b"\x00" * 32}))
    finding = Finding(key.encode(), 2, 0, 2, "unreadable", "no-such-key", "aescbc", "lost", None, True)
    return snap, [QuarantinedObject(key.encode(), "secrets", "ns", "lost", "tombstoned", [finding])]


def test_two_runs_into_one_new_directory_never_lose_the_winners_files(tmp_path: Path) -> None:
    # Two quarantine runs started together both found DIR absent; the one whose OUT then lost the
    # race undid its set-aside files by name, deleting the winner's: a published OUT with an empty
    # DIR (seen with two real runs 0.05 s apart). Each run may only ever remove its own files.
    snap, objects = _one_object(tmp_path)
    directory = tmp_path / "dir"
    winner = SetAsideDir(directory, force=False)
    loser = SetAsideDir(directory, force=False)  # checked before the winner wrote anything
    with snap:
        winner.write(snap, objects, {})
        with pytest.raises(OutputError, match="already exists"):
            loser.write(snap, objects, {})
        loser.undo()  # what the loser's abort does
    [entry] = read_set_aside(directory)
    assert entry.key == objects[0].key

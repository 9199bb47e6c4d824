"""SNAPSHOT as a K3s/RKE2 ``.zip`` or a ``.gz``: told by content, unpacked to a private temporary
file that is gone afterwards, and read exactly as the plain file is (issue 12 item 1).

Provenance: tests/fixtures/apiserver-v1.36 (kube-apiserver v1.36.2 on etcd 3.5.1), zipped here as
K3s's ``compressSnapshot`` does (one Deflate entry named after the snapshot,
``etcd-snapshot-node1-1700000000``) or gzipped; hostile archives are built by the tests.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from snapshot_tools import archives, inputs
from snapshot_tools.errors import InputError
from snapshot_tools.inputs import SnapshotInput, open_input
from tests.support.fixtures import config_path, snapshot_path
from tests.support.inputs import (
    SNAPSHOT_NAME,
    gzipped,
    hostile_archive,
    k3s_zip,
    temp_leftovers,
    zip_of,
)

if TYPE_CHECKING:
    from tests.support.cli import Cli, CliResult

CASES = ["b-aescbc", "f-secrets-configmaps"]


def _without_path(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc["snapshot"].pop("path")
    return doc


def _one_error(result: CliResult, code: int = 3) -> str:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("snapshot-tools: error: "), result.err
    assert result.out == ""
    return lines[0]


# -- the same answers as the plain file ---------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("form", ["zip", "gzip"])
def test_zipped_and_gzipped_snapshots_check_like_the_plain_file(
    case: str, form: str, tmp_path: Path, private_tmp: Path, cli: Cli
) -> None:
    plain = snapshot_path(case)
    packed = k3s_zip(plain, tmp_path) if form == "zip" else gzipped(plain, tmp_path / f"{SNAPSHOT_NAME}.gz")
    want = cli("check", plain, "-c", config_path(case), "-o", "json")
    got = cli("check", packed, "-c", config_path(case), "-o", "json")
    assert (got.code, got.err) == (want.code, want.err)
    assert _without_path(got.json()) == _without_path(want.json())
    assert got.json()["snapshot"]["path"] == str(packed)  # named as typed, not the temp file
    assert temp_leftovers(private_tmp) == []


def test_status_of_a_zip_names_it_and_says_its_form(tmp_path: Path, private_tmp: Path, cli: Cli) -> None:
    plain = snapshot_path("b-aescbc")
    packed = k3s_zip(plain, tmp_path)
    want = cli("status", plain, "-o", "json").json()
    got = cli("status", packed, "-o", "json").json()
    assert got["path"] == str(packed)
    assert got["form"] == "zip"
    assert want["form"] == "file"
    assert got["s3_metadata"] == {}
    for field in ("path", "form"):
        got.pop(field)
        want.pop(field)
    assert got == want
    table = cli("status", packed)
    assert table.code == 0
    assert f"path        {packed}" in table.out
    assert "form        zip" in table.out
    assert str(private_tmp) not in table.out
    assert temp_leftovers(private_tmp) == []


def test_extract_from_a_gzip_equals_extract_from_the_file(tmp_path: Path, private_tmp: Path, cli: Cli) -> None:
    case = "b-aescbc"
    packed = gzipped(snapshot_path(case), tmp_path / "snap.gz")
    want = cli("extract", snapshot_path(case), "-c", config_path(case), "-o", "json")
    got = cli("extract", packed, "-c", config_path(case), "-o", "json")
    assert want.code == 0
    assert (got.code, got.out) == (want.code, want.out)
    assert temp_leftovers(private_tmp) == []


def test_reencrypt_reads_a_zip_and_refuses_the_zip_as_output(tmp_path: Path, private_tmp: Path, cli: Cli) -> None:
    case = "b-aescbc"
    packed = k3s_zip(snapshot_path(case), tmp_path)
    before = packed.read_bytes()
    out = tmp_path / "plain.db"
    done = cli("decrypt", packed, "-c", config_path(case), out)
    assert done.code == 0, done.err
    assert cli("check", out, "-c", config_path(case), "-o", "json", "--fail-on", "none").code == 0
    refused = cli("decrypt", packed, "-c", config_path(case), packed, "--force")
    assert "input" in _one_error(refused, 2)
    assert packed.read_bytes() == before
    assert temp_leftovers(private_tmp) == []


def test_a_zipped_raw_db_is_refused_by_its_zip_name(tmp_path: Path, private_tmp: Path, cli: Cli) -> None:
    """No SHA-256 trailer inside the zip: the integrity line names the zip as typed."""
    raw = tmp_path / SNAPSHOT_NAME
    raw.write_bytes(snapshot_path("b-aescbc").read_bytes()[:-32])  # a member/snap/db copy
    (tmp_path / "z").mkdir()
    packed = k3s_zip(raw, tmp_path / "z")
    checked = cli("check", packed, "-c", config_path("b-aescbc"))
    assert checked.code == 3
    assert checked.err.strip().splitlines()[-1].startswith(f"snapshot-tools: {packed}: no SHA-256 trailer")
    line = _one_error(cli("extract", packed, "-c", config_path("b-aescbc")))
    assert line.startswith(f"snapshot-tools: error: {packed}: no SHA-256 trailer")
    assert cli("check", packed, "-c", config_path("b-aescbc"), "--skip-hash-check").code == 0
    assert temp_leftovers(private_tmp) == []


# -- content, not name --------------------------------------------------------------------------


def test_the_form_comes_from_the_content_not_the_name(tmp_path: Path, private_tmp: Path) -> None:
    plain = snapshot_path("b-aescbc")
    zip_named_db = k3s_zip(plain, tmp_path).rename(tmp_path / "looks-plain.db")
    gz_no_suffix = gzipped(plain, tmp_path / "snapshot")
    plain_named_zip = tmp_path / "not-a.zip"
    plain_named_zip.write_bytes(plain.read_bytes())
    for path, form in [(zip_named_db, "zip"), (gz_no_suffix, "gzip"), (plain_named_zip, "file")]:
        with open_input(str(path)) as inp:
            assert isinstance(inp, SnapshotInput)
            assert (inp.spec, inp.form, inp.s3_metadata) == (str(path), form, {})
            assert Path(inp.path).read_bytes() == plain.read_bytes()
            if form == "file":
                assert inp.path == str(path)  # used where it is: no copy
            else:
                assert inp.path.startswith(str(private_tmp))
                st = os.stat(inp.path)
                assert stat.S_IMODE(st.st_mode) == 0o600
                assert stat.S_IMODE(os.stat(os.path.dirname(inp.path)).st_mode) == 0o700
        assert temp_leftovers(private_tmp) == []


def test_a_plain_file_does_not_touch_tmpdir(private_tmp: Path) -> None:
    with open_input(str(snapshot_path("b-aescbc"))) as inp:
        assert inp.form == "file"
        assert temp_leftovers(private_tmp) == []


def test_an_exception_in_the_block_still_removes_the_copy(tmp_path: Path, private_tmp: Path) -> None:
    packed = k3s_zip(snapshot_path("b-aescbc"), tmp_path)
    seen: list[str] = []

    def interrupted() -> None:
        with open_input(str(packed)):
            seen.extend(temp_leftovers(private_tmp))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert seen
    assert temp_leftovers(private_tmp) == []


def test_a_fifo_is_refused_without_blocking(tmp_path: Path, private_tmp: Path, cli: Cli) -> None:
    fifo = tmp_path / "snapshot.zip"
    os.mkfifo(fifo)
    assert _one_error(cli("status", fifo)) == f"snapshot-tools: error: {fifo}: not a regular file"


def test_a_missing_file_is_one_line_exit_3(tmp_path: Path, private_tmp: Path, cli: Cli) -> None:
    missing = tmp_path / "nope.zip"
    line = _one_error(cli("status", missing))
    assert line == f"snapshot-tools: error: {missing}: no such file"


# -- hostile archives ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("two-entries", "holds 2 entries; a snapshot zip (K3s/RKE2) holds exactly one"),
        ("directory", "is a directory, not a snapshot"),
        ("dotdot", "is a path; a snapshot zip names its one file only"),
        ("absolute", "is a path; a snapshot zip names its one file only"),
        ("empty-zip", "holds 0 entries"),
        ("many-entries", "central directory is not where a one-entry snapshot zip has it"),
        ("truncated-gzip", "truncated gzip"),
        ("truncated-zip", "damaged zip"),
        ("lying-zip", "damaged zip"),
        ("garbage-after-gzip-magic", "gzip"),
        ("zip-of-garbage", "damaged snapshot"),
    ],
)
@pytest.mark.parametrize("command", ["status", "check"])
def test_hostile_archives_are_one_line_exit_3_and_leave_nothing(
    name: str, said: str, command: str, tmp_path: Path, private_tmp: Path, cli: Cli
) -> None:
    path = hostile_archive(name, tmp_path, snapshot_path("b-aescbc"))
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [command, path] + (["-c", config_path("b-aescbc")] if command == "check" else [])
    line = _one_error(cli(*args))
    assert said in line
    if name != "zip-of-garbage":
        assert str(path) in line
    assert str(private_tmp) not in line
    assert temp_leftovers(private_tmp) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing unpacked beside it


def test_a_zip_declaring_more_than_the_cap_is_refused_before_unpacking(
    tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    monkeypatch.setattr(archives, "MAX_UNPACKED", 1 << 20)
    bomb = zip_of(tmp_path / "bomb.zip", {SNAPSHOT_NAME: bytes(4 << 20)})
    line = _one_error(cli("status", bomb))
    assert "declares 4,194,304 bytes, more than the 1,048,576 bytes allowed" in line
    assert temp_leftovers(private_tmp) == []


def test_a_gzip_bomb_stops_at_the_cap(
    tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    monkeypatch.setattr(archives, "MAX_UNPACKED", 1 << 20)
    bomb = tmp_path / "bomb.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        for _ in range(64):
            f.write(bytes(1 << 20))  # 64 MiB of zeros in ~64 KiB
    assert bomb.stat().st_size < 1 << 20
    line = _one_error(cli("check", bomb, "-c", config_path("b-aescbc")))
    assert "unpacks to more than the 1,048,576 bytes allowed (the smaller of 1 MiB and the free space in" in line
    assert temp_leftovers(private_tmp) == []


def test_the_cap_is_also_the_free_space_of_tmpdir(private_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_UNPACKED", 1 << 62)  # far beyond any disk
    workdir = inputs._Workdir()
    try:
        assert abs(workdir.budget() - shutil.disk_usage(private_tmp).free) < 64 << 20
    finally:
        workdir.remove()
    assert temp_leftovers(private_tmp) == []


def test_an_unusable_tmpdir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli) -> None:
    packed = k3s_zip(snapshot_path("b-aescbc"), tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    line = _one_error(cli("status", packed))
    assert "cannot create a temporary directory" in line


def test_input_errors_are_input_errors(tmp_path: Path, private_tmp: Path) -> None:
    with pytest.raises(InputError, match="holds 2 entries"), open_input(
        str(zip_of(tmp_path / "two.zip", {"a": b"x", "b": b"y"}))
    ):
        pass
    assert temp_leftovers(private_tmp) == []

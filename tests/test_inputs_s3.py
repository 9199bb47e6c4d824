"""SNAPSHOT as ``s3://bucket/key``: streamed through boto3 from a real moto server over HTTP to a
private temporary file, K3s/RKE2 user metadata shown by ``status``; a missing object or bucket
and refused credentials are one line naming the URL, exit 3 (issue 12 item 1).

Provenance: tests/fixtures/apiserver-v1.36 snapshots uploaded plain, zipped as K3s does and
gzipped, with the user metadata K3s writes (``K3s-Cluster-Id``, ``K3s-Node-Name``,
``K3s-Token-Hash``; spec k3s-rke2-bootstrap.md 6.4). Bad credentials: a second moto server in its
own process with IAM authentication on (``INITIAL_NO_AUTH_ACTION_COUNT=0``), which refuses any
access key with ``InvalidAccessKeyId``; the session's server accepts any (moto's default).
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from snapshot_tools.inputs import S3Options, is_s3_url, open_input
from tests.support.cli import SNAPSHOT_TOOLS
from tests.support.fixtures import ROOT, config_path, snapshot_path
from tests.support.inputs import (
    K3S_METADATA,
    SNAPSHOT_NAME,
    auth_moto_server,
    free_port,
    gzipped,
    hostile_archive,
    k3s_zip,
    temp_leftovers,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.cli import Cli, CliResult
    from tests.support.inputs import MotoS3

CASE = "b-aescbc"
BUCKET = "k3s-snapshots"


@pytest.fixture(scope="module")
def objects(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The fixture snapshot in S3 as ``plain``, ``zip`` and ``gzip`` objects -> their URLs."""
    d = tmp_path_factory.mktemp("s3")
    plain = snapshot_path(CASE)
    return {
        "plain": moto_s3.put(BUCKET, f"node1/{SNAPSHOT_NAME}", plain, K3S_METADATA),
        "zip": moto_s3.put(BUCKET, f"node1/{SNAPSHOT_NAME}.zip", k3s_zip(plain, d), K3S_METADATA),
        "gzip": moto_s3.put(BUCKET, f"node1/{SNAPSHOT_NAME}.gz", gzipped(plain, d / "s.gz"), K3S_METADATA),
    }


def _s3(moto_s3: MotoS3) -> list[str]:
    return ["--s3-endpoint-url", moto_s3.url, "--s3-region", "us-east-1"]


def _one_error(result: CliResult, code: int = 3) -> str:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("snapshot-tools: error: "), result.err
    assert result.out == ""
    return lines[0]


def _without_path(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    doc["snapshot"].pop("path")
    return doc


@pytest.mark.parametrize("form", ["plain", "zip", "gzip"])
def test_check_of_an_s3_object_equals_check_of_the_local_file(
    form: str, objects: dict[str, str], moto_s3: MotoS3, private_tmp: Path, cli: Cli
) -> None:
    url = objects[form]
    want = cli("check", snapshot_path(CASE), "-c", config_path(CASE), "-o", "json")
    got = cli("check", url, "-c", config_path(CASE), "-o", "json", *_s3(moto_s3))
    assert (got.code, got.err) == (want.code, want.err)
    assert _without_path(got.json()) == _without_path(want.json())
    assert got.json()["snapshot"]["path"] == url
    assert temp_leftovers(private_tmp) == []


@pytest.mark.parametrize("form", ["plain", "zip", "gzip"])
def test_status_shows_the_k3s_metadata(
    form: str, objects: dict[str, str], moto_s3: MotoS3, private_tmp: Path, cli: Cli
) -> None:
    url = objects[form]
    doc = cli("status", url, "-o", "json", *_s3(moto_s3)).json()
    assert doc["path"] == url
    assert doc["form"] == {"plain": "file", "zip": "zip", "gzip": "gzip"}[form]
    assert {k.lower(): v for k, v in doc["s3_metadata"].items()} == {k.lower(): v for k, v in K3S_METADATA.items()}
    local = cli("status", snapshot_path(CASE), "-o", "json").json()
    assert (doc["hash"], doc["revision"], doc["total_keys"], doc["size"]) == (
        local["hash"],
        local["revision"],
        local["total_keys"],
        local["size"],
    )
    table = cli("status", url, *_s3(moto_s3))
    assert table.code == 0
    assert table.err == ""  # no progress bar when stderr is not a terminal
    for name, value in K3S_METADATA.items():
        assert f"s3 {name}" in table.out
        assert value in table.out
    assert temp_leftovers(private_tmp) == []


def test_rke2_metadata_is_shown_too(moto_s3: MotoS3, private_tmp: Path, cli: Cli) -> None:
    meta = {"Rke2-Node-Name": "server-0", "Rke2-Token-Hash": "0123456789ab", "Rke2-Cluster-Id": "c-1"}
    url = moto_s3.put("rke2-snapshots", "on-demand-server-0-1754907117", snapshot_path(CASE), meta)
    table = cli("status", url, *_s3(moto_s3))
    assert table.code == 0, table.err
    assert "s3 Rke2-Token-Hash" in table.out
    assert "0123456789ab" in table.out


def test_extract_and_decrypt_read_s3(
    objects: dict[str, str], moto_s3: MotoS3, private_tmp: Path, tmp_path: Path, cli: Cli
) -> None:
    want = cli("extract", snapshot_path(CASE), "-c", config_path(CASE), "-o", "json")
    got = cli("extract", objects["zip"], "-c", config_path(CASE), "-o", "json", *_s3(moto_s3))
    assert (got.code, got.out) == (want.code, want.out)
    out = tmp_path / "plain.db"
    done = cli("decrypt", objects["gzip"], "-c", config_path(CASE), out, *_s3(moto_s3))
    assert done.code == 0, done.err
    assert temp_leftovers(private_tmp) == []


def test_a_missing_object_is_one_line_exit_3(
    objects: dict[str, str], moto_s3: MotoS3, private_tmp: Path, cli: Cli
) -> None:
    url = f"s3://{BUCKET}/node1/etcd-snapshot-node1-1.zip"
    for command in ("status", "check"):
        args = [command, url, *_s3(moto_s3)] + (["-c", str(config_path(CASE))] if command == "check" else [])
        assert _one_error(cli(*args)) == f"snapshot-tools: error: {url}: no such object"
    assert temp_leftovers(private_tmp) == []


def test_a_missing_bucket_is_one_line_exit_3(moto_s3: MotoS3, private_tmp: Path, cli: Cli) -> None:
    url = f"s3://no-such-bucket-here/{SNAPSHOT_NAME}.zip"
    assert _one_error(cli("status", url, *_s3(moto_s3))) == f"snapshot-tools: error: {url}: no such bucket"
    assert temp_leftovers(private_tmp) == []


@pytest.fixture(scope="module")
def auth_server() -> Iterator[str]:
    with auth_moto_server() as url:
        yield url


def test_bad_credentials_are_one_line_exit_3(auth_server: str, private_tmp: Path, cli: Cli) -> None:
    url = f"s3://{BUCKET}/{SNAPSHOT_NAME}.zip"
    line = _one_error(cli("check", url, "-c", config_path(CASE), "--s3-endpoint-url", auth_server))
    assert line == f"snapshot-tools: error: {url}: bad credentials (the access key id is unknown)"
    assert temp_leftovers(private_tmp) == []


def test_no_credentials_at_all_is_one_line_exit_3(
    moto_s3: MotoS3, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    url = f"s3://{BUCKET}/{SNAPSHOT_NAME}.zip"
    line = _one_error(cli("status", url, *_s3(moto_s3)))
    assert line.startswith(f"snapshot-tools: error: {url}: no usable AWS credentials")


def test_an_unreachable_endpoint_is_one_line_exit_4(private_tmp: Path, cli: Cli) -> None:
    url = f"s3://{BUCKET}/{SNAPSHOT_NAME}.zip"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = _one_error(cli("status", url, "--s3-endpoint-url", dead), 4)
    assert line.startswith(f"snapshot-tools: error: {url}: S3 could not be reached")
    assert temp_leftovers(private_tmp) == []


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("two-entries", "a one-entry snapshot zip"),
        ("directory", "is a directory, not a snapshot"),
        ("dotdot", "is a path; a snapshot zip names its one file only"),
        ("empty-zip", "damaged zip"),
        ("many-entries", "a one-entry snapshot zip"),
        ("truncated-gzip", "truncated gzip"),
        ("truncated-zip", "damaged zip"),
        ("lying-zip", "damaged zip: the central directory disagrees with the entry"),
        ("garbage-after-gzip-magic", "gzip"),
        ("stored-zip", "compression method 0; K3s writes Deflate"),
        ("zip-of-garbage", "damaged snapshot"),
    ],
)
def test_hostile_archives_in_s3_are_one_line_exit_3(
    name: str, said: str, moto_s3: MotoS3, tmp_path: Path, private_tmp: Path, cli: Cli
) -> None:
    path = hostile_archive(name, tmp_path, snapshot_path(CASE))
    url = moto_s3.put("hostile", f"{name}.zip", path)
    line = _one_error(cli("check", url, "-c", config_path(CASE), *_s3(moto_s3)))
    assert said in line
    if name != "zip-of-garbage":
        assert url in line
    assert str(private_tmp) not in line
    assert temp_leftovers(private_tmp) == []


def test_a_stored_zip_is_read_from_a_file(tmp_path: Path, private_tmp: Path, cli: Cli) -> None:
    path = hostile_archive("stored-zip", tmp_path, snapshot_path(CASE))
    assert cli("check", path, "-c", config_path(CASE)).code == 0


def test_a_progress_bar_only_on_a_terminal(objects: dict[str, str], moto_s3: MotoS3, tmp_path: Path) -> None:
    """stderr a pseudo-terminal: the download draws a bar (and clears it); piped: nothing."""
    args = [*SNAPSHOT_TOOLS, "status", objects["zip"], "-o", "json", *_s3(moto_s3)]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT, check=False, timeout=120)
        os.close(slave)
        seen = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child's end is closed
                break
            if not data:
                break
            seen += data
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["path"] == objects["zip"]
    assert b"downloading [" in seen
    assert b"100%" in seen
    assert seen.endswith(b"\r\x1b[K")  # cleared: the terminal is left clean
    piped = subprocess.run(args, capture_output=True, env=env, cwd=ROOT, check=False, timeout=120)
    assert piped.returncode == 0
    assert piped.stderr == b""


@pytest.mark.parametrize("url", ["s3://", "s3://bucket-only", "s3://bucket-only/"])
def test_an_s3_url_without_bucket_or_key_is_a_usage_error(url: str, cli: Cli) -> None:
    assert "s3://BUCKET/KEY" in _one_error(cli("status", url), 2)


def test_open_input_from_s3(objects: dict[str, str], moto_s3: MotoS3, private_tmp: Path) -> None:
    assert is_s3_url(objects["zip"])
    assert not is_s3_url(str(snapshot_path(CASE)))
    with open_input(objects["zip"], S3Options(endpoint_url=moto_s3.url)) as inp:
        assert (inp.spec, inp.form) == (objects["zip"], "zip")
        assert inp.path.startswith(str(private_tmp))
        assert {k.lower() for k in inp.s3_metadata} == {k.lower() for k in K3S_METADATA}
        assert [p.split("/")[-1] for p in temp_leftovers(private_tmp) if "/" in p] == ["snapshot.db"]  # archive gone
    assert temp_leftovers(private_tmp) == []

"""Which snapshots of an S3 prefix ``drill`` takes: K3s/RKE2 names parsed, ``.metadata/`` skipped,
``--newest N`` and ``--per-node`` (pure functions), then end to end against a moto S3 server over
HTTP with K3s-style object names (the test fixture snapshots, one of them zipped as K3s does).

Fixtures: tests/fixtures/apiserver-v1.36/b-aescbc (a real kube-apiserver's snapshot).
"""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from snapshot_tools.drill_select import Candidate, candidates, is_prefix, parse_name, select
from tests.support.aws import REGION
from tests.support.drill import put_objects
from tests.support.fixtures import config_path, snapshot_path

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.etcd import EtcdBinaries
    from tests.support.inputs import MotoS3

CASE = "b-aescbc"


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("etcd-snapshot-node1-1700000000", ("node1", 1700000000)),
        ("etcd-snapshot-node1-1700000000.zip", ("node1", 1700000000)),
        ("on-demand-server-0-1754907117", ("server-0", 1754907117)),  # RKE2 docs' example
        ("nightly-cp-1-1700000000.zip", ("nightly-cp-1", 1700000000)),  # unknown base: the whole head
        ("etcd-snapshot.db", None),
        ("snapshot-42", None),  # not a Unix time in seconds
        ("etcd-snapshot-node1-1700000000.db", None),
    ],
)
def test_parse_name(name: str, want: tuple[str, int] | None) -> None:
    got = parse_name(name)
    assert (None if got is None else tuple(got)) == want


def test_is_prefix() -> None:
    assert is_prefix("s3://bucket/") and is_prefix("s3://bucket") and is_prefix("s3://bucket/k3s/")
    assert not is_prefix("s3://bucket/k3s/etcd-snapshot-n-1700000000.zip")
    assert not is_prefix("/var/lib/snap/")


def _obj(key: str, when: int = 1_600_000_000) -> dict[str, Any]:
    return {"Key": key, "LastModified": datetime.fromtimestamp(when, UTC)}


def test_candidates_skip_metadata_and_directories() -> None:
    listing = [
        _obj("k3s/etcd-snapshot-a-1700000000.zip"),
        _obj("k3s/.metadata/etcd-snapshot-a-1700000000.zip"),
        _obj("k3s/"),
        _obj("k3s/sub/"),
        _obj("k3s/backup.db", 1_650_000_000),
    ]
    found = candidates("b", listing, "k3s/")
    assert [(c.url, c.timestamp, c.node) for c in found] == [
        ("s3://b/k3s/etcd-snapshot-a-1700000000.zip", 1_700_000_000, "a"),
        ("s3://b/k3s/backup.db", 1_650_000_000, None),  # no K3s name: its last-modified time
    ]


def test_select_newest_and_per_node() -> None:
    c = [
        Candidate("u1", "k1", 100, "a"),
        Candidate("u2", "k2", 300, "a"),
        Candidate("u3", "k3", 200, "b"),
        Candidate("u4", "k4", 150, "b"),
        Candidate("u5", "k5", 250, None),
    ]
    assert [x.url for x in select(c, 2, per_node=False)] == ["u2", "u5"]
    assert [x.url for x in select(c, None, per_node=False)] == ["u2", "u5", "u3", "u4", "u1"]
    assert [x.url for x in select(c, None, per_node=True)] == ["u2", "u5", "u3"]
    assert [x.url for x in select(c, 2, per_node=True)] == ["u2", "u5", "u3", "u4", "u1"]


# -- end to end on moto S3 ------------------------------------------------------------------


def _zipped(path: Path, entry: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, entry)
    return buf.getvalue()


@pytest.fixture
def bucket(moto_s3: MotoS3, tmp_path: Path) -> str:
    """A bucket with K3s-style snapshots under ``k3s/``: node1's newest is a zip, node2's newest
    is damaged; a ``.metadata/`` object carries the newest name of all (it is no snapshot)."""
    s3 = moto_s3.client()
    name = moto_s3.bucket(f"drill-{tmp_path.name.lower().replace('_', '-')}"[:63])
    good = snapshot_path(CASE)
    damaged = bytearray(good.read_bytes())
    damaged[0:8192] = bytes(8192)
    put_objects(s3, name, {
        "k3s/etcd-snapshot-node1-1700000000": good,
        "k3s/etcd-snapshot-node2-1700001800": good,
        "k3s/on-demand-node2-1700002000": bytes(damaged),
        "k3s/.metadata/etcd-snapshot-node1-1700009999.zip": b'{"note": "metadata, not a snapshot"}',
    })  # fmt: skip
    put_objects(
        s3,
        name,
        {"k3s/etcd-snapshot-node1-1700003600.zip": _zipped(good, "etcd-snapshot-node1-1700003600")},
        metadata={"K3s-Node-Name": "node1", "K3s-Token-Hash": "0123456789ab"},
    )
    return name


def _drill(cli: Cli, moto: MotoS3, *args: Any) -> Any:
    return cli("drill", *args, "-c", config_path(CASE), "--s3-endpoint-url", moto.url, "--s3-region", REGION,
               "-o", "json")  # fmt: skip


@pytest.mark.etcd
def test_newest_one_restores_the_zip(bucket: str, moto_s3: MotoS3, cli: Cli, etcd_bins: EtcdBinaries) -> None:
    r = _drill(cli, moto_s3, f"s3://{bucket}/k3s/", "--newest", "1")
    assert r.code == 0, r.err
    [snap] = r.json()["snapshots"]
    assert snap["snapshot"] == f"s3://{bucket}/k3s/etcd-snapshot-node1-1700003600.zip"
    assert snap["s3_metadata"] == {"k3s-node-name": "node1", "k3s-token-hash": "0123456789ab"}
    restore = next(s for s in snap["stages"] if s["name"] == "restore")
    assert restore["status"] == "passed" and restore["details"]["keys_compared"] > 10


def test_newest_and_per_node_pick_by_name_time(bucket: str, moto_s3: MotoS3, cli: Cli) -> None:
    url = f"s3://{bucket}/k3s/"
    r = _drill(cli, moto_s3, url, "--newest", "3", "--no-restore")
    assert r.code == 3, r.err  # the damaged on-demand snapshot is among them: the worst code
    assert [(s["snapshot"].rsplit("/", 1)[1], s["exit_code"]) for s in r.json()["snapshots"]] == [
        ("etcd-snapshot-node1-1700003600.zip", 0),
        ("on-demand-node2-1700002000", 3),
        ("etcd-snapshot-node2-1700001800", 0),
    ]
    r = _drill(cli, moto_s3, url, "--per-node", "--no-restore")
    assert r.code == 3, r.err
    assert [s["snapshot"].rsplit("/", 1)[1] for s in r.json()["snapshots"]] == [
        "etcd-snapshot-node1-1700003600.zip",
        "on-demand-node2-1700002000",
    ]
    r = _drill(cli, moto_s3, url, "--per-node", "--newest", "2", "--no-restore")
    assert sorted(s["snapshot"].rsplit("/", 1)[1] for s in r.json()["snapshots"]) == [
        "etcd-snapshot-node1-1700000000",
        "etcd-snapshot-node1-1700003600.zip",
        "etcd-snapshot-node2-1700001800",
        "on-demand-node2-1700002000",
    ]


def test_prefix_usage_and_remote_errors(bucket: str, moto_s3: MotoS3, cli: Cli) -> None:
    r = _drill(cli, moto_s3, f"s3://{bucket}/k3s/", "--no-restore")
    assert r.code == 2 and "--newest" in r.err and r.out == ""
    r = _drill(cli, moto_s3, str(snapshot_path(CASE)), "--newest", "1", "--no-restore")
    assert r.code == 2 and "s3://bucket/prefix/" in r.err
    r = _drill(cli, moto_s3, f"s3://{bucket}/nothing-here/", "--newest", "1", "--no-restore")
    assert r.code == 3 and "no snapshot under this prefix" in r.err
    r = _drill(cli, moto_s3, "s3://no-such-bucket-drill/", "--newest", "1", "--no-restore")
    assert r.code == 3 and "NoSuchBucket" in r.err
    r = cli("drill", f"s3://{bucket}/k3s/", "--newest", "1", "--no-restore", "-c", config_path(CASE),
            "--s3-endpoint-url", "http://127.0.0.1:9", "--s3-region", REGION)  # fmt: skip
    assert r.code == 4 and "could not be reached" in r.err
    # One object that is gone: that snapshot fails at integrity (3), the others still run.
    r = _drill(cli, moto_s3, f"s3://{bucket}/k3s/gone-node1-1700000000", str(snapshot_path(CASE)), "--no-restore")
    assert r.code == 3
    assert [s["exit_code"] for s in r.json()["snapshots"]] == [3, 0]

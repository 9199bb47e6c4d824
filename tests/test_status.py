"""``Snapshot`` views and ``status`` against the shared apiserver fixtures (ground truth).

Fixtures: ``../shared/fixtures/apiserver-v1.36/*/`` written by a real kube-apiserver 1.36.2
against etcd 3.5.1; ``manifest.json`` holds ``etcdutl snapshot status -w json`` and the
inventory, ``etcd-raw-values.json`` the raw stored value at every revision the fixture wrote.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from snapshot_tools.resources import normalize_prefix
from snapshot_tools.snapshot import Record, Snapshot
from snapshot_tools.status import resource_path, snapshot_status
from tests.support.cli import snapshot_tools_process
from tests.support.files import sha256
from tests.support.fixtures import FIXTURE_CASES, FIXTURES, load_manifest
from tests.support.snapshots import build_db, kv_bytes, revision_key

CASES = [c for c in FIXTURE_CASES if (FIXTURES / c / "etcd-snapshot.db").is_file()]


def test_fixtures_present() -> None:
    assert len(CASES) == 6


@pytest.mark.parametrize("case", CASES)
def test_status_matches_etcdutl(case: str) -> None:
    expected = load_manifest(case)["snapshot"]
    s = snapshot_status(FIXTURES / case / "etcd-snapshot.db")
    got = {"hash": s.hash, "revision": s.revision, "totalKey": s.total_keys, "totalSize": s.total_size}
    assert got == expected["etcdutl_status"]
    assert s.trailer == "valid"
    assert s.size == expected["bytes"]
    assert s.page_size == 4096


@pytest.mark.parametrize("case", CASES)
def test_latest_view_matches_inventory(case: str) -> None:
    inventory = {
        e["etcd_key"].encode(): e["mod_revision"] for e in load_manifest(case)["etcd_inventory_secrets_configmaps"]
    }
    with Snapshot.open(FIXTURES / case / "etcd-snapshot.db") as snap:
        got = {
            r.key: r.mod_revision
            for prefix in (b"/registry/secrets/", b"/registry/configmaps/")
            for r in snap.latest(prefix)
        }
        everything = list(snap.latest())
    assert got == inventory
    keys = [r.key for r in everything]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert not any(r.tombstone for r in everything)
    assert all(r.mod_revision == r.main for r in everything)


@pytest.mark.parametrize("case", CASES)
def test_all_revisions_hold_every_raw_value(case: str) -> None:
    raw = json.loads((FIXTURES / case / "etcd-raw-values.json").read_text())["values"]
    assert raw
    with Snapshot.open(FIXTURES / case / "etcd-snapshot.db") as snap:
        records = list(snap.all_revisions())
        stored = list(snap.records())
    by_rev = {(r.key, r.main): r for r in records}
    for entry in raw:
        rec = by_rev[(entry["etcd_key"].encode(), entry["mod_revision"])]
        assert rec.value == base64.b64decode(entry["value_b64"])
        assert rec.create_revision == entry["create_revision"]
        assert rec.version == entry["version"]
    # key then revision order, tombstones included, same multiset as stored order
    assert [(r.key, r.main, r.sub) for r in records] == sorted((r.key, r.main, r.sub) for r in records)
    assert sorted(map(repr, records)) == sorted(map(repr, stored))


@pytest.mark.parametrize("case", CASES[:2])
def test_tombstones_hide_keys_from_latest(case: str) -> None:
    """The apiserver deletes its lease keys before the snapshot: tombstones, not live keys."""
    with Snapshot.open(FIXTURES / case / "etcd-snapshot.db") as snap:
        latest = {r.key: r.main for r in snap.latest()}
        tombs = [r for r in snap.all_revisions() if r.tombstone]
    assert tombs
    for t in tombs:
        assert t.value == b"" and t.mod_revision == 0
        assert t.key not in latest or latest[t.key] > t.main


def test_synthetic_history_views() -> None:
    """Puts, overwrites, a delete and a re-create, encoded by the protobuf runtime."""
    rows = [
        (2, b"/r/b", 2, 1, b"b1", False),
        (3, b"/r/a", 3, 1, b"a1", False),
        (4, b"/r/b", 2, 2, b"b2", False),
        (5, b"/r/a", 0, 0, b"", True),
        (6, b"/r/c", 6, 1, b"c1", False),
        (7, b"/r/a", 7, 1, b"a2", False),
        (8, b"/r/c", 0, 0, b"", True),
    ]
    key_bucket = {
        revision_key(rev, 0, tomb): kv_bytes(k, create, 0 if tomb else rev, ver, v, lease=0 if tomb else 99)
        for rev, k, create, ver, v, tomb in rows
    }
    data = build_db({b"key": key_bucket, b"meta": {b"consistent_index": b"\0" * 8}})
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"synthetic-{os.getpid()}.db"
    path.write_bytes(data)
    try:
        with Snapshot.open(path) as snap:
            assert snap.revision == 8
            assert snap.trailer == "valid"
            latest = list(snap.latest())
            assert [(r.key, r.main, r.value, r.version) for r in latest] == [
                (b"/r/a", 7, b"a2", 1),
                (b"/r/b", 4, b"b2", 2),
            ]
            assert latest[0] == Record(b"/r/a", 7, 0, 7, 7, 1, 99, b"a2", False)
            allr = [(r.key, r.main, r.tombstone) for r in snap.all_revisions()]
            assert allr == [
                (b"/r/a", 3, False), (b"/r/a", 5, True), (b"/r/a", 7, False),
                (b"/r/b", 2, False), (b"/r/b", 4, False),
                (b"/r/c", 6, False), (b"/r/c", 8, True),
            ]
            assert [r.key for r in snap.latest(b"/r/b")] == [b"/r/b"]
            assert list(snap.items(b"meta")) == [(b"consistent_index", b"\0" * 8)]
            assert snap.buckets() == [b"key", b"meta"]
    finally:
        path.unlink()


def test_prefix_normalisation_and_resource_paths() -> None:
    assert normalize_prefix("registry") == "/registry/"
    assert normalize_prefix("/registry/") == "/registry/"
    assert normalize_prefix("//registry//") == "/registry/"
    assert normalize_prefix("") == "/"
    for given in ("registry/", "//registry//", "/registry"):
        assert snapshot_status(FIXTURES / "a-identity" / "etcd-snapshot.db", given).etcd_prefix == "/registry"
    p = b"/registry/"
    assert resource_path(b"/registry/secrets/ns/name", p) == "/registry/secrets"
    assert resource_path(b"/registry/apiregistration.k8s.io/apiservices/v1.apps", p) == (
        "/registry/apiregistration.k8s.io/apiservices"
    )
    assert resource_path(b"/registry/health", p) == "/registry/health"


def test_status_resources_and_forms() -> None:
    s = snapshot_status(FIXTURES / "f-secrets-configmaps" / "etcd-snapshot.db", "registry/")
    inventory = load_manifest("f-secrets-configmaps")["etcd_inventory_secrets_configmaps"]
    n_secrets = sum(1 for e in inventory if e["etcd_key"].startswith("/registry/secrets/"))
    n_cms = sum(1 for e in inventory if e["etcd_key"].startswith("/registry/configmaps/"))
    assert s.etcd_prefix == "/registry"
    assert s.resources["/registry/secrets"] == n_secrets
    assert s.resources["/registry/configmaps"] == n_cms
    forms = {(f["resource"], f["form"], f["name"]): f["count"] for f in s.storage_forms}
    assert forms[("/registry/secrets", "aescbc", "both1")] == n_secrets
    assert forms[("/registry/configmaps", "aescbc", "both1")] == n_cms
    assert sum(f["count"] for f in s.storage_forms) == sum(s.resources.values())
    other = snapshot_status(FIXTURES / "f-secrets-configmaps" / "etcd-snapshot.db", "/nothing")
    assert other.resources == {} and other.hash == s.hash


def test_cli_json_and_table() -> None:
    case = "g-kmsv2"
    path = FIXTURES / case / "etcd-snapshot.db"
    res = snapshot_tools_process("status", str(path), "--output", "json")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    doc = json.loads(res.stdout)
    expected = load_manifest(case)["snapshot"]["etcdutl_status"]
    assert (doc["hash"], doc["revision"], doc["total_keys"], doc["total_size"]) == (
        expected["hash"], expected["revision"], expected["totalKey"], expected["totalSize"]
    )
    assert doc["trailer"] == "valid" and doc["page_size"] == 4096 and doc["path"] == str(path)
    assert {"size", "resources", "storage_forms"} <= doc.keys()
    table = snapshot_tools_process("status", str(path))
    assert table.returncode == 0
    assert f"{expected['hash']:x}" in table.stdout
    assert "kms-v2" in table.stdout and "testkms" in table.stdout


def test_trailer_missing_and_mismatch_are_states(tmp_path: Path) -> None:
    src = FIXTURES / "a-identity" / "etcd-snapshot.db"
    expected = load_manifest("a-identity")["snapshot"]["etcdutl_status"]
    raw = tmp_path / "db"
    raw.write_bytes(src.read_bytes()[:-32])  # a member/snap/db copy: no trailer
    assert snapshot_status(raw).trailer == "missing"
    assert snapshot_status(raw).hash == expected["hash"]

    bad = tmp_path / "mismatch.db"
    data = bytearray(src.read_bytes())
    data[-1] ^= 0x01
    bad.write_bytes(bytes(data))
    s = snapshot_status(bad)
    assert s.trailer == "mismatch" and s.hash == expected["hash"]
    res = snapshot_tools_process("status", str(bad), "-o", "json")
    assert res.returncode == 0
    assert json.loads(res.stdout)["trailer"] == "mismatch"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "trailer" in lines[0]


def test_input_not_modified_and_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    shutil.copyfile(FIXTURES / "b-aescbc" / "etcd-snapshot.db", path)
    path.chmod(0o400)
    before = sha256(path)
    mtime = path.stat().st_mtime_ns
    with Snapshot.open(path) as snap:
        resolved = str(path.resolve())
        maps = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(resolved)]
        assert maps, "the snapshot is mapped"
        assert all(line.split()[1].startswith("r-") for line in maps)  # mapped without write
        fds = [fd for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") == resolved]
        assert fds
        for fd in fds:
            flags = int(Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
            assert flags & os.O_ACCMODE == os.O_RDONLY
        list(snap.latest())
        list(snap.all_revisions())
        assert snap.trailer == "valid"
    snapshot_status(path)
    assert sha256(path) == before
    assert path.stat().st_mtime_ns == mtime


def test_free_pages_reported_and_dropped_by_a_rewrite(tmp_path: Path) -> None:
    """etcd copies free pages into snapshots; status counts them, a rebuilt file has none."""
    from snapshot_tools.snapshot import Snapshot
    from snapshot_tools.snapshot_copy import copy_snapshot
    from snapshot_tools.status import snapshot_status

    src = FIXTURES / "b-aescbc" / "etcd-snapshot.db"
    before = snapshot_status(src)
    with Snapshot.open(src) as snap:
        pages = snap.db.page_map()
        copy_snapshot(snap, tmp_path / "out.db")
    assert before.free_pages == len(pages.free) + len(pages.unreachable) > 0
    assert pages.reachable + before.free_pages + 2 >= snap.db.hwm  # every page accounted for
    after = snapshot_status(tmp_path / "out.db")
    assert after.free_pages == 0
    assert (after.hash, after.revision, after.total_keys) == (before.hash, before.revision, before.total_keys)

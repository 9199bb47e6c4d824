"""``kms-plugin keyring retire``: a KEK leaves the keyring only when no stored value needs it.

The scenario of issue 14: a keyring with three KEKs (A old, B never used, C current); Secrets
and history in a real etcd, written as kube-apiserver writes them through our plugin (Status,
one Encrypt of a seed per KEK); A survives only in old revisions (overwritten and deleted keys).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from kms_plugin.client import KMSv2Client
from kms_plugin.keks.archive import archive_path
from kms_plugin.keks.audit import read_audit
from kms_plugin.keks.local import ACTIVE, Keyring
from tests.support.configs import kms, rule, write_config
from tests.support.inputs import k3s_zip
from tests.support.k8s_objects import json_object
from tests.support.kms import file_mode, served, short_dir, write_through_plugin
from tests.support.lifecycle import assert_no_material, run_plugin

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.inputs import MotoS3

pytestmark = pytest.mark.etcd


def test_retire_unused_refuse_used_by_history_then_reencrypt_and_retire(
    etcd_server, tmp_path: Path, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = [f"/registry/secrets/default/s{i}" for i in range(4)]
    with short_dir() as d:
        keyring = d / "k.json"
        assert run_plugin(capsys, "keyring", "init", keyring).code == 0
        etcd = etcd_server.client()
        with served(d):
            endpoint = f"unix://{d / 'p.sock'}"
            cfg = write_config(tmp_path / "enc.json", rule(["secrets", "configmaps"], kms("ours", endpoint)))
            with KMSv2Client(endpoint) as client:
                write_through_plugin(etcd, client, [*secrets, "/registry/configmaps/default/c0"])  # under A
                assert run_plugin(capsys, "keyring", "rotate", keyring).code == 0  # B: never used
                assert run_plugin(capsys, "keyring", "rotate", keyring).code == 0  # C: current
                write_through_plugin(etcd, client, [*secrets, "/registry/secrets/default/s9"])  # A only in history now
            etcd.delete("/registry/configmaps/default/c0")  # its A revision stays in the history
        snap = etcd_server.snapshot_save(tmp_path / "snap.db")
        a, b, c = Keyring.load(keyring).keks
        assert c.state == ACTIVE

        # B: no stored value needs it -> retired into the archive beside the keyring.
        res = run_plugin(capsys, "keyring", "retire", keyring, b.id, "--proof", snap)
        assert res.code == 0, res.err
        assert f"retired KEK {b.id}" in res.out
        assert [k.id for k in Keyring.load(keyring).keks] == [a.id, c.id]
        assert file_mode(archive_path(keyring)) == 0o600
        assert_no_material(archive_path(keyring), [a, b, c])
        listed = run_plugin(capsys, "keyring", "archive", keyring, "-o", "json")
        assert [e["id"] for e in json.loads(listed.out)] == [b.id]

        # A: only old revisions need it -> refused, exit 1, with counts per resource and keys.
        res = run_plugin(capsys, "keyring", "retire", keyring, a.id, "--proof", snap, "-o", "json")
        assert res.code == 1
        assert res.err.count("\n") == 1 and f"refusing to retire KEK {a.id}" in res.err
        report = json.loads(res.out)
        assert report["proven_unused"] is False
        needing = {row["what"]: row for row in report["needing"]}
        assert {k: v["count"] for k, v in needing.items()} == {"secrets": 4, "configmaps": 1}
        assert any(k.startswith("/registry/configmaps/default/c0@") for k in needing["configmaps"]["first"])
        assert report["values_by_kek"] == {c.id: 5}
        assert [k.id for k in Keyring.load(keyring).keks] == [a.id, c.id]  # unchanged

        table = run_plugin(capsys, "keyring", "retire", keyring, a.id, "--proof", snap)
        assert table.code == 1
        assert f"still need KEK {a.id}: secrets: 4" in table.out
        assert "/registry/secrets/default/s0@" in table.out

        # C is active: never retired (exit 2 before any proof).
        res = run_plugin(capsys, "keyring", "retire", keyring, c.id, "--proof", snap)
        assert res.code == 2 and "active" in res.err

        # Re-encrypt every revision to the current KEK, then A is provably unused.
        out = tmp_path / "reencrypted.db"
        rc, _, err = cli("reencrypt", snap, "-c", cfg, "--keyring", f"ours={keyring}", "--to", cfg, out)
        assert rc == 0, err
        res = run_plugin(capsys, "keyring", "retire", keyring, a.id, "--proof", out, "-o", "json")
        assert res.code == 0, res.err
        assert json.loads(res.out)["proven_unused"] is True
        trimmed = Keyring.load(keyring)
        assert [k.id for k in trimmed.keks] == [c.id]

        # check with the trimmed keyring: every revision reads and is current.
        rc, report = cli.check_json(out, "-c", cfg, "--keyring", f"ours={keyring}", "--all-revisions")
        assert rc == 0
        assert report["objects"] and {o["verdict"] for o in report["objects"]} == {"current"}

        # The audit log: one line per change, in order, no key material.
        actions = [(r["action"], r["kek_ids"]) for r in read_audit(keyring)]
        assert actions[0][0] == "init"
        assert [x for x in actions if x[0] == "retire"] == [("retire", [b.id]), ("retire", [a.id])]
        assert [x[0] for x in actions].count("rotate") == 2
        assert_no_material(keyring.with_name("k.json.audit.log"), [a, b, c])
        retired = [r for r in read_audit(keyring) if r["action"] == "retire"][-1]
        assert retired["proof"]["sources"][0]["source"] == str(out)

        # The archive still holds both, sealed under C, and gives A back on demand.
        res = run_plugin(capsys, "keyring", "restore", keyring, a.id)
        assert res.code == 0, res.err
        assert {k.id: k.state for k in Keyring.load(keyring).keks} == {c.id: ACTIVE, a.id: "decrypt-only"}
        assert Keyring.load(keyring).keks[-1].key == a.key


def test_retire_refuses_a_damaged_or_missing_source(
    etcd_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_dir() as d:
        keyring = d / "k.json"
        assert run_plugin(capsys, "keyring", "init", keyring).code == 0
        assert run_plugin(capsys, "keyring", "rotate", keyring).code == 0
        old = Keyring.load(keyring).keks[0]
        etcd_server.client().put("/registry/secrets/default/plain", json_object("plain"))
        snap = etcd_server.snapshot_save(tmp_path / "snap.db")
        cut = tmp_path / "cut.db"
        cut.write_bytes(snap.read_bytes()[: snap.stat().st_size // 2])
        for source, code in ((cut, 3), (tmp_path / "missing.db", 3)):
            res = run_plugin(capsys, "keyring", "retire", keyring, old.id, "--proof", snap, "--proof", source)
            assert res.code == code, (source, res)
            assert res.err.count("\n") == 1 and "Traceback" not in res.err
            assert len(Keyring.load(keyring).keks) == 2
        # A flipped byte: the SHA-256 trailer no longer matches -> refused (exit 1), named.
        data = bytearray(snap.read_bytes())
        data[-40] ^= 0xFF
        flipped = tmp_path / "flipped.db"
        flipped.write_bytes(bytes(data))
        res = run_plugin(capsys, "keyring", "retire", keyring, old.id, "--proof", flipped)
        assert res.code in (1, 3), res
        assert len(Keyring.load(keyring).keks) == 2
        # The intact snapshot proves it.
        res = run_plugin(capsys, "keyring", "retire", keyring, old.id, "--proof", snap)
        assert res.code == 0, res.err


def test_retire_proves_against_a_live_etcd_and_a_zipped_s3_snapshot(
    etcd_server, tmp_path: Path, capsys: pytest.CaptureFixture[str], moto_s3: MotoS3
) -> None:
    """Every SOURCE form gives the same proof as the snapshot file of the same keyspace."""
    secrets = [f"/registry/secrets/default/s{i}" for i in range(3)]
    with short_dir() as d:
        keyring = d / "k.json"
        assert run_plugin(capsys, "keyring", "init", keyring).code == 0
        etcd = etcd_server.client()
        with served(d), KMSv2Client(f"unix://{d / 'p.sock'}") as client:
            write_through_plugin(etcd, client, secrets)  # under A
            assert run_plugin(capsys, "keyring", "rotate", keyring).code == 0
            write_through_plugin(etcd, client, secrets[:1])  # A still live in s1, s2 and in s0's history
        snap = etcd_server.snapshot_save(tmp_path / "etcd-snapshot-node1-1700000000")
        url = moto_s3.put("k3s-backups", "etcd-snapshot-node1-1700000000.zip", k3s_zip(snap, tmp_path, snap.name))
        a = Keyring.load(keyring).keks[0]

        def needing(*args: str | Path) -> dict[str, int]:
            res = run_plugin(capsys, "keyring", "retire", keyring, a.id, *args, "--dry-run", "-o", "json")
            assert res.code == 1, res.err  # A is still needed: refused, nothing changed
            return {row["what"]: row["count"] for row in json.loads(res.out)["needing"]}

        from_file = needing("--proof", snap)
        assert from_file == {"secrets": 3}  # s0's old revision, s1, s2
        assert needing("--proof", etcd_server.endpoint) == from_file
        assert needing("--proof", url, "--s3-endpoint-url", moto_s3.url, "--s3-region", "us-east-1") == from_file
        dead = run_plugin(capsys, "keyring", "retire", keyring, a.id, "--proof", "http://127.0.0.1:9", "--dry-run")
        assert dead.code == 4 and dead.err.count("\n") == 1
        assert len(Keyring.load(keyring).keks) == 2

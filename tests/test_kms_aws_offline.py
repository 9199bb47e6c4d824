"""``snapshot-tools check --aws-kms``: a snapshot written through a real etcd with seeds wrapped by
the plugin on AWS KMS (moto), checked offline with the plugin stopped.

The snapshot holds every format the AWS backend reads: local-KEK seeds (``kh``), plain seeds
(``ka``, ``--no-local-kek``), aws-encryption-provider KMS v2 seeds and KMS v1 DEKs (``'1'`` +
CiphertextBlob, made with boto3). The proxy in front of moto counts the AWS calls the check makes.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest

from kms_plugin.client import KMSv2Client
from snapshot_tools.providers import kms_prefix, kmsv1, kmsv2
from tests.support.aws import REGION, served_aws
from tests.support.configs import kms as kms_provider
from tests.support.configs import rule, static, write_config
from tests.support.k8s_objects import json_object
from tests.support.kms import short_dir

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

pytestmark = pytest.mark.etcd
CONTEXT = {"cluster": "c1"}


def _secret(name: str) -> bytes:
    return json_object(name)


def _config(path: Path) -> Path:
    """The two KMS providers the values were written under; --aws-kms reads them, never a socket."""
    return write_config(
        path,
        rule(
            ["secrets"],
            kms_provider("ours", "unix:///tmp/no-such-plugin.sock"),
            kms_provider("old", "unix:///tmp/no-such-plugin-v1.sock", api_version="v1"),
        ),
    )


def _write_values(etcd, d: Path, proxy_url: str, alias: str, arn: str, kms) -> dict[str, str]:
    """Write the values; returns etcd key -> the verdict expected with the key named."""
    expected: dict[str, str] = {}
    for local_kek in (True, False):
        with (
            served_aws(d, proxy_url, alias, context=CONTEXT, local_kek=local_kek),
            KMSv2Client(f"unix://{d / 'p.sock'}") as client,
        ):
            status = client.status()
            seed = os.urandom(32)
            wrapped = client.encrypt(seed)
        assert wrapped.key_id == status.key_id
        assert bool(wrapped.annotations) == local_kek
        for i in range(5):
            key = f"/registry/secrets/default/{'h' if local_kek else 'p'}{i}"
            payload = kmsv2.encrypt(seed, _secret(key), key.encode(), encrypted_dek_source=wrapped.ciphertext,
                                    key_id=wrapped.key_id, annotations=wrapped.annotations)
            etcd.put(key, kms_prefix("v2", "ours") + payload)
            expected[key] = "current"
    # aws-encryption-provider (KMS v2): '1' + CiphertextBlob, key_id = its --key string.
    seed = os.urandom(32)
    blob = kms.encrypt(KeyId=arn, Plaintext=seed, EncryptionContext=CONTEXT)["CiphertextBlob"]
    for i in range(4):
        key = f"/registry/secrets/legacy/l{i}"
        payload = kmsv2.encrypt(seed, _secret(key), key.encode(), encrypted_dek_source=b"1" + blob, key_id=alias)
        etcd.put(key, kms_prefix("v2", "ours") + payload)
        expected[key] = "stale"
    # aws-encryption-provider (KMS v1): one DEK per write.
    for i in range(3):
        key = f"/registry/secrets/v1/o{i}"
        dek = os.urandom(32)
        enc_dek = b"1" + kms.encrypt(KeyId=arn, Plaintext=dek, EncryptionContext=CONTEXT)["CiphertextBlob"]
        etcd.put(key, kms_prefix("v1", "old") + kmsv1.encrypt(dek, enc_dek, _secret(key), key.encode()))
        expected[key] = "stale"
    return expected


def test_snapshot_checked_offline_from_aws(etcd_server, moto_kms, proxy, tmp_path: Path, cli: Cli) -> None:
    alias = f"alias/offline-{os.getpid()}"
    arn = moto_kms.create_key(alias=alias.removeprefix("alias/"))
    kms = moto_kms.client()
    with short_dir() as d:
        expected = _write_values(etcd_server.client(), d, proxy.url, alias, arn, kms)
    # The plugin is stopped now (its socket is gone with the directory).
    snap = tmp_path / "snap.db"
    etcd_server.snapshot_save(snap)
    cfg = _config(tmp_path / "enc.json")
    aws = ["--aws-region", REGION, "--aws-endpoint-url", proxy.url, "--aws-encryption-context", "cluster=c1"]

    before = proxy.count("Decrypt")
    rc, report = cli.check_json(snap, "-c", cfg, "--aws-kms", f"ours={alias}", "--aws-kms", f"old={arn}", *aws)
    got = {o["key"]: o["verdict"] for o in report["objects"]}
    assert got == expected
    assert rc == 0  # stale is not in the default --fail-on
    # One AWS Decrypt per distinct wrapped key: the local KEK, the plain seed, the legacy seed and
    # three v1 DEKs; not one per object.
    assert proxy.count("Decrypt") - before == 6

    # Without a key: everything reads, nothing is current (no key_id to compare with).
    rc, report = cli.check_json(snap, "-c", cfg, "--aws-kms", "ours", "--aws-kms", "old", *aws)
    assert {o["verdict"] for o in report["objects"]} == {"stale"}

    # Another encryption context: AWS refuses every data key.
    wrong = [*aws[:-1], "cluster=c2"]
    rc, report = cli.check_json(snap, "-c", cfg, "--aws-kms", f"ours={alias}", "--aws-kms", f"old={arn}", *wrong)
    assert {(o["verdict"], o["reason"]) for o in report["objects"]} == {("unreadable", "wrong-key")}
    assert rc == 1

    # Another key named. Our values carry a key_id bound to the key that wrapped them, so they
    # still read (as after an alias move) but are stale; aws-encryption-provider's carry only a
    # name, which must name the configured key, so they are refused.
    other = moto_kms.create_key()
    rc, report = cli.check_json(snap, "-c", cfg, "--aws-kms", f"ours={other}", "--aws-kms", f"old={other}", *aws)
    got = {o["key"]: (o["verdict"], o["reason"]) for o in report["objects"]}
    assert got == {
        k: ("stale", None) if "/default/" in k else ("unreadable", "wrong-key") for k in expected
    }

    # AWS unreachable: exit 4, one line on stderr.
    proxy.set("drop")
    rc, report = cli.check_json(
        snap, "-c", cfg, "--aws-kms", f"ours={alias}", "--aws-kms", f"old={arn}",
        "--aws-region", REGION, "--aws-endpoint-url", proxy.url,
    )  # fmt: skip
    assert rc == 4
    proxy.clear()

    # Bad flags: exit 2.
    assert cli("check", snap, "-c", cfg, "--aws-kms", "ours=", *aws).code == 2
    assert cli("check", snap, "-c", cfg, "--aws-kms", "ours", "--kms", "ours=unix:///x.sock", *aws).code == 2


def test_rewrite_and_extract_through_aws(etcd_server, moto_kms, proxy, tmp_path: Path, cli: Cli) -> None:
    """reencrypt/extract read every AWS format with --aws-kms, and KMS v2 output can be wrapped by AWS."""
    alias = f"alias/rewrite-{os.getpid()}"
    arn = moto_kms.create_key(alias=alias.removeprefix("alias/"))
    with short_dir() as d:
        expected = _write_values(etcd_server.client(), d, proxy.url, alias, arn, moto_kms.client())
    snap = tmp_path / "snap.db"
    etcd_server.snapshot_save(snap)
    cfg = _config(tmp_path / "enc.json")
    gcm = write_config(tmp_path / "gcm.json", rule(["secrets"], static("aesgcm", ("g1", os.urandom(32)))))
    aws = ["--aws-region", REGION, "--aws-endpoint-url", proxy.url, "--aws-encryption-context", "cluster=c1"]
    names = ["--aws-kms", f"ours={alias}", "--aws-kms", f"old={arn}"]

    # Away from AWS: every value (all four AWS formats) rewritten under a static key.
    out = tmp_path / "gcm.db"
    rc, *_ = cli("reencrypt", str(snap), "-c", str(cfg), "--to", str(gcm), str(out), *names, *aws)
    assert rc == 0
    rc, text, _ = cli("check", str(out), "-c", str(gcm), "--output", "json")
    report = json.loads(text)
    assert rc == 0
    assert {o["key"]: o["verdict"] for o in report["objects"]} == dict.fromkeys(expected, "current")

    # Onto AWS: one fresh seed wrapped by the AWS key; every object current for the AWS config.
    out2 = tmp_path / "aws.db"
    rc, *_ = cli("reencrypt", str(snap), "-c", str(cfg), "--to", str(cfg), str(out2), *names, *aws)
    assert rc == 0
    rc, text, _ = cli("check", str(out2), "-c", str(cfg), "--output", "json", *names, *aws)
    report = json.loads(text)
    assert {o["key"]: (o["provider"], o["verdict"]) for o in report["objects"]} == dict.fromkeys(
        expected, ("kms-v2", "current")
    )

    # extract decrypts through AWS too.
    rc, text, _ = cli("extract", str(snap), "-c", str(cfg), "--output", "json", *names, *aws)
    assert rc == 0
    items = json.loads(text)["items"]
    # The test Secrets are named after their own etcd keys.
    assert {i["metadata"]["name"] for i in items} == set(expected)

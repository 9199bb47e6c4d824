"""``kms-plugin pkcs11 retire-key|restore-key|purge-key``: an HSM key leaves use only when no stored
value needs it, and every key change is in the audit log.

The scenario of issue 14 for a token: a family K-1, K-2, K-3 (current) in a SoftHSM2 token; KMS v2
Secrets written through a real etcd with seeds wrapped by the real plugin serving over a unix
socket (with the local-KEK hierarchy, the default, and without it); K-1 survives only in old
revisions (overwritten and deleted keys), K-2 wrapped nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from kms_plugin.api import pkcs11_settings
from kms_plugin.client import KMSv2Client
from kms_plugin.errors import InvalidCiphertext
from snapshot_tools.providers import kms_prefix, kmsv2
from tests.support.configs import kms, rule, write_config
from tests.support.k8s_objects import json_object
from tests.support.kms import file_mode, serve_config, serving, short_dir, write_through_plugin
from tests.support.lifecycle import run_plugin
from tests.support.softhsm import MODULE, softhsm_token

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.softhsm import Token

pytestmark = pytest.mark.etcd


def _labels(capsys: pytest.CaptureFixture[str], token: Token) -> dict[str, str]:
    res = run_plugin(capsys, "pkcs11", "list-keys", *token.flags(), "-o", "json")
    assert res.code == 0, res.err
    return {row["label"]: ("retired" if row.get("retired") else "current" if row["current"] else "decrypt-only")
            for row in json.loads(res.out)}  # fmt: skip


def _eventually(fn: Any, timeout: float = 10.0) -> Any:
    """``fn()`` once it stops raising (the plugin re-reads the token at its probe interval)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("local_kek", [True, False], ids=["local-kek", "direct"])
def test_retire_restore_purge_a_pkcs11_key(
    etcd_server, tmp_path: Path, cli: Cli, capsys: pytest.CaptureFixture[str], local_kek: bool
) -> None:
    secrets = [f"/registry/secrets/default/s{i}" for i in range(4)]
    with softhsm_token() as token, short_dir() as d:
        settings = pkcs11_settings(MODULE, token.label, "kek", f"@{token.pin_file}")
        config = serve_config(d, pkcs11=settings, local_kek=local_kek, probe_interval=0.3)
        etcd = etcd_server.client()
        assert run_plugin(capsys, "pkcs11", "init-key", *token.flags()).code == 0
        with serving(config), KMSv2Client(f"unix://{d / 'p.sock'}") as client:
            # under K-1
            old_seed, old = write_through_plugin(etcd, client, [*secrets, "/registry/configmaps/default/c0"])
        assert bool(old.annotations) == local_kek
        assert run_plugin(capsys, "pkcs11", "rotate-key", *token.flags()).code == 0  # K-2: wraps nothing
        early = etcd_server.snapshot_save(tmp_path / "early.db")  # taken while K-2 was current
        assert run_plugin(capsys, "pkcs11", "rotate-key", *token.flags()).code == 0  # K-3: current
        with serving(config), KMSv2Client(f"unix://{d / 'p.sock'}") as client:
            write_through_plugin(etcd, client, [*secrets, "/registry/secrets/default/s9"])  # K-1 only in history now
            etcd.delete("/registry/configmaps/default/c0")  # its K-1 revision stays in the history
            snap = etcd_server.snapshot_save(tmp_path / "snap.db")
            # The running plugin still reads a K-1 value (and caches its local KEK, if any).
            assert client.decrypt(old.ciphertext, old.key_id, old.annotations) == old_seed
            assert _labels(capsys, token) == {"kek-1": "decrypt-only", "kek-2": "decrypt-only", "kek-3": "current"}
            cfg = write_config(tmp_path / "enc.json", rule(["secrets", "configmaps"], kms("ours", "unix:///gone.sock")))

            # A SOURCE taken before K-2 stopped being current (the audit log says when) proves nothing.
            res = run_plugin(capsys, "pkcs11", "retire-key", *token.flags(), "kek-2", "--proof", early, "--dry-run")
            assert res.code == 1 and "was written before KEK kek-2 stopped being active" in res.out

            # K-2: no stored value needs it -> retired in the token (relabelled, encrypt/decrypt off).
            res = run_plugin(capsys, "pkcs11", "retire-key", *token.flags(), "kek-2", "--proof", snap)
            assert res.code == 0, res.err
            assert "retired PKCS#11 key kek-2" in res.out
            assert _labels(capsys, token) == {"kek-1": "decrypt-only", "kek-3": "current", "kek-2": "retired"}

            # K-1: only old revisions need it -> refused, exit 1, counts per resource and the keys.
            res = run_plugin(capsys, "pkcs11", "retire-key", *token.flags(), "kek-1", "--proof", snap, "-o", "json")
            assert res.code == 1
            assert res.err.count("\n") == 1 and "refusing to retire PKCS#11 key kek-1" in res.err
            report = json.loads(res.out)
            assert report["proven_unused"] is False
            needing = {row["what"]: row for row in report["needing"]}
            assert {k: v["count"] for k, v in needing.items()} == {"secrets": 4, "configmaps": 1}
            assert any(k.startswith("/registry/configmaps/default/c0@") for k in needing["configmaps"]["first"])
            assert report["values_by_kek"] == {"kek-3": 5}  # each unwrapped through the token
            assert report["unreadable"] == []
            table = run_plugin(capsys, "pkcs11", "retire-key", *token.flags(), "kek-1", "--proof", snap)
            assert table.code == 1 and "still need KEK kek-1: secrets: 4" in table.out
            assert "/registry/secrets/default/s0@" in table.out

            # K-3 is current: never retired (exit 2, before any proof); a retired key neither.
            for label in ("kek-3", "kek-2", "kek-9"):
                res = run_plugin(capsys, "pkcs11", "retire-key", *token.flags(), label, "--proof", snap)
                assert res.code == 2 and res.err.count("\n") == 1, (label, res)
            assert "current" in run_plugin(
                capsys, "pkcs11", "retire-key", *token.flags(), "kek-3", "--proof", snap
            ).err

            # Re-encrypt every revision to the current key; then K-1 is provably unused.
            out = tmp_path / "reencrypted.db"
            res = cli("reencrypt", snap, "-c", cfg, "--to", cfg, out, "--pkcs11", "ours", *token.flags())
            assert res.code == 0, res.err
            res = run_plugin(capsys, "pkcs11", "retire-key", *token.flags(), "kek-1", "--proof", out, "-o", "json")
            assert res.code == 0, res.err
            assert json.loads(res.out)["proven_unused"] is True
            assert _labels(capsys, token) == {"kek-3": "current", "kek-1": "retired", "kek-2": "retired"}

            # The serving plugin stops offering K-1: a Decrypt needing it fails cleanly, naming why.
            def refused() -> str:
                try:
                    client.decrypt(old.ciphertext, old.key_id, old.annotations)
                except InvalidCiphertext as exc:
                    return str(exc)
                raise AssertionError("the plugin still decrypts a value of the retired key")

            assert "restore-key kek-1" in _eventually(refused)
            assert client.status().healthz == "ok"

            # check with the trimmed family: every revision of the re-encrypted snapshot is current.
            rc, report = cli.check_json(out, "-c", cfg, "--pkcs11", "ours", *token.flags(), "--all-revisions")
            assert rc == 0
            assert report["objects"] and {o["verdict"] for o in report["objects"]} == {"current"}
            # ... while the old snapshot's K-1 values cannot be read offline any more.
            rc, report = cli.check_json(snap, "-c", cfg, "--pkcs11", "ours", *token.flags(), "--all-revisions")
            assert rc != 0

            # restore-key brings K-1 back: the plugin decrypts its values again.
            res = run_plugin(capsys, "pkcs11", "restore-key", *token.flags(), "kek-1")
            assert res.code == 0, res.err
            assert _labels(capsys, token)["kek-1"] == "decrypt-only"
            assert _eventually(lambda: client.decrypt(old.ciphertext, old.key_id, old.annotations)) == old_seed
            assert run_plugin(capsys, "pkcs11", "restore-key", *token.flags(), "kek-1").code == 2  # not retired

        # purge-key: only retired keys, only with --yes-destroy-keys; then gone for good.
        assert run_plugin(capsys, "pkcs11", "purge-key", *token.flags(), "kek-1", "--yes-destroy-keys").code == 2
        assert run_plugin(capsys, "pkcs11", "retire-key", *token.flags(), "kek-1", "--proof", out).code == 0
        res = run_plugin(capsys, "pkcs11", "purge-key", *token.flags(), "kek-1")
        assert res.code == 2 and "--yes-destroy-keys" in res.err
        res = run_plugin(capsys, "pkcs11", "purge-key", *token.flags(), "kek-1", "--yes-destroy-keys")
        assert res.code == 0, res.err
        assert _labels(capsys, token) == {"kek-3": "current", "kek-2": "retired"}
        assert run_plugin(capsys, "pkcs11", "restore-key", *token.flags(), "kek-1").code == 2

        # The audit log: one line per change, in order, with ids and never the PIN.
        log = token.audit_log
        assert file_mode(log) == 0o600
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert [(r["action"], r["key_label"]) for r in records] == [
            ("init-key", "kek-1"), ("rotate-key", "kek-2"), ("rotate-key", "kek-3"), ("retire-key", "kek-2"),
            ("retire-key", "kek-1"), ("restore-key", "kek-1"), ("retire-key", "kek-1"), ("purge-key", "kek-1"),
        ]  # fmt: skip
        for r in records:
            assert r["token"] == token.label and r["token_serial"] and len(r["cka_id"]) == 32
            assert r["key_id"].startswith("sha256:") and r["user"] and r["host"] and r["pid"]
        assert records[4]["proof"]["sources"][0]["source"] == str(out)
        assert token.pin not in log.read_text()


def test_concurrent_rotations_make_two_distinct_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with softhsm_token() as token:
        assert run_plugin(capsys, "pkcs11", "init-key", *token.flags()).code == 0
        argv = [sys.executable, "-m", "kms_plugin.cli", "pkcs11", "rotate-key", *token.flags()]
        procs = [subprocess.Popen(argv, env=token.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]  # fmt: skip
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        from tests.support.softhsm import reinitialize

        reinitialize()  # this process's SoftHSM re-reads the store the subprocesses wrote
        res = run_plugin(capsys, "pkcs11", "list-keys", *token.flags(), "-o", "json")
        rows = json.loads(res.out)
        assert sorted(r["label"] for r in rows) == ["kek-1", "kek-2", "kek-3"]
        assert len({r["key_id"] for r in rows}) == 3
        actions = [json.loads(line)["action"] for line in token.audit_log.read_text().splitlines()]
        assert actions == ["init-key", "rotate-key", "rotate-key"]
        # A mistyped family label lists nothing, and says so on stderr (not a silent empty table).
        res = run_plugin(capsys, "pkcs11", "list-keys", *token.flags(key_label="kekk"), "-o", "json")
        assert res.code == 0 and json.loads(res.out) == []
        assert "holds no key family 'kekk'" in res.err


def test_a_value_naming_another_key_must_unwrap(
    etcd_server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An altered value that names the current key (either format) cannot hide a use: unreadable."""
    from kms_plugin.api import Pkcs11Keys

    with softhsm_token() as token:
        assert run_plugin(capsys, "pkcs11", "init-key", *token.flags()).code == 0
        assert run_plugin(capsys, "pkcs11", "rotate-key", *token.flags()).code == 0
        keys = Pkcs11Keys(pkcs11_settings(MODULE, token.label, "kek", f"@{token.pin_file}"))
        try:
            seed = os.urandom(32)
            direct = keys.wrap(seed)  # "kx" under kek-2
            local = keys.wrap(os.urandom(32))  # a local KEK wrapped by kek-2
        finally:
            keys.close()
        bad_direct = direct.ciphertext[:-1] + bytes([direct.ciphertext[-1] ^ 1])
        bad_local = b"kh\x01" + hashlib.sha256(local.ciphertext).digest()[:8] + os.urandom(12 + 32 + 16)
        etcd = etcd_server.client()
        for name, wrapped, annotations in (
            ("direct", bad_direct, {}),
            ("local", bad_local, {"encrypted-local-kek.kms.example": local.ciphertext}),
        ):
            key = f"/registry/secrets/default/{name}"
            payload = kmsv2.encrypt(seed, json_object(key), key.encode(), encrypted_dek_source=wrapped,
                                    key_id=direct.key_id, annotations=annotations)  # fmt: skip
            etcd.put(key, kms_prefix("v2", "ours") + payload)
        snap = etcd_server.snapshot_save(tmp_path / "snap.db")
        res = run_plugin(capsys, "pkcs11", "retire-key", *token.flags(), "kek-1", "--proof", snap, "-o", "json")
        assert res.code == 1, res.err
        report = json.loads(res.out)
        assert report["needing"] == [] and report["values_by_kek"] == {}
        assert sum(row["count"] for row in report["unreadable"]) == 2
        assert all("kek-2" in row["what"] for row in report["unreadable"])
        assert _labels(capsys, token) == {"kek-1": "decrypt-only", "kek-2": "current"}

        # A token that stops answering during the proof gives no verdict: exit 4 (as an unreachable
        # KMS), not a refusal that reads as "values need this key". Fault injected at the unwrap.
        from kms_plugin.errors import KeyUnavailable
        from kms_plugin.keks.pkcs11 import Pkcs11Backend

        def token_gone(self: Pkcs11Backend, *args: object) -> bytes:
            raise KeyUnavailable(f"pkcs11: token {token.label!r} stopped answering")

        monkeypatch.setattr(Pkcs11Backend, "_unwrap", token_gone)
        res = run_plugin(capsys, "pkcs11", "retire-key", *token.flags(), "kek-1", "--proof", snap)
        assert res.code == 4, res.err
        assert "the token failed during the proof" in res.err and "nothing retired" in res.err
        monkeypatch.undo()
        assert _labels(capsys, token) == {"kek-1": "decrypt-only", "kek-2": "current"}

"""The path kube-apiserver takes with our plugin, then the offline check of what it wrote.

Secrets are encrypted with the KMS v2 provider of ``snapshot_tools.providers`` in seed mode, the
seed wrapped once by our ``kms-plugin`` (served on a real unix socket), written into a real etcd,
saved as a snapshot, and checked both through the plugin socket and straight from the keyring.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kms_plugin.client import KMSv2Client
from snapshot_tools.cli import main
from snapshot_tools.providers import kms_prefix, kmsv2
from tests.kms_support import cli, served, short_dir

pytestmark = pytest.mark.etcd


def _secret(name: str) -> bytes:
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}).encode()


def _check(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    with pytest.raises(SystemExit) as info:
        main(["check", *args, "--output", "json"])
    return int(info.value.code or 0), json.loads(capsys.readouterr().out)


def test_plugin_written_snapshot_checks_current_via_socket_and_keyring(
    etcd_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: ANN001
) -> None:
    with short_dir() as d:
        with served(d):
            endpoint = f"unix://{d / 'p.sock'}"
            cfg = tmp_path / "enc.yaml"
            cfg.write_text(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
                "- resources: [secrets]\n  providers:\n"
                f"  - kms: {{apiVersion: v2, name: ours, endpoint: '{endpoint}', timeout: 3s}}\n"
            )
            # As the apiserver does: Status, then one Encrypt of a fresh seed for many objects.
            with KMSv2Client(endpoint) as client:
                status = client.status()
                seed = os.urandom(32)
                wrapped = client.encrypt(seed)
            assert wrapped.key_id == status.key_id
            etcd = etcd_server.client()
            keys = [f"/registry/secrets/ns{i % 3}/s{i}" for i in range(30)]
            for key in keys:
                payload = kmsv2.encrypt(
                    seed,
                    _secret(key),
                    key.encode(),
                    encrypted_dek_source=wrapped.ciphertext,
                    key_id=wrapped.key_id,
                    annotations=wrapped.annotations,
                )
                etcd.put(key, kms_prefix("v2", "ours") + payload)
            snap = tmp_path / "snap.db"
            etcd_server.snapshot_save(snap)

            rc, report = _check([str(snap), "-c", str(cfg), "--kms", f"ours={endpoint}"], capsys)
            assert rc == 0
            assert {o["key"] for o in report["objects"]} == set(keys)
            assert {o["verdict"] for o in report["objects"]} == {"current"}

        # Plugin stopped: the keyring file alone gives the same verdicts.
        keyring = d / "k.json"
        rc, report = _check([str(snap), "-c", str(cfg), "--keyring", f"ours={keyring}"], capsys)
        assert rc == 0
        assert {o["verdict"] for o in report["objects"]} == {"current"}

        # Rotation: the old KEK stays decrypt-only, so the values read but are stale now.
        assert cli("keyring", "rotate", str(keyring)) == 0
        capsys.readouterr()
        rc, report = _check(
            [str(snap), "-c", str(cfg), "--keyring", f"ours={keyring}", "--fail-on", "stale"], capsys
        )
        assert {o["verdict"] for o in report["objects"]} == {"stale"}
        assert rc == 1

        # A different keyring (another KEK) cannot unwrap them.
        other = d / "other.json"
        assert cli("keyring", "init", str(other)) == 0
        capsys.readouterr()
        rc, report = _check([str(snap), "-c", str(cfg), "--keyring", f"ours={other}"], capsys)
        assert {(o["verdict"], o["reason"]) for o in report["objects"]} == {("unreadable", "wrong-key")}
        assert rc == 1

        # A keyring file others can read is refused with exit 2.
        os.chmod(keyring, 0o644)
        with pytest.raises(SystemExit) as info:
            main(["check", str(snap), "-c", str(cfg), "--keyring", f"ours={keyring}"])
        assert info.value.code == 2
        assert "ours=" not in capsys.readouterr().out

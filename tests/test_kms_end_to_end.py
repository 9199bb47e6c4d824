"""The path kube-apiserver takes with our plugin, then the offline check of what it wrote.

Secrets are encrypted with the KMS v2 provider of ``snapshot_tools.providers`` in seed mode, the
seed wrapped once by our ``kms-plugin`` (served on a real unix socket), written into a real etcd,
saved as a snapshot, and checked both through the plugin socket and straight from the keyring.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from kms_plugin.client import KMSv2Client
from tests.support.cli import plugin_cli
from tests.support.configs import kms, rule, write_config
from tests.support.kms import served, short_dir, write_through_plugin

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

pytestmark = pytest.mark.etcd


def test_plugin_written_snapshot_checks_current_via_socket_and_keyring(
    etcd_server, tmp_path: Path, cli: Cli
) -> None:
    with short_dir() as d:
        with served(d):
            endpoint = f"unix://{d / 'p.sock'}"
            cfg = write_config(tmp_path / "enc.json", rule(["secrets"], kms("ours", endpoint)))
            # As the apiserver does: Status, then one Encrypt of a fresh seed for many objects.
            keys = [f"/registry/secrets/ns{i % 3}/s{i}" for i in range(30)]
            with KMSv2Client(endpoint) as client:
                write_through_plugin(etcd_server.client(), client, keys)
            snap = tmp_path / "snap.db"
            etcd_server.snapshot_save(snap)

            rc, report = cli.check_json(snap, "-c", cfg, "--kms", f"ours={endpoint}")
            assert rc == 0
            assert {o["key"] for o in report["objects"]} == set(keys)
            assert {o["verdict"] for o in report["objects"]} == {"current"}

        # Plugin stopped: the keyring file alone gives the same verdicts.
        keyring = d / "k.json"
        rc, report = cli.check_json(snap, "-c", cfg, "--keyring", f"ours={keyring}")
        assert rc == 0
        assert {o["verdict"] for o in report["objects"]} == {"current"}

        # Rotation: the old KEK stays decrypt-only, so the values read but are stale now.
        assert plugin_cli("keyring", "rotate", str(keyring)) == 0
        rc, report = cli.check_json(snap, "-c", cfg, "--keyring", f"ours={keyring}", "--fail-on", "stale")
        assert {o["verdict"] for o in report["objects"]} == {"stale"}
        assert rc == 1

        # A different keyring (another KEK) cannot unwrap them.
        other = d / "other.json"
        assert plugin_cli("keyring", "init", str(other)) == 0
        rc, report = cli.check_json(snap, "-c", cfg, "--keyring", f"ours={other}")
        assert {(o["verdict"], o["reason"]) for o in report["objects"]} == {("unreadable", "wrong-key")}
        assert rc == 1

        # A keyring file others can read is refused with exit 2.
        os.chmod(keyring, 0o644)
        rc, out, _ = cli("check", snap, "-c", cfg, "--keyring", f"ours={keyring}")
        assert rc == 2
        assert "ours=" not in out

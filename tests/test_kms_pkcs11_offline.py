"""KMS v2 Secrets wrapped by the PKCS#11 plugin, written through a real etcd, judged offline.

The path kube-apiserver takes: Status, one Encrypt of a fresh seed through our plugin (SoftHSM2
token, local-KEK hierarchy on by default, then off), Secrets sealed under that seed and put into
a real etcd, a snapshot saved. Then ``snapshot-tools check|extract|reencrypt --pkcs11 NAME``
with the token flags alone, the plugin stopped.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from kms_plugin.api import pkcs11_settings
from kms_plugin.client import KMSv2Client
from tests.support.cli import plugin_cli
from tests.support.configs import kms, rule, write_config
from tests.support.kms import serve_config, serving, short_dir, write_through_plugin
from tests.support.softhsm import MODULE, softhsm_token

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.softhsm import Token

pytestmark = pytest.mark.etcd


def _write_secrets(etcd_server, token: Token, endpoint_dir: Path, local_kek: bool) -> tuple[list[str], str]:
    settings = pkcs11_settings(MODULE, token.label, "kek", f"@{token.pin_file}")
    with serving(serve_config(endpoint_dir, pkcs11=settings, local_kek=local_kek)):
        keys = [f"/registry/secrets/ns{i % 3}/p{i}" for i in range(12)]
        with KMSv2Client(f"unix://{endpoint_dir / 'p.sock'}") as client:
            _seed, wrapped = write_through_plugin(etcd_server.client(), client, keys)
        assert bool(wrapped.annotations) == local_kek
    return keys, wrapped.key_id


@pytest.mark.parametrize("local_kek", [True, False])
def test_plugin_written_snapshot_checks_offline_with_pkcs11(
    etcd_server, tmp_path: Path, cli: Cli, capsys, local_kek: bool
) -> None:
    with softhsm_token() as token, short_dir() as d:
        assert plugin_cli("pkcs11", "init-key", *token.flags()) == 0
        assert plugin_cli("pkcs11", "init-key", *token.flags("other")) == 0  # another key family
        keys, key_id = _write_secrets(etcd_server, token, d, local_kek)
        snap = tmp_path / "snap.db"
        etcd_server.snapshot_save(snap)
        cfg = write_config(tmp_path / "enc.json", rule(["secrets"], kms("ours", f"unix://{d / 'gone.sock'}")))
        capsys.readouterr()

        # The plugin is stopped: the token alone gives the verdicts the plugin would.
        rc, report = cli.check_json(snap, "-c", cfg, "--pkcs11", "ours", *token.flags())
        assert rc == 0
        assert {o["key"] for o in report["objects"]} == set(keys)
        assert {o["verdict"] for o in report["objects"]} == {"current"}

        # extract decrypts through the token.
        res = cli("extract", snap, "-c", cfg, "--output", "json", "--pkcs11", "ours", *token.flags())
        assert res.code == 0
        assert {i["metadata"]["name"] for i in json.loads(res.out)["items"]} == set(keys)

        # A key family that did not wrap them: unreadable (wrong-key), exit 1.
        rc, report = cli.check_json(snap, "-c", cfg, "--pkcs11", "ours", *token.flags("other"))
        assert {(o["verdict"], o["reason"]) for o in report["objects"]} == {("unreadable", "wrong-key")}
        assert rc == 1

        # A key label with no key in the token: no verdict possible, kms-unavailable, exit 4.
        rc, report = cli.check_json(snap, "-c", cfg, "--pkcs11", "ours", *token.flags("absent"))
        assert {(o["verdict"], o["reason"]) for o in report["objects"]} == {("unreadable", "kms-unavailable")}
        assert rc == 4

        # Rotated in the token: the values still read, but are stale now.
        assert plugin_cli("pkcs11", "rotate-key", *token.flags()) == 0
        rc, report = cli.check_json(snap, "-c", cfg, "--pkcs11", "ours", *token.flags(), "--fail-on", "stale")
        assert {o["verdict"] for o in report["objects"]} == {"stale"}
        assert rc == 1

        # reencrypt onto the current key (a fresh seed wrapped by the token, "kx" format): current again.
        out = tmp_path / "re.db"
        res = cli("reencrypt", snap, "-c", cfg, "--to", cfg, out, "--pkcs11", "ours", *token.flags())
        assert res.code == 0, res.err
        rc, report = cli.check_json(out, "-c", cfg, "--pkcs11", "ours", *token.flags())
        assert rc == 0
        assert {o["verdict"] for o in report["objects"]} == {"current"}

        # Flags that cannot work are one line and exit 2; the PIN never shows.
        bare = [*token.flags()[:-1], token.pin]
        res = cli("check", snap, "-c", cfg, "--pkcs11", "ours", *bare)
        assert res.code == 2 and "--pkcs11-pin takes @FILE" in res.err
        assert token.pin not in res.out + res.err
        res = cli("check", snap, "-c", cfg, "--pkcs11", "nosuch", *token.flags())
        assert res.code == 2 and "--pkcs11 names provider 'nosuch'" in res.err
        res = cli("check", snap, "-c", cfg, *token.flags())
        assert res.code == 2 and "needs --pkcs11 NAME" in res.err
        assert key_id not in res.err
        captured = capsys.readouterr()
        assert token.pin not in captured.out + captured.err

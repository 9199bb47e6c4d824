"""``check --fail-on unencrypted`` and the plaintext-write warning (issue 11 item 5): an
identity-only cluster must not pass every policy, and a current config that writes a resource in
plaintext is said so in the report's first lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapshot_tools.errors import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE
from snapshot_tools.providers import aescbc, static_prefix
from tests.support.configs import IDENTITY, rule, static, write_config
from tests.support.k8s_objects import config_map, object_meta, secret
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

KEY = bytes(range(32))


def _plain_secrets(tmp_path: Path) -> Path:
    return write_snapshot(
        tmp_path / "plain.db",
        {
            "/registry/secrets/default/s1": secret(object_meta("s1", "default"), {"k": b"v"}),
            "/registry/secrets/kube-system/s2": secret(object_meta("s2", "kube-system"), {"k": b"w"}),
        },
    )


def test_identity_only_cluster_fails_unencrypted(cli: Cli, tmp_path: Path) -> None:
    snap = _plain_secrets(tmp_path)
    config = write_config(tmp_path / "identity.json", rule(["secrets"], IDENTITY))
    every_other = "unreadable,retired,stale,plaintext"
    assert cli("check", snap, "-c", config, "--fail-on", every_other).code == EXIT_OK  # today's false green
    res = cli("check", snap, "-c", config, "--fail-on", "unencrypted")
    assert res.code == EXIT_FINDINGS, res
    code, doc = cli.check_json(snap, "-c", config, "--fail-on", "unencrypted")
    assert code == EXIT_FINDINGS
    assert doc["summary"]["unencrypted"] == 2


def test_current_config_writing_plaintext_is_said_first(cli: Cli, tmp_path: Path) -> None:
    snap = _plain_secrets(tmp_path)
    config = write_config(
        tmp_path / "c.json", rule(["secrets"], IDENTITY, static("aescbc", ("k1", KEY))), rule(["configmaps"], IDENTITY)
    )
    res = cli("check", snap, "-c", config)
    assert res.code == EXIT_OK
    first = res.out.splitlines()[:3]
    assert any("plaintext" in line and "secrets" in line and "configmaps" in line for line in first), res.out
    _, doc = cli.check_json(snap, "-c", config)
    assert doc["plaintext_writes"] == ["secrets", "configmaps"]


def _encrypted(tmp_path: Path) -> Path:
    value = secret(object_meta("s1", "default"), {"k": b"v"})
    stored = static_prefix("aescbc", "k1") + aescbc.encrypt(KEY, value)
    return write_snapshot(tmp_path / "enc.db", {"/registry/secrets/default/s1": stored})


def test_encrypted_write_config_has_no_plaintext_warning(cli: Cli, tmp_path: Path) -> None:
    snap = _encrypted(tmp_path)
    config = write_config(tmp_path / "c.json", rule(["secrets"], static("aescbc", ("k1", KEY)), IDENTITY))
    code, doc = cli.check_json(snap, "-c", config, "--fail-on", "unencrypted")
    assert code == EXIT_OK
    assert doc["plaintext_writes"] == [] and doc["summary"]["unencrypted"] == 0
    res = cli("check", snap, "-c", config)
    assert "plaintext" not in "\n".join(res.out.splitlines()[:2])


def test_unencrypted_counts_values_no_config_covers(cli: Cli, tmp_path: Path) -> None:
    snap = write_snapshot(
        tmp_path / "mixed.db",
        {
            "/registry/secrets/default/s1": secret(object_meta("s1", "default"), {"k": b"v"}),
            "/registry/configmaps/default/c1": config_map(object_meta("c1", "default"), {"k": b"v"}),
        },
    )
    # The config covers configmaps only: the Secret is plaintext no config covers, only counted.
    config = write_config(tmp_path / "c.json", rule(["configmaps"], IDENTITY))
    code, doc = cli.check_json(snap, "-c", config, "-r", "secrets", "--fail-on", "unencrypted")
    assert code == EXIT_FINDINGS
    assert doc["summary"]["unencrypted"] == 1
    assert cli("check", snap, "-c", config, "-r", "secrets").code == EXIT_OK


def test_fail_on_unknown_word_still_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    snap = _plain_secrets(tmp_path)
    config = write_config(tmp_path / "identity.json", rule(["secrets"], IDENTITY))
    res = cli("check", snap, "-c", config, "--fail-on", "unencrypte")
    assert res.code == EXIT_USAGE and "unencrypted" in res.err

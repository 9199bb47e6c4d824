"""The flag groups (snapshot_tools.cli.flag_groups): every command that reads keys, S3 or a live
etcd shows the same options, and hands them to the library as one value."""

from __future__ import annotations

import pytest
import typer.main

from snapshot_tools.cli import app
from snapshot_tools.cli.flag_groups import EtcdFlags, KeyFlags, S3Flags, expand
from snapshot_tools.errors import UsageError

KEY_FLAGS = {
    "--kms", "--keyring", "--aws-kms", "--aws-region", "--aws-endpoint-url", "--aws-encryption-context",
    "--k3s-token", "--pkcs11", "--pkcs11-module", "--pkcs11-token-label", "--pkcs11-key-label", "--pkcs11-pin",
}  # fmt: skip
S3_FLAGS = {"--s3-endpoint-url", "--s3-region"}
ETCD_FLAGS = {"--etcd-endpoint", "--cacert", "--cert", "--key", "--etcd-timeout"}


def _flags(command: str) -> set[str]:
    group = typer.main.get_command(app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    return {opt for param in cmd.params for opt in param.opts if opt.startswith("--")}


@pytest.mark.parametrize("command", ["check", "extract", "reencrypt", "decrypt", "quarantine", "drill"])
def test_every_command_that_reads_keys_has_every_key_flag(command: str) -> None:
    assert _flags(command) >= KEY_FLAGS


SNAPSHOT_COMMANDS = ["status", "check", "extract", "reencrypt", "decrypt", "keys", "quarantine", "drill"]


@pytest.mark.parametrize("command", SNAPSHOT_COMMANDS)
def test_every_snapshot_command_reads_s3(command: str) -> None:
    assert _flags(command) >= S3_FLAGS


@pytest.mark.parametrize("command", ["status", "check", "extract"])
def test_the_live_etcd_commands(command: str) -> None:
    assert _flags(command) >= ETCD_FLAGS


def test_group_values_reach_the_command() -> None:
    seen: dict[str, object] = {}

    @expand
    def command(snapshot: str, *, keys: KeyFlags, s3: S3Flags, etcd: EtcdFlags, other: int = 0) -> None:
        seen.update(snapshot=snapshot, keys=keys, s3=s3, etcd=etcd, other=other)

    command("snap", kms=["p=unix:///s"], keyring=None, aws_kms=None, aws_region=None, aws_endpoint_url=None,
            aws_encryption_context="", k3s_token=None, pkcs11=None, pkcs11_module=None, pkcs11_token_label=None,
            pkcs11_key_label=None, pkcs11_pin=None, s3_endpoint_url="http://127.0.0.1:1", s3_region="r",
            etcd_endpoint=None, cacert=None, cert=None, key=None, etcd_timeout=3.0, other=7)  # fmt: skip
    assert seen["keys"] == KeyFlags(kms=["p=unix:///s"])
    assert seen["s3"] == S3Flags("http://127.0.0.1:1", "r")
    assert seen["etcd"] == EtcdFlags(etcd_timeout=3.0)
    assert (seen["snapshot"], seen["other"]) == ("snap", 7)


def test_access_needs_a_config_or_a_token_unless_told_otherwise() -> None:
    with pytest.raises(UsageError, match="--config"):
        KeyFlags().access(None)
    assert KeyFlags().access(None, required=False).configs == ()
    assert KeyFlags(kms=["p=unix:///s"]).access(["c.yaml"]).kms == {"p": "unix:///s"}


def test_a_command_without_a_group_is_a_mistake() -> None:
    def plain(snapshot: str) -> None:
        del snapshot

    with pytest.raises(TypeError, match="no flag-group parameter"):
        expand(plain)

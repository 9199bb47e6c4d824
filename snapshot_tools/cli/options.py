"""Typer options shared by several commands, defined once so their flags and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SnapshotArg = Annotated[
    Path, typer.Argument(help="etcd snapshot file (etcdctl snapshot save) or a member/snap/db copy; only read.")
]
ConfigOpt = Annotated[
    list[str],
    typer.Option(
        "--config",
        "-c",
        help="EncryptionConfiguration file or directory; repeat for history. The first is the current one.",
    ),
]
KmsOpt = Annotated[
    list[str] | None,
    typer.Option("--kms", help="NAME=unix:///path.sock: reach KMS provider NAME through this plugin socket."),
]
KeyringOpt = Annotated[
    list[str] | None,
    typer.Option("--keyring", help="NAME=FILE: KMS provider NAME's data keys from a kms-plugin keyring file."),
]
PrefixOpt = Annotated[str, typer.Option("--etcd-prefix", help="kube-apiserver --etcd-prefix.")]

AwsKmsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--aws-kms",
        help="NAME[=KEY]: KMS provider NAME's data keys straight from AWS KMS; KEY (ARN, key id or alias) "
        "gives the current key_id (and wraps new data keys for a rewrite).",
    ),
]
AwsRegionOpt = Annotated[str | None, typer.Option("--aws-region", help="AWS region for --aws-kms.")]
AwsEndpointOpt = Annotated[str | None, typer.Option("--aws-endpoint-url", help="AWS KMS endpoint URL for --aws-kms.")]
AwsContextOpt = Annotated[
    str, typer.Option("--aws-encryption-context", help="k=v[,k=v...]: the plugin's static encryption context.")
]


def aws_settings(region: str | None, endpoint_url: str | None, context: str) -> object:
    """The AWS settings shared by every --aws-kms provider (each gets its own key)."""
    from kms_plugin import errors as plugin_errors
    from kms_plugin.keks.awsclient import AwsSettings
    from kms_plugin.keks.awsformat import parse_encryption_context
    from snapshot_tools.errors import ConfigError

    try:
        # Offline there is no apiserver deadline: allow slower answers than the plugin does.
        return AwsSettings(
            key=None,
            region=region,
            endpoint_url=endpoint_url,
            encryption_context=parse_encryption_context(context),
            call_timeout=20.0,
            read_timeout=10.0,
            max_attempts=5,
        )
    except plugin_errors.Error as exc:
        raise ConfigError(str(exc)) from None


def kms_access(
    kms: list[str] | None,
    keyring: list[str] | None,
    aws_kms: list[str] | None,
    aws_region: str | None,
    aws_endpoint_url: str | None,
    aws_encryption_context: str,
) -> dict[str, object]:
    """The KMS-related fields of the command option dataclasses, parsed from the shared flags."""
    from snapshot_tools.check import parse_assignments, parse_aws_kms

    names = parse_aws_kms(aws_kms or [])
    return {
        "kms": parse_assignments(kms or [], "--kms"),
        "keyrings": parse_assignments(keyring or [], "--keyring"),
        "aws_kms": names,
        "aws": aws_settings(aws_region, aws_endpoint_url, aws_encryption_context) if names else None,
    }

"""Typer options shared by several commands, defined once so their flags and help agree, and the
one :class:`~snapshot_tools.unwrap.KeyAccess` value built from them (:func:`key_access`)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from kms_plugin import api as plugin
from kms_plugin.cli_runner import interrupt_signal, stop_signals_raise
from snapshot_tools.errors import ConfigError, InterruptedRead, UsageError
from snapshot_tools.inputs import S3Options
from snapshot_tools.unwrap import KeyAccess

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from kms_plugin.api import AwsSettings

SnapshotArg = Annotated[
    str,
    typer.Argument(
        metavar="SNAPSHOT",
        help="etcd snapshot file (etcdctl snapshot save) or a member/snap/db copy, a K3s/RKE2 .zip or a .gz "
        "of one (told by content), or s3://BUCKET/KEY; only read.",
    ),
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
SkipHashCheckOpt = Annotated[
    bool,
    typer.Option(
        "--skip-hash-check",
        help="Read a snapshot whose SHA-256 trailer is missing or wrong (a raw member/snap/db copy), "
        "as etcdutl snapshot restore --skip-hash-check does. Without it such a snapshot fails (exit 3).",
    ),
]

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


S3EndpointOpt = Annotated[
    str | None,
    typer.Option("--s3-endpoint-url", help="S3 endpoint URL for an s3:// SNAPSHOT (MinIO, another region's, ...)."),
]
S3RegionOpt = Annotated[str | None, typer.Option("--s3-region", help="S3 region for an s3:// SNAPSHOT.")]


def s3_options(endpoint_url: str | None, region: str | None) -> S3Options:
    """The S3 settings of an ``s3://`` SNAPSHOT, from --s3-endpoint-url and --s3-region."""
    return S3Options(endpoint_url=endpoint_url, region=region)


def download_progress() -> bool:
    """Whether an S3 download draws a progress bar: only when stderr is a terminal."""
    return sys.stderr.isatty()


@contextmanager
def stop_signals_unwind() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise inside the block, so a temporary copy of the snapshot is
    removed on the way out; the command then fails with one line and exits 128 + N."""
    try:
        with stop_signals_raise():
            yield
    except KeyboardInterrupt as exc:
        raise InterruptedRead(interrupt_signal(exc)) from None


def parse_assignments(values: Sequence[str], flag: str) -> dict[str, str]:
    """``["a=b", ...]`` -> ``{"a": "b"}``; a malformed or repeated name is a usage error."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, target = item.partition("=")
        if not sep or not name or not target:
            raise UsageError(f"{flag} takes NAME=VALUE, got {item!r}")
        if name in out:
            raise UsageError(f"{flag} names provider {name!r} twice")
        out[name] = target
    return out


def parse_aws_kms(values: Sequence[str]) -> dict[str, str | None]:
    """``["a=alias/k", "b"]`` -> ``{"a": "alias/k", "b": None}`` (``--aws-kms NAME[=KEY]``)."""
    out: dict[str, str | None] = {}
    for item in values:
        name, sep, key = item.partition("=")
        if not name or (sep and not key):
            raise UsageError(f"--aws-kms takes NAME or NAME=KEY (ARN, key id or alias), got {item!r}")
        if name in out:
            raise UsageError(f"--aws-kms names provider {name!r} twice")
        out[name] = key or None
    return out


def aws_settings(region: str | None, endpoint_url: str | None, context: str) -> AwsSettings:
    """The AWS settings shared by every --aws-kms provider (each gets its own key)."""
    try:
        # Offline there is no apiserver deadline: allow slower answers than the plugin does.
        return plugin.aws_settings(
            region, endpoint_url, context, call_timeout=20.0, read_timeout=10.0, max_attempts=5
        )
    except plugin.Error as exc:
        raise ConfigError(str(exc)) from None


def key_access(
    configs: Sequence[str],
    kms: Sequence[str] | None,
    keyring: Sequence[str] | None,
    aws_kms: Sequence[str] | None,
    aws_region: str | None,
    aws_endpoint_url: str | None,
    aws_encryption_context: str,
) -> KeyAccess:
    """The one key-access value of a command, from the shared --config/KMS flags."""
    names = parse_aws_kms(aws_kms or [])
    return KeyAccess(
        configs=tuple(configs),
        kms=parse_assignments(kms or [], "--kms"),
        keyrings=parse_assignments(keyring or [], "--keyring"),
        aws_kms=names,
        aws=aws_settings(aws_region, aws_endpoint_url, aws_encryption_context) if names else None,
    )

"""Typer options shared by several commands, defined once so their flags and help agree, and the
one :class:`~snapshot_tools.unwrap.KeyAccess` value built from them (:func:`key_access`)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from kms_plugin import api as plugin
from kms_plugin.stop_signals import interrupt_signal, stop_signals_raise
from snapshot_tools.errors import ConfigError, InterruptedRead, UsageError
from snapshot_tools.inputs import S3Options
from snapshot_tools.k3s_token import read_token
from snapshot_tools.unwrap import KeyAccess

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from kms_plugin.api import AwsSettings, Pkcs11Settings
    from snapshot_tools.live_etcd import EtcdTarget

SnapshotArg = Annotated[
    str,
    typer.Argument(
        metavar="SNAPSHOT",
        help="etcd snapshot file (etcdctl snapshot save) or a member/snap/db copy, a K3s/RKE2 .zip or a .gz "
        "of one (told by content), or s3://BUCKET/KEY; only read.",
    ),
]
ConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        "-c",
        help="EncryptionConfiguration file or directory; repeat for history. The first is the current one. "
        "Required unless --k3s-token gives the config the snapshot carries.",
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

K3sTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--k3s-token",
        envvar=["K3S_TOKEN", "RKE2_TOKEN"],
        show_default=False,
        help="K3s/RKE2 server token, or @FILE (e.g. @/var/lib/rancher/k3s/server/token): adds the encryption "
        "config K3s keeps in the snapshot's /bootstrap record (the current config when no --config is given, "
        "else history after them). Never printed.",
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

Pkcs11Opt = Annotated[
    list[str] | None,
    typer.Option(
        "--pkcs11",
        help="NAME: KMS provider NAME's data keys straight from the PKCS#11 token (kms-plugin --pkcs11-*); "
        "the key family's highest generation gives the current key_id.",
    ),
]
Pkcs11ModuleOpt = Annotated[str | None, typer.Option("--pkcs11-module", help="PKCS#11 module for --pkcs11.")]
Pkcs11TokenOpt = Annotated[str | None, typer.Option("--pkcs11-token-label", help="Token label for --pkcs11.")]
Pkcs11KeyOpt = Annotated[
    str | None, typer.Option("--pkcs11-key-label", help="Key family K (objects K-1, K-2, ...) for --pkcs11.")
]
Pkcs11PinOpt = Annotated[
    str | None,
    typer.Option(
        "--pkcs11-pin", help="@FILE holding the user PIN; default $KMS_PLUGIN_PKCS11_PIN. Never the PIN itself."
    ),
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
    k3s_token: str | None = None,
    *,
    required: bool = True,
    pkcs11: Mapping[str, Pkcs11Settings] | None = None,
) -> KeyAccess:
    """The one key-access value of a command, from the shared --config/KMS flags and --k3s-token
    (``@FILE`` read here, whitespace-trimmed). ``required=False``: a command that can run without
    any key (quarantine --restore-from, putting values back as stored). ``pkcs11``: from
    :func:`pkcs11_access`."""
    if required and not configs and k3s_token is None:
        raise UsageError("give --config (an EncryptionConfiguration), or --k3s-token for a K3s/RKE2 snapshot")
    names = parse_aws_kms(aws_kms or [])
    return KeyAccess(
        configs=tuple(configs),
        kms=parse_assignments(kms or [], "--kms"),
        keyrings=parse_assignments(keyring or [], "--keyring"),
        aws_kms=names,
        aws=aws_settings(aws_region, aws_endpoint_url, aws_encryption_context) if names else None,
        k3s_token=read_token(k3s_token) if k3s_token is not None else None,
        pkcs11=dict(pkcs11 or {}),
        k3s_token_file=token_file(k3s_token),
    )


def token_file(k3s_token: str | None) -> str | None:
    """The file of ``--k3s-token @FILE`` (an input no output may replace), None otherwise."""
    return k3s_token[1:] if k3s_token is not None and k3s_token.startswith("@") else None


# -- a live etcd instead of SNAPSHOT (status, check, extract) -------------------------------

OptionalSnapshotArg = Annotated[
    str | None,
    typer.Argument(
        metavar="SNAPSHOT",
        help="etcd snapshot file (etcdctl snapshot save) or a member/snap/db copy, a K3s/RKE2 .zip or a .gz "
        "of one (told by content), or s3://BUCKET/KEY; only read. Give it or --etcd-endpoint.",
        show_default=False,
    ),
]
EtcdEndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--etcd-endpoint",
        metavar="URL",
        help="Read a running etcd instead of SNAPSHOT (https://HOST:PORT or http://HOST:PORT): read-only, "
        "Range pages at one revision (with --all-revisions also its history back to the compaction).",
    ),
]
EtcdCacertOpt = Annotated[
    str | None,
    typer.Option("--cacert", metavar="FILE", help="--etcd-endpoint: PEM CA bundle that signed the server certificate."),
]
EtcdCertOpt = Annotated[
    str | None, typer.Option("--cert", metavar="FILE", help="--etcd-endpoint: PEM client certificate.")
]
EtcdKeyOpt = Annotated[str | None, typer.Option("--key", metavar="FILE", help="--etcd-endpoint: PEM key of --cert.")]
EtcdTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--etcd-timeout", metavar="SECONDS", help="--etcd-endpoint: seconds each call may take before exit 4."
    ),
]


def snapshot_or_etcd(
    snapshot: str | None,
    endpoint: str | None,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    timeout: float,
) -> EtcdTarget | None:
    """The live etcd to read, or None for SNAPSHOT; exactly one of them must be given.

    Raises:
        UsageError: both or neither, TLS files without --etcd-endpoint, a malformed endpoint.
    """
    from snapshot_tools.live_etcd import etcd_target  # grpc and pyetcd only when needed

    if snapshot is not None and endpoint is not None:
        raise UsageError("give SNAPSHOT or --etcd-endpoint, not both")
    if endpoint is None:
        if snapshot is None:
            raise UsageError("missing SNAPSHOT (or --etcd-endpoint URL to read a running etcd)")
        if cacert is not None or cert is not None or key is not None:
            raise UsageError("--cacert, --cert and --key apply to --etcd-endpoint only")
        return None
    return etcd_target(endpoint, cacert, cert, key, timeout)


def pkcs11_access(
    names: Sequence[str] | None,
    module: str | None,
    token_label: str | None,
    key_label: str | None,
    pin: str | None,
) -> dict[str, Pkcs11Settings]:
    """``--pkcs11 NAME`` (repeatable) with the token flags -> provider name -> settings.

    Raises:
        UsageError: a token flag without --pkcs11, --pkcs11 without all of them, a repeated name.
        ConfigError: a bare PIN, a malformed key label.
    """
    flags = {"--pkcs11-module": module, "--pkcs11-token-label": token_label, "--pkcs11-key-label": key_label}
    if not names:
        given = [f for f, v in (*flags.items(), ("--pkcs11-pin", pin)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} needs --pkcs11 NAME (the KMS provider the token serves)")
        return {}
    missing = [f for f, v in flags.items() if not v]
    if missing:
        raise UsageError(f"--pkcs11 needs {', '.join(missing)}")
    for name in names:
        if not name or "=" in name:
            raise UsageError(f"--pkcs11 takes the KMS provider NAME (token flags apart), got {name!r}")
    if len(set(names)) != len(names):
        raise UsageError("--pkcs11 names a provider twice")
    assert module and token_label and key_label
    try:
        settings = plugin.pkcs11_settings(module, token_label, key_label, pin)
    except plugin.Error as exc:
        raise ConfigError(str(exc)) from None
    return dict.fromkeys(names, settings)

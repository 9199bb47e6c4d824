"""``snapshot-tools extract``: chosen objects of a snapshot as manifests ``kubectl apply`` accepts."""

from __future__ import annotations

import enum
import sys
from typing import Annotated

import typer

from snapshot_tools.cli import app
from snapshot_tools.cli.options import (
    AwsContextOpt,
    AwsEndpointOpt,
    AwsKmsOpt,
    AwsRegionOpt,
    ConfigOpt,
    KeyringOpt,
    KmsOpt,
    PrefixOpt,
    SnapshotArg,
    key_access,
)
from snapshot_tools.cli.output import diagnostic, printable
from snapshot_tools.errors import EXIT_FINDINGS
from snapshot_tools.extract import (
    RAW_ANNOTATION,
    ExtractOptions,
    ExtractResult,
    render_json,
    render_yaml,
    run_extract,
)


class ManifestFormat(enum.StrEnum):
    """``extract --output`` choices."""

    yaml = "yaml"
    json = "json"


@app.command()
def extract(
    snapshot: SnapshotArg,
    config: ConfigOpt,
    kms: KmsOpt = None,
    keyring: KeyringOpt = None,
    aws_kms: AwsKmsOpt = None,
    aws_region: AwsRegionOpt = None,
    aws_endpoint_url: AwsEndpointOpt = None,
    aws_encryption_context: AwsContextOpt = "",
    resource: Annotated[
        list[str] | None,
        typer.Option(
            "--resource",
            "-r",
            help="Resource to extract (secrets, configmaps, deployments.apps, ...); repeatable. Default: secrets.",
        ),
    ] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Only objects in this namespace.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Only objects with this name.")] = None,
    revision: Annotated[
        int | None,
        typer.Option(
            "--revision", help="The objects as they were at this etcd revision (default: the latest live ones)."
        ),
    ] = None,
    output: Annotated[
        ManifestFormat, typer.Option("--output", "-o", help="yaml or json; both give one v1 List.")
    ] = ManifestFormat.yaml,
    strip_server_fields: Annotated[
        bool,
        typer.Option(
            "--strip-server-fields",
            help="Drop uid, resourceVersion, creationTimestamp, generation, ... for a clean re-create.",
        ),
    ] = False,
    show_managed_fields: Annotated[
        bool,
        typer.Option(
            "--show-managed-fields", help="Keep metadata.managedFields (dropped by default, as kubectl does)."
        ),
    ] = False,
    etcd_prefix: PrefixOpt = "/registry",
) -> None:
    """Decrypt and decode objects into one v1 List on stdout (Secret values included).

    Exit 0 when every matched object was written, 1 when nothing matched or some object could not
    be read (listed on stderr, the rest still written), 2 on a usage or config error, 3 on a
    missing or damaged snapshot, 4 when a KMS needed to decrypt could not be reached.
    """
    opts = ExtractOptions(
        snapshot=str(snapshot),
        access=key_access(config, kms, keyring, aws_kms, aws_region, aws_endpoint_url, aws_encryption_context),
        resources=resource or ("secrets",),
        namespace=namespace,
        name=name,
        revision=revision,
        strip_server_fields=strip_server_fields,
        show_managed_fields=show_managed_fields,
        etcd_prefix=etcd_prefix,
    )
    result = run_extract(opts)
    if result.matched == 0:
        diagnostic("no object matched")
        raise typer.Exit(EXIT_FINDINGS)
    _report(result)
    if result.items:
        text = render_json(result.manifest()) if output is ManifestFormat.json else render_yaml(result.manifest())
        _write_stdout(text)
    raise typer.Exit(result.exit_code)


def _report(result: ExtractResult) -> None:
    """Diagnostics on stderr: what was skipped and why, and what is on its way to stdout."""
    for s in result.skipped:
        via = f"{s.provider} key {s.key_name}" if s.key_name else s.provider
        diagnostic(f"skipped {printable(s.key)} (revision {s.revision}): unreadable ({s.reason}; {printable(via)})")
    if result.skipped:
        diagnostic(f"{len(result.skipped)} of {result.matched} object(s) could not be read")
    if result.kms_unavailable:
        diagnostic("warning: a KMS plugin could not be reached")
    if result.raw_kinds:
        diagnostic(
            f"warning: no schema for {', '.join(sorted(result.raw_kinds))}: written with metadata "
            f"and the stored protobuf in annotation {RAW_ANNOTATION}; such objects cannot be applied as-is"
        )
    if result.secrets:
        diagnostic("warning: writing decrypted Secret data to stdout")
    elif result.decrypted:
        diagnostic("warning: writing decrypted data to stdout")


def _write_stdout(text: str) -> None:
    # UTF-8 whatever the locale: manifests carry unicode values and kubectl reads UTF-8.
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
    else:
        buffer.write(text.encode("utf-8"))
        buffer.flush()

"""``snapshot-tools extract``: chosen objects of a snapshot as manifests ``kubectl apply`` accepts."""

from __future__ import annotations

import enum
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from snapshot_tools.cli import app
from snapshot_tools.cli.flag_groups import EtcdFlags, KeyFlags, S3Flags, expand
from snapshot_tools.cli.options import (
    ConfigOpt,
    OptionalSnapshotArg,
    PrefixOpt,
    SkipHashCheckOpt,
    download_progress,
    stop_signals_unwind,
)
from snapshot_tools.cli.output import diagnostic, kms_diagnostics, printable, progress_reporter
from snapshot_tools.errors import EXIT_FINDINGS, UsageError
from snapshot_tools.extract import (
    RAW_ANNOTATION,
    ExtractOptions,
    ExtractResult,
    ObjectDir,
    iter_extract,
    stream_json,
    stream_yaml,
)
from snapshot_tools.label_selector import parse_selector

if TYPE_CHECKING:
    from collections.abc import Iterator


class ManifestFormat(enum.StrEnum):
    """``extract --output`` choices."""

    yaml = "yaml"
    json = "json"


@app.command()
@expand
def extract(
    snapshot: OptionalSnapshotArg = None,
    *,
    config: ConfigOpt = None,
    keys: KeyFlags,
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
    selector: Annotated[
        str | None,
        typer.Option(
            "--selector",
            "-l",
            help="Only objects whose labels match, as kubectl -l: k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k, !k; "
            "commas AND them.",
        ),
    ] = None,
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
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir",
            help="Write one file per object, DIR/<namespace>/<kind>-<name>.yaml (or .json; cluster-scoped "
            "objects under _cluster/), mode 0600 in 0700 directories, instead of one List on stdout.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --output-dir: write into a non-empty DIR, replacing same-named files.")
    ] = False,
    etcd_prefix: PrefixOpt = "/registry",
    skip_hash_check: SkipHashCheckOpt = False,
    etcd: EtcdFlags,
    s3: S3Flags,
) -> None:
    """Decrypt and decode objects into one v1 List on stdout, streamed (Secret values included), or
    one file per object with --output-dir. Add --strip-server-fields to re-create them on a fresh
    cluster.

    Exit 0 when every matched object was written, 1 when nothing matched or some object could not
    be read (listed on stderr, the rest still written), 2 on a usage or config error, 3 on a
    missing or damaged snapshot, 4 when a KMS needed to decrypt could not be reached.

    With --etcd-endpoint instead of SNAPSHOT the running etcd is read (never written) at one
    revision; exit 4 when it cannot be read.
    """
    opts = ExtractOptions(
        snapshot=snapshot or "",
        etcd=etcd.target(snapshot),
        access=keys.access(config),
        resources=resource or ("secrets",),
        namespace=namespace,
        name=name,
        selector=parse_selector(selector) if selector is not None else None,
        revision=revision,
        strip_server_fields=strip_server_fields,
        show_managed_fields=show_managed_fields,
        etcd_prefix=etcd_prefix,
        skip_hash_check=skip_hash_check,
        s3=s3.options(),
        download_progress=download_progress(),
    )
    if force and output_dir is None:
        raise UsageError("--force only applies to --output-dir")
    inputs = [str(snapshot)] if snapshot is not None else []
    target = ObjectDir(output_dir, fmt=output.value, force=force, inputs=inputs) if output_dir else None
    result = ExtractResult()
    # Signals raise, so an unpacked or downloaded copy of the snapshot is removed (exit 128 + N).
    with stop_signals_unwind(), progress_reporter("extract") as progress:
        items = iter_extract(opts, result, progress)
        if target is not None:
            for item in items:
                target.write(item)
        else:
            _write_stdout(stream_json(items) if output is ManifestFormat.json else stream_yaml(items))
    if result.matched == 0:
        diagnostic("no object matched")
        raise typer.Exit(EXIT_FINDINGS)
    _report(result, output_dir or "stdout", stripped=strip_server_fields)
    raise typer.Exit(result.exit_code)


def _report(result: ExtractResult, where: str, *, stripped: bool) -> None:
    """Diagnostics on stderr: what was skipped and why, and what was written where."""
    for s in result.skipped:
        via = f"{s.provider} key {s.key_name}" if s.key_name else s.provider
        diagnostic(f"skipped {printable(s.key)} (revision {s.revision}): unreadable ({s.reason}; {printable(via)})")
    if result.skipped:
        diagnostic(f"{len(result.skipped)} of {result.matched} object(s) could not be read")
    kms_diagnostics(result.kms, result.kms_unavailable, "objects were skipped")
    if result.raw_kinds:
        diagnostic(
            f"warning: no schema for {', '.join(sorted(result.raw_kinds))}: written with metadata "
            f"and the stored protobuf in annotation {RAW_ANNOTATION}; such objects cannot be applied as-is"
        )
    where = printable(where)
    if result.secrets:
        diagnostic(f"warning: writing decrypted Secret data to {where}")
    elif result.decrypted:
        diagnostic(f"warning: writing decrypted data to {where}")
    if result.written and not stripped:
        # A faithful copy keeps uid and resourceVersion; kubectl apply refuses a create that sets
        # resourceVersion, and an update whose uid or resourceVersion differ from the live object.
        diagnostic(
            "note: uid and resourceVersion are kept; to re-create these objects on a fresh cluster, "
            "add --strip-server-fields"
        )


def _write_stdout(chunks: Iterator[str]) -> None:
    # UTF-8 whatever the locale: manifests carry unicode values and kubectl reads UTF-8.
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    for text in chunks:
        if buffer is None:
            sys.stdout.write(text)
        else:
            buffer.write(text.encode("utf-8"))
    if buffer is not None:
        buffer.flush()

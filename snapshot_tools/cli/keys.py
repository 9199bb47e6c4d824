"""``snapshot-tools keys``: the encryption keys a K3s/RKE2 snapshot carries in its bootstrap data."""

from __future__ import annotations

import json
import sys
from pathlib import Path  # noqa: TC003 - Typer reads the annotation at run time
from typing import Annotated

import typer

from snapshot_tools.atomic_file import check_target
from snapshot_tools.cli import app
from snapshot_tools.cli.flag_groups import S3Flags, expand
from snapshot_tools.cli.options import (  # Typer reads the annotations at run time
    K3sTokenOpt,
    SnapshotArg,
    download_progress,
    stop_signals_unwind,
    token_file,
)
from snapshot_tools.cli.output import OutputFormat, diagnostic, printable, render_table
from snapshot_tools.errors import UsageError
from snapshot_tools.k3s_keys import KeysReport, export_config, keys_report
from snapshot_tools.k3s_token import read_token

_VARIANTS = {
    "token": "the token",
    "empty-token": "the empty-token key of an older release",
    "unnormalised-token": "the whole token, as older releases used it",
}


@app.command()
@expand
def keys(
    snapshot: SnapshotArg,
    *,
    k3s_token: K3sTokenOpt = None,
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="table or json.")] = OutputFormat.table,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Write the embedded encryption-config.json, bytes exactly as embedded (KEY MATERIAL), to FILE "
            "(mode 0600, atomic; never over an existing file without --force).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="With --export: replace an existing regular file.")] = False,
    s3: S3Flags,
) -> None:
    """Show the encryption config K3s/RKE2 keep in the snapshot's /bootstrap record (needs the server token).

    Lists provider, key name, fingerprint and which key is active, the secrets-encrypt stage and
    whether its hash matches the embedded config, and the bootstrap files present (names,
    timestamps, sizes). Never shows key material; --export writes the config to a file. Exit 0
    ok, 2 usage or a wrong token (the line names the token hash the snapshot needs) or an
    existing --export file, 3 a missing or damaged snapshot or bootstrap record.
    """
    if k3s_token is None:
        raise UsageError("keys needs the server token: --k3s-token TOKEN|@FILE (or K3S_TOKEN / RKE2_TOKEN)")
    inputs = [str(snapshot), *filter(None, [token_file(k3s_token)])]  # the token file is an input too
    if export is not None:
        check_target(export, force=force, inputs=inputs)  # before any KDF work
    # Signals raise, so an unpacked or downloaded copy of the snapshot is removed (exit 128 + N).
    with stop_signals_unwind():
        report = keys_report(
            snapshot, read_token(k3s_token), s3.options(), progress=download_progress()
        )
    for note in report.data.notes():
        diagnostic(f"note: {printable(note)}")
    if export is not None:
        export_config(report, str(export), force=force, inputs=inputs)
        diagnostic(f"warning: {printable(str(export))} holds the cluster's encryption keys; protect it like them")
    if output is OutputFormat.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_keys(report))


def render_keys(report: KeysReport) -> str:
    data = report.data
    rec = data.record
    lines = [
        (
            f"bootstrap {rec.key} (revision {rec.revision}, {rec.size} bytes, {data.format} format), "
            f"opened with {_VARIANTS.get(data.variant, data.variant)}"
        ),
    ]
    config = data.encryption_config
    if config is None:
        lines.append("no EncryptionConfig: secrets encryption is off on this cluster")
    else:
        lines.append(f"config {data.origin} ({len(config)} bytes, sha256 {report.config_sha256})")
    state = report.state
    if state is not None:
        if state.stage is None:
            lines.append(f"secrets-encrypt stage: unreadable ({state.field} is not <stage>-<sha256>)")
        else:
            match = {True: "matches", False: "does NOT match", None: "-"}[state.matches]
            lines.append(f"secrets-encrypt stage: {state.stage} (its hash {match} the embedded config)")
    lines.append("")
    if report.keys:
        rows = [
            ["*" if k.active else "", ",".join(k.resources), k.provider, k.name or "-", k.fingerprint or "-"]
            for k in report.keys
        ]
        lines += [render_table(["ACTIVE", "RESOURCES", "PROVIDER", "NAME", "FINGERPRINT"], rows), ""]
    files = [[f.name, f.timestamp or "-", str(len(f.content))] for f in data.files.values()]
    lines += [render_table(["FILE", "TIMESTAMP", "SIZE"], files)]
    if data.others:
        others = [[r.key, r.token_hash, str(r.size), "lock" if r.lock else "data"] for r in data.others]
        lines += ["", "other bootstrap keys (not opened):", render_table(["KEY", "TOKEN HASH", "SIZE", "KIND"], others)]
    return "\n".join(printable(line) if "\n" not in line else line for line in lines) + "\n"

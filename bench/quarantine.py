"""Benchmark: ``snapshot-tools quarantine`` next to ``reencrypt --skip-unreadable``, same input.

The input is the 100,000-Secret aescbc snapshot of ``bench.check`` (built through a real etcd,
cached in bench/.cache/) with 1% of its values made unreadable: every 100th Secret's value is
relabelled from ``key1`` to ``key0``, a key the config does not hold (a lost key: ``check`` says
``unreadable (no-such-key)``). The derived snapshot is written with our own copy
(``snapshot_copy.copy_snapshot``) and cached as ``quarantine-aescbc-N-1pct.db``.

Each command runs in a fresh process (wall time of the whole command, CPU time, peak RSS = the
child's VmHWM):

* ``quarantine SNAP OUT --config CFG --to-dir DIR``: judges every latest value, deletes the 1%
  at a new revision, sets them aside, writes, verifies and compares OUT with the input;
* ``reencrypt SNAP OUT --config CFG --to NEW --skip-unreadable``: the comparison the issue names
  (decrypts and re-encrypts the other 99%);
* ``reencrypt ... --quarantine-unreadable DIR``: the one-pass variant, for information.

Each quarantine output is then confirmed outside the timing: ``check OUT --config CFG`` exits 0
and ``manifest.json`` lists exactly the 1%.

Usage (from the repository root):
    python -m bench.quarantine                 # 2 runs each
    python -m bench.quarantine --secrets 2000 --repeat 1

Figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.check import KEY_NAME, aescbc_paths, build_aescbc
from bench.common import CACHE, SNAPSHOT_TOOLS, load_avg, machine, run_measured, shown, verdict, write_config

TARGET_RATIO = 1.2  # quarantine wall time within 1.2x of reencrypt --skip-unreadable
EVERY = 100  # 1% of the values unreadable
LOST_NAME = "key0"


def lost_path(n: int) -> Path:
    return CACHE / f"quarantine-aescbc-{n}-1pct.db"


def build_lost(src: Path, n: int) -> int:
    """Relabel every ``EVERY``-th Secret's value to the lost key; the number relabelled."""
    from snapshot_tools.providers import static_prefix
    from snapshot_tools.snapshot import Snapshot
    from snapshot_tools.snapshot_copy import copy_snapshot, kv_transform

    old, new = static_prefix("aescbc", KEY_NAME), static_prefix("aescbc", LOST_NAME)
    changed = 0

    def relabel(rec: Any) -> bytes | None:
        nonlocal changed
        name = rec.key.rsplit(b"-", 1)[-1]
        if not name.isdigit() or int(name) % EVERY or not rec.value.startswith(old):
            return None
        changed += 1
        return bytes(new + rec.value[len(old) :])

    with Snapshot.open(src) as snap:
        copy_snapshot(snap, lost_path(n), kv_transform(relabel), force=True)
    return changed


def new_aescbc(directory: Path) -> Path:
    secret = base64.b64encode(os.urandom(32)).decode()
    provider = f"  - aescbc:\n      keys:\n      - name: key2\n        secret: {secret}\n"
    return write_config(directory / "new.yaml", provider)


def measure(label: str, args: list[str], n: int, repeat: int, after: Any) -> dict[str, Any]:
    runs = []
    for i in range(repeat):
        r = run_measured(args(), keep_stdout=True)
        if r["rc"] != 0:
            raise SystemExit(f"{label} exited {r['rc']}: {r['stderr']}")
        note = after(json.loads(r["stdout"]))
        runs.append(r)
        print(f"  {label:34s} run {i + 1}: {r['wall_s']:6.2f} s wall, {r['cpu_s']:6.2f} s CPU = "
              f"{n / r['wall_s']:8,.0f} objects/s, peak RSS {r['peak_rss_mb']:5.0f} MB; {note}",
              flush=True)  # fmt: skip
    best = min(runs, key=lambda r: r["wall_s"])
    return {"wall_s": best["wall_s"], "cpu_s": min(r["cpu_s"] for r in runs),
            "rss": max(r["peak_rss_mb"] for r in runs)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.quarantine", description=__doc__.splitlines()[0])
    ap.add_argument("--secrets", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2, help="runs per command, each in a fresh process")
    args = ap.parse_args(argv)
    n = args.secrets
    src, cfg = aescbc_paths(n)
    if not src.exists() or not cfg.exists():
        print(f"building {shown(src)} ({n:,} aescbc Secrets) through a real etcd ...", flush=True)
        build_aescbc(n)
    snap = lost_path(n)
    if not snap.exists():
        print(f"building {shown(snap)} (every {EVERY}th value under the lost key {LOST_NAME}) ...", flush=True)
        build_lost(src, n)
    lost = n // EVERY
    print(machine())
    print(f"{snap.name} ({snap.stat().st_size / 1e6:.0f} MB, {n:,} Secrets, {lost:,} unreadable); "
          f"load avg before: {load_avg()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-quarantine-", dir=CACHE) as d:
        work = Path(d)
        out, aside = work / "out.db", work / "aside"
        new = new_aescbc(work)

        def fresh() -> None:
            out.unlink(missing_ok=True)
            shutil.rmtree(aside, ignore_errors=True)

        def q_args() -> list[str]:
            fresh()
            return ["quarantine", str(snap), str(out), "-c", str(cfg), "--to-dir", str(aside), "-o", "json"]

        def q_after(summary: dict[str, Any]) -> str:
            if summary["tombstoned"] != lost:
                raise SystemExit(f"expected {lost} tombstoned: {summary['tombstoned']}")
            manifest = json.loads((aside / "manifest.json").read_text())
            files = len(os.listdir(aside)) - 1
            proc = subprocess.run([*SNAPSHOT_TOOLS, "check", str(out), "-c", str(cfg)], capture_output=True,
                                  check=False)  # fmt: skip
            if proc.returncode != 0 or len(manifest["objects"]) != lost:
                raise SystemExit(f"quarantine output not confirmed: check rc {proc.returncode}")
            return (f"revision {summary['revision_in']} -> {summary['revision_out']}, {files:,} values set aside; "
                    "check OUT exit 0")  # fmt: skip

        def r_args() -> list[str]:
            fresh()
            return ["reencrypt", str(snap), str(out), "-c", str(cfg), "--to", str(new), "--skip-unreadable",
                    "-o", "json"]  # fmt: skip

        def r_after(summary: dict[str, Any]) -> str:
            if summary["revisions_rewritten"] != n - lost or len(summary["skipped_unreadable"]) != lost:
                raise SystemExit(f"unexpected reencrypt summary: {summary['revisions_rewritten']}")
            return f"{summary['revisions_rewritten']:,} rewritten, {len(summary['skipped_unreadable']):,} skipped"

        def rq_args() -> list[str]:
            fresh()
            return ["reencrypt", str(snap), str(out), "-c", str(cfg), "--to", str(new), "--quarantine-unreadable",
                    str(aside), "-o", "json"]  # fmt: skip

        def rq_after(summary: dict[str, Any]) -> str:
            if len(summary["quarantined"]) != lost:
                raise SystemExit(f"expected {lost} quarantined: {len(summary['quarantined'])}")
            return f"{summary['revisions_rewritten']:,} rewritten, {len(summary['quarantined']):,} quarantined"

        q = measure("quarantine", q_args, n, args.repeat, q_after)
        r = measure("reencrypt --skip-unreadable", r_args, n, args.repeat, r_after)
        rq = measure("reencrypt --quarantine-unreadable", rq_args, n, args.repeat, rq_after)
        fresh()
    ratio = q["wall_s"] / r["wall_s"]
    print(f"best of {args.repeat}; load avg after: {load_avg()}")
    for label, m in (("quarantine", q), ("reencrypt --skip-unreadable", r), ("reencrypt --quarantine-unreadable", rq)):
        print(f"  {label:34s} {n / m['wall_s']:10,.0f} objects/s  {m['wall_s']:6.2f} s wall  {m['cpu_s']:6.2f} s CPU  "
              f"peak RSS {m['rss']:6.0f} MB")  # fmt: skip
    print(f"  quarantine / reencrypt --skip-unreadable wall time: {ratio:.2f}x   target <= {TARGET_RATIO}x  "
          f"[{verdict(ratio <= TARGET_RATIO)}]")  # fmt: skip
    print(f"  quarantine peak RSS / reencrypt's: {q['rss'] / r['rss']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: rebuild a big snapshot unchanged with the bbolt bulk writer (``copy_snapshot``).

Copies the cached benchmark snapshot of ``bench.scan`` (build it first with
``python -m bench.scan --build-only``) to a temporary file beside it, through the whole safe
path (write, fsync, re-read and verify, rename), in a fresh subprocess per run so each peak RSS
is its own. Prints seconds, records/s, MB/s (input bytes per second) and peak RSS, and checks
that the output's status hash equals the input's when etcdutl is available.

Usage (from the repository root):
    python -m bench.copy_snapshot [--snapshot PATH] [--runs 3] [--transform]

``--transform`` replaces every live record's value with itself (decode, splice, re-encode),
to time the per-record callback path as well.

Figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.common import CACHE, run_child

DEFAULT = CACHE / "scan-100000-25000.db"


def _one(snapshot: Path, transform: bool) -> dict[str, float]:
    from snapshot_tools.snapshot import Snapshot
    from snapshot_tools.snapshot_copy import copy_snapshot, kv_transform

    fn = kv_transform(lambda rec: rec.value) if transform else None
    with tempfile.TemporaryDirectory(dir=snapshot.parent, prefix=".bench-copy-") as tmp:
        out = Path(tmp) / "copy.db"
        cpu = time.process_time()
        with Snapshot.open(snapshot) as src:
            result = copy_snapshot(src, out, fn)
        cpu = time.process_time() - cpu
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures = {
            "seconds": result.seconds,
            "cpu_seconds": cpu,
            "records": result.records,
            "rewritten": result.rewritten,
            "input_mb": result.input_size / 1e6,
            "output_mb": result.size / 1e6,
            "peak_rss_mb": rss,
        }
        try:
            from tests.support.etcd import etcdutl_status, find_binaries

            if find_binaries() is not None:
                figures["status_equal"] = float(etcdutl_status(snapshot)["hash"] == etcdutl_status(out)["hash"])
        except ImportError:
            pass
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.copy_snapshot", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, default=DEFAULT)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transform", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.snapshot.is_file():
        sys.exit(f"{args.snapshot}: missing; run `python -m bench.scan --build-only` first")
    if args.child:
        print(json.dumps(_one(args.snapshot, args.transform)))
        return
    child = ["--child", "--snapshot", os.fspath(args.snapshot)] + (["--transform"] if args.transform else [])
    print(f"copy_snapshot {args.snapshot.name} ({args.snapshot.stat().st_size / 1e6:.0f} MB)"
          f"{' with a re-encoding transform' if args.transform else ' unchanged'}")
    for run in range(args.runs):
        f = run_child("bench.copy_snapshot", *child)
        print(
            f"run {run + 1}: {f['seconds']:.2f} s ({f['cpu_seconds']:.2f} s CPU), "
            f"{f['records'] / f['seconds']:,.0f} records/s, "
            f"{f['input_mb'] / f['seconds']:.0f} MB/s, {f['input_mb']:.0f} MB -> {f['output_mb']:.0f} MB, "
            f"peak RSS {f['peak_rss_mb']:.0f} MB"
            + (f", status hash equal: {bool(f['status_equal'])}" if "status_equal" in f else "")
        )


if __name__ == "__main__":
    main()

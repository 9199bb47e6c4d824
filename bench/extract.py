"""Benchmark: ``snapshot-tools extract`` of 100,000 aescbc Secrets, JSON and YAML, end to end.

Uses the snapshot ``bench.check`` builds and caches (``bench/.cache/check-aescbc-N.db`` and its
``check-aescbc.yaml``; built here through a real etcd if missing). Each run is a fresh process:
``snapshot-tools extract SNAP --config CFG -o json|yaml > /dev/null``, wall time of the whole
command and peak RSS (the child's VmHWM, see ``bench.common.run_measured``). One untimed run per
format first checks that the output holds all N items (JSON parsed; YAML counted by its item
lines, as parsing 1 GB of YAML in Python would take minutes).

Usage:
    python -m bench.extract                  # 100,000 Secrets, 3 runs per format
    python -m bench.extract --secrets 20000 --repeat 1 --only json

Figures only; nothing here asserts on timing. Targets (issue 11): >= 30,000 objects/s, peak RSS
< 200 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

from bench.check import aescbc_paths, build_aescbc
from bench.common import SNAPSHOT_TOOLS, machine, run_measured, shown, verdict

TARGET_OBJECTS_PER_S = 30_000
TARGET_RSS_MB = 200


def _count_items(args: list[str], fmt: str) -> int:
    """How many items one untimed run writes (its stdout spooled to a temporary file)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run([*SNAPSHOT_TOOLS, *args], stdout=out, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"extract exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}")
        out.seek(0)
        if fmt == "json":
            return len(json.load(out)["items"])
        return sum(1 for line in out if line.startswith(b"- apiVersion: "))


def bench_format(fmt: str, n: int, repeat: int) -> None:
    snap, cfg = aescbc_paths(n)
    args = ["extract", str(snap), "--config", str(cfg), "-o", fmt]
    items = _count_items(args, fmt)
    assert items == n, f"{fmt}: {items} items written, {n} expected"
    print(f"\n{fmt}: {shown(snap)}, {n:,} Secrets, all {items:,} written (verified); {machine()}")
    runs = []
    for i in range(repeat):
        r = run_measured(args)
        if r["rc"] != 0:
            raise SystemExit(f"extract exited {r['rc']}: {r['stderr']}")
        runs.append(r)
        print(f"  run {i + 1}: {r['wall_s']:.2f} s = {n / r['wall_s']:,.0f} objects/s, "
              f"CPU {r['cpu_s']:.2f} s = {n / r['cpu_s']:,.0f} objects/CPU-s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    best = min(r["wall_s"] for r in runs)
    med = statistics.median(r["wall_s"] for r in runs)
    rss = max(r["peak_rss_mb"] for r in runs)
    rate = n / best
    cpu = min(r["cpu_s"] for r in runs)
    print(f"  best of {repeat} (median {med:.2f} s); best CPU time {cpu:.2f} s = {n / cpu:,.0f} objects/CPU-s "
          "(the figure to trust on a shared machine)")  # fmt: skip
    print(f"  extract -o {fmt:<4} {rate:12,.0f} objects/s   target >= {TARGET_OBJECTS_PER_S:,}  "
          f"[{verdict(rate >= TARGET_OBJECTS_PER_S)}]")  # fmt: skip
    print(f"  peak RSS        {rss:12,.0f} MB          target < {TARGET_RSS_MB} MB  [{verdict(rss < TARGET_RSS_MB)}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secrets", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("json", "yaml"))
    args = parser.parse_args(argv)
    snap, cfg = aescbc_paths(args.secrets)
    if not snap.exists() or not cfg.exists():
        print(f"building {shown(snap)} ({args.secrets} aescbc Secrets) through a real etcd ...", flush=True)
        build_aescbc(args.secrets)
    for fmt in ("json", "yaml"):
        if args.only in (None, fmt):
            bench_format(fmt, args.secrets, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

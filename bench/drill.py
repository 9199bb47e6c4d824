"""Benchmark: ``snapshot-tools drill`` on the 100k-secret snapshot, against the restore done by hand.

Uses ``check``'s cached benchmark snapshot (``bench/.cache/check-aescbc-N.db``: N aescbc Secrets of
1-20 KB built through a real etcd; ``python -m bench.check --build-only`` makes it, and so does
this script when it is missing). Then, alternately, each in a fresh process or fresh etcd:

* ``snapshot-tools drill SNAP --config CFG -o json``: total wall time, each stage's seconds and
  share, and inside the restore stage the etcdutl restore, etcd start and paginated read-back with
  the byte-for-byte comparison;
* by hand: ``etcdutl snapshot restore`` into a temporary directory + etcd started on it (until
  healthy) + ONE range read of every key (a single ``Range`` with no limit, decoded), the floor a
  restore drill cannot beat.

Target (issue 13): the restore stage within 1.5x of the by-hand figure.

Usage (from the repository root):
    python -m bench.drill                 # build the snapshot if needed, then measure (2 runs each)
    python -m bench.drill --secrets 20000 --repeat 3

Figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import load_avg, machine, run_measured, verdict

TARGET_RATIO = 1.5


def ensure_snapshot(n: int) -> tuple[Path, Path]:
    from bench.check import aescbc_paths, build_aescbc

    snap, cfg = aescbc_paths(n)
    if not snap.exists() or not cfg.exists():
        print(f"building {snap.name} (once) ...", flush=True)
        build_aescbc(n)
    return snap, cfg


def by_hand(snap: Path) -> dict[str, float]:
    """etcdutl restore + etcd start + one full range read, timed; everything removed after."""
    import grpc
    from pyetcd import etcdrpc  # type: ignore[import-untyped]

    from tests.support.etcd import GRPC_OPTIONS, etcdutl_restore, require_binaries, start_etcd_on

    bins = require_binaries()
    tmp = Path(tempfile.mkdtemp(prefix="bench-drill-"))
    try:
        t0 = time.perf_counter()
        etcdutl_restore(snap, tmp / "data", bins=bins, timeout=3600)
        t1 = time.perf_counter()
        server = start_etcd_on(tmp / "data", bins=bins, startup_timeout=600)
        try:
            t2 = time.perf_counter()
            with grpc.insecure_channel(f"127.0.0.1:{server.client_port}", options=GRPC_OPTIONS) as channel:
                kv = etcdrpc.KVStub(channel)
                page = kv.Range(etcdrpc.RangeRequest(key=b"\x00", range_end=b"\x00"), timeout=3600)
                keys = len(page.kvs)
            t3 = time.perf_counter()
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"restore_s": t1 - t0, "start_s": t2 - t1, "read_s": t3 - t2, "total_s": t3 - t0, "keys": keys}


def drill_once(snap: Path, cfg: Path) -> dict[str, Any]:
    run = run_measured(["drill", str(snap), "-c", str(cfg), "-o", "json"], keep_stdout=True)
    if run["rc"] != 0:
        raise SystemExit(f"drill failed (rc {run['rc']}): {run['stderr'][-2000:]}")
    doc = json.loads(run["stdout"])["snapshots"][0]
    stages = {s["name"]: s for s in doc["stages"]}
    return {"wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"], "stages": stages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.drill", description=__doc__.splitlines()[0])
    ap.add_argument("--secrets", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each, alternating")
    args = ap.parse_args(argv)
    snap, cfg = ensure_snapshot(args.secrets)
    print(machine())
    print(f"snapshot {snap.name}: {snap.stat().st_size / 1e6:.0f} MB, {args.secrets:,} Secrets")
    drills, hands = [], []
    for i in range(args.repeat):
        print(f"run {i + 1}/{args.repeat} (load {load_avg()}) ...", flush=True)
        drills.append(drill_once(snap, cfg))
        hands.append(by_hand(snap))
    _report(drills, hands)
    return 0


def _report(drills: list[dict[str, Any]], hands: list[dict[str, float]]) -> None:
    med = statistics.median
    total = med(d["wall_s"] for d in drills)
    print(f"\ndrill total (process wall, median of {len(drills)}): {total:.2f} s, "
          f"peak RSS {max(d['peak_rss_mb'] for d in drills):.0f} MB")  # fmt: skip
    for name in ("integrity", "check", "restore"):
        s = med(d["stages"][name]["seconds"] for d in drills)
        print(f"  {name:<10} {s:7.2f} s  {100 * s / total:5.1f} %")
    restore = [d["stages"]["restore"]["details"] for d in drills]
    for key, label in (
        ("etcdutl_restore_seconds", "etcdutl restore"),
        ("etcd_start_seconds", "etcd start"),
        ("read_compare_seconds", "paginated read + compare"),
    ):
        print(f"    {label:<26} {med(r[key] for r in restore):7.2f} s")
    print(f"    keys compared: {restore[0]['keys_compared']:,} in {restore[0]['pages_read']} pages")
    hand = med(h["total_s"] for h in hands)
    print(f"\nby hand: {hand:.2f} s = etcdutl restore {med(h['restore_s'] for h in hands):.2f} + "
          f"etcd start {med(h['start_s'] for h in hands):.2f} + one range read "
          f"{med(h['read_s'] for h in hands):.2f} ({hands[0]['keys']:,} keys)")  # fmt: skip
    stage = med(d["stages"]["restore"]["seconds"] for d in drills)
    ratio = stage / hand
    print(f"restore stage / by hand: {stage:.2f} / {hand:.2f} = {ratio:.2f}x "
          f"(target <= {TARGET_RATIO}x): {verdict(ratio <= TARGET_RATIO)}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

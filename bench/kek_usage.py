"""Benchmark: the proof scan behind ``kms-plugin keyring retire`` (snapshot_tools.kek_usage).

Builds (once, cached in bench/.cache/) a snapshot with the test snapshot writer
(tests/support/snapshots.py, no etcd): N Secrets ``/registry/secrets/ns-{i%50}/secret-{i:06d}``
in KMS v2 seed mode, 90% under the keyring's current KEK and 10% under the middle one, a seed per
1,000 objects (as apiserver restarts would make), plus the keyring. Then times, in a fresh process,
the proof for the oldest KEK (used by nothing): every value parsed and attributed, each distinct
seed unwrapped once. Prints values/s and peak RSS; no target in issue 14 (figures only).

Usage (from the repository root):
    python -m bench.kek_usage                 # build if needed, then measure (3 runs)
    python -m bench.kek_usage --secrets 20000 --rebuild
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from bench.common import CACHE, machine, shown

if TYPE_CHECKING:
    from pathlib import Path

SEEDS_EVERY = 1000


def paths(n: int) -> tuple[Path, Path]:
    return CACHE / f"kek-usage-{n}.db", CACHE / f"kek-usage-{n}.keyring.json"


def build(n: int) -> None:
    from kms_plugin.keks.local import Keyring, save_keyring
    from tests.support.lifecycle import Sealer
    from tests.support.snapshots import write_snapshot

    snap, ring = paths(n)
    CACHE.mkdir(parents=True, exist_ok=True)
    keyring = Keyring.generate().rotated().rotated()
    _, middle, current = keyring.keks
    ring.unlink(missing_ok=True)
    save_keyring(ring, keyring, replace=False)
    values = {}
    sealer = Sealer(current)
    for i in range(n):
        if i % SEEDS_EVERY == 0:
            sealer = Sealer(middle if i % (10 * SEEDS_EVERY) == 0 else current)
        key = f"/registry/secrets/ns-{i % 50}/secret-{i:06d}"
        values[key] = sealer.value(key)
    write_snapshot(snap, values)


def measure(n: int) -> dict[str, float]:
    from kms_plugin.keks.local import Keyring
    from snapshot_tools.kek_usage import kek_usage

    snap, ring = paths(n)
    keyring = Keyring.load(ring)
    t0 = time.perf_counter()
    usage = kek_usage([str(snap)], keyring, keyring.keks[0].id)
    elapsed = time.perf_counter() - t0
    assert usage.proven, usage.to_json()
    return {
        "seconds": elapsed,
        "values_per_s": n / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secrets", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.secrets)))
        return
    snap, _ = paths(args.secrets)
    if args.rebuild or not snap.exists():
        build(args.secrets)
    print(machine())
    runs = []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, "-m", "bench.kek_usage", "--child", "--secrets", str(args.secrets)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        runs.append(json.loads(out.stdout))
    rate = statistics.median(r["values_per_s"] for r in runs)
    rss = max(r["peak_rss_mb"] for r in runs)
    print(f"proof scan of {shown(snap)} ({args.secrets} values, all revisions): "
          f"{rate:,.0f} values/s (median of {len(runs)}), peak RSS {rss:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark: full scan of the latest view of a big, secrets-shaped etcd snapshot.

Builds (once, cached in bench/.cache/) a snapshot through a real etcd: N keys
`/registry/secrets/ns-{i%50}/secret-{i:06d}` with aescbc-shaped values of 1-20 KB
(`k8s:enc:aescbc:v1:key1:` + 16-byte IV + random "ciphertext", sizes log-uniform with a fixed
seed, so most values are small and a few are large, as in real clusters), then M overwrites of
distinct random keys. Puts are batched in transactions. The scan runs in a fresh subprocess so
the build's memory does not count, and prints records/s, live keys/s, MB/s and peak RSS.
``--view`` times another view instead of the latest one: every revision (``all``), every stored
record (``records``, tombstones included).

Usage (from the repository root):
    python -m bench.scan                    # build if needed, then scan (3 runs)
    python -m bench.scan --build-only       # just build bench/.cache/scan-100000-25000.db
    python -m bench.scan --keys 20000 --overwrites 5000 --rebuild
    python -m bench.scan --snapshot SNAP --view records

Figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import CACHE, load_through_etcd, run_child, shown

if TYPE_CHECKING:
    from collections.abc import Iterator

TARGET_RECORDS_PER_S = 400_000
TARGET_RSS_MB = 150
SEED = 20240601
PREFIX = b"k8s:enc:aescbc:v1:key1:"
MIN_VALUE, MAX_VALUE = 1024, 20 * 1024
VIEWS = ("latest", "all", "records")


def snapshot_path(keys: int, overwrites: int) -> Path:
    return CACHE / f"scan-{keys}-{overwrites}.db"


def secret_key(i: int) -> bytes:
    return f"/registry/secrets/ns-{i % 50}/secret-{i:06d}".encode()


def secret_value(rng: random.Random) -> bytes:
    """An aescbc-shaped value: prefix, 16-byte IV, ciphertext padded to 16 bytes; 1-20 KB."""
    size = int(math.exp(rng.uniform(math.log(MIN_VALUE), math.log(MAX_VALUE))))
    body = max(32, size - len(PREFIX)) // 16 * 16
    return PREFIX + rng.randbytes(body)


def _write_ops(rng: random.Random, keys: int, overwrites: int) -> Iterator[tuple[bytes, bytes]]:
    for i in range(keys):
        yield secret_key(i), secret_value(rng)
    targets = rng.sample(range(keys), overwrites) if overwrites <= keys else [
        rng.randrange(keys) for _ in range(overwrites)
    ]
    for i in targets:
        yield secret_key(i), secret_value(rng)


def build(keys: int, overwrites: int, out: Path) -> dict[str, Any]:
    """Load the data set into a fresh etcd, save a snapshot to `out` atomically, return facts."""
    rng = random.Random(SEED)
    return load_through_etcd(_write_ops(rng, keys, overwrites), out, keys=keys, overwrites=overwrites, seed=SEED)


def scan_once(path: Path, view: str = "latest") -> dict[str, Any]:
    """Child process body: time open + the view's scan, then count key-bucket records (untimed)."""
    import resource

    from snapshot_tools.snapshot import Snapshot

    t0 = time.perf_counter()
    snap = Snapshot.open(path)
    scan = {"latest": snap.latest, "all": snap.all_revisions, "records": snap.records}[view]
    t1 = time.perf_counter()
    live = 0
    value_bytes = 0
    for rec in scan():
        live += 1
        value_bytes += len(rec.value)
    t2 = time.perf_counter()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = _proc_status(("RssAnon", "RssFile"))
    t3 = time.perf_counter()
    records = sum(1 for _ in snap.items(b"key"))  # every revision in the key bucket
    walk_s = time.perf_counter() - t3
    size = snap.size
    t4 = time.perf_counter()
    trailer = snap.trailer  # the SHA-256 check, if the reader defers it until asked
    trailer_s = time.perf_counter() - t4
    snap.close()
    return {
        "open_s": t1 - t0,
        "scan_s": t2 - t1,
        "total_s": t2 - t0,
        "walk_s": walk_s,
        "trailer_s": trailer_s,
        "live_keys": live,
        "records": records,
        "value_bytes": value_bytes,
        "file_size": size,
        "trailer": trailer,
        "peak_rss_mb": peak_kb / 1024,
        "rss_after_scan_kb": rss,
    }


def _proc_status(fields: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in fields:
                out[name] = int(rest.split()[0])
    except OSError:
        pass
    return out


def run_scan(path: Path, view: str = "latest") -> dict[str, Any]:
    return run_child("bench.scan", "--_scan", str(path), "--view", view)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scan", description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--overwrites", type=int, default=25_000)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached snapshot")
    ap.add_argument("--build-only", action="store_true", help="build (if needed) and stop")
    ap.add_argument("--repeat", type=int, default=3, help="scan runs, each in a fresh process")
    ap.add_argument("--snapshot", type=Path, help="scan this file instead of the cached build")
    ap.add_argument("--view", choices=VIEWS, default="latest", help="the view to time (default latest)")
    ap.add_argument("--_scan", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._scan is not None:
        print(json.dumps(scan_once(args._scan, args.view)))
        return 0

    path = args.snapshot or snapshot_path(args.keys, args.overwrites)
    if args.snapshot is None and (args.rebuild or not path.exists()):
        print(f"building {shown(path)} ({args.keys} keys + {args.overwrites} overwrites)"
              " through a real etcd ...", flush=True)  # fmt: skip
        facts = build(args.keys, args.overwrites, path)
        st = facts["etcdutl_status"]
        print(f"built in {facts['build_seconds']} s (load {facts['load_seconds']} s, "
              f"{facts['transactions']} txns, etcd {facts['etcd_version']}): "
              f"{facts['file_size'] / 1e6:.1f} MB, revision {st['revision']}, "
              f"totalKey {st['totalKey']}", flush=True)  # fmt: skip
    elif args.snapshot is None:
        print(f"using cached {shown(path)} (--rebuild to rebuild)")
    if args.build_only:
        return 0

    runs = [run_scan(path, args.view) for _ in range(max(1, args.repeat))]
    for n, r in enumerate(runs, 1):
        print(f"run {n}: open {r['open_s']:.3f} s + scan {r['scan_s']:.3f} s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"after scan {r['rss_after_scan_kb']} kB")  # fmt: skip
    r = runs[0]
    # Best run as the headline: other processes on a shared 2-core box only ever add time.
    total = min(x["total_s"] for x in runs)
    scan = min(x["scan_s"] for x in runs)
    median = statistics.median(x["total_s"] for x in runs)
    rss = max(x["peak_rss_mb"] for x in runs)
    rec_s = r["records"] / total
    print(f"\nsnapshot: {path} ({r['file_size'] / 1e6:.1f} MB, trailer {r['trailer']})")
    yielded = "live keys" if args.view == "latest" else f"{args.view} view"
    print(f"records (key bucket, all revisions): {r['records']}, {yielded}: {r['live_keys']}, "
          f"value bytes: {r['value_bytes'] / 1e6:.1f} MB")  # fmt: skip
    print(f"best of {len(runs)}: open+scan {total:.3f} s (scan alone {scan:.3f} s); "
          f"median {median:.3f} s = {r['records'] / median:,.0f} records/s")  # fmt: skip
    ok = "ok" if rec_s >= TARGET_RECORDS_PER_S else "BELOW TARGET"
    print(f"records/s   {rec_s:12,.0f}   target >= {TARGET_RECORDS_PER_S:,}  [{ok}]")
    print(f"  (scan only {r['records'] / scan:12,.0f})")
    print(f"{yielded + '/s':<11} {r['live_keys'] / total:12,.0f}")
    print(f"MB/s        {r['file_size'] / 1e6 / total:12,.0f}   (file size / open+scan time)")
    ok = "ok" if rss < TARGET_RSS_MB else "ABOVE TARGET"
    print(f"peak RSS    {rss:12,.0f} MB   target < {TARGET_RSS_MB} MB  [{ok}]"
          "   (ru_maxrss: counts the mmap'd file pages the scan touches)")  # fmt: skip
    walk = min(x["walk_s"] for x in runs)
    print(f"for reference: bare bbolt walk of the key bucket (items(b'key'), no protobuf, "
          f"second pass in the same process) {walk:.3f} s = {r['records'] / walk:,.0f} records/s")
    trailer_s = min(x["trailer_s"] for x in runs)
    print(f"for reference: reading .trailer after the scan (SHA-256 if not done at open) "
          f"{trailer_s:.3f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

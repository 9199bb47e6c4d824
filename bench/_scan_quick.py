"""Quick self-check of the snapshot engine's scan speed and memory (prints figures, asserts nothing).

Usage: python bench/_scan_quick.py [SNAPSHOT] [--view latest|all|status|records]
Without SNAPSHOT it builds (once) a synthetic snapshot shaped like the project benchmark:
100k secrets-shaped keys with 1-20 KB values plus 25k overwrites, via tests/support/snapshots.py.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from snapshot_tools.snapshot import Snapshot  # noqa: E402
from tests.support.snapshots import Builder, kv_bytes, revision_key  # noqa: E402


def synthesize(path: Path, keys: int = 100_000, overwrites: int = 25_000) -> None:
    rng = random.Random(7)
    pool = rng.randbytes(1 << 21)

    def records():
        rev = 2
        version = {}
        order = list(range(keys)) + [rng.randrange(keys) for _ in range(overwrites)]
        for i in order:
            key = f"/registry/secrets/ns{i % 100:02d}/secret-{i:06d}".encode()
            size = rng.randint(1024, 20 * 1024)
            start = rng.randrange(len(pool) - size)
            value = b"k8s:enc:aescbc:v1:key1:" + pool[start : start + size]
            v = version.get(i, 0) + 1
            version[i] = v
            create = rev if v == 1 else create_rev[i]
            create_rev.setdefault(i, rev)
            yield revision_key(rev), kv_bytes(key, create, rev, v, value)
            rev += 1

    create_rev: dict[int, int] = {}
    tmp = path.with_suffix(".part")
    with tmp.open("w+b") as out:
        b = Builder(out)
        key_bucket = b.bucket(records())
        meta = b.bucket([(b"consistent_index", (125_000).to_bytes(8, "big"))])
        b.finish([(b"key", key_bucket), (b"meta", meta)])
    tmp.rename(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("snapshot", nargs="?")
    ap.add_argument("--view", default="latest", choices=["latest", "all", "status", "records", "trailer"])
    args = ap.parse_args()
    path = Path(args.snapshot) if args.snapshot else Path("/tmp/synthetic-125k.db")
    if not path.exists():
        t = time.perf_counter()
        synthesize(path)
        print(f"built {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    if args.view == "status":
        from snapshot_tools.status import snapshot_status

        s = snapshot_status(path)
        n = sum(s.resources.values())
        print(f"status: hash {s.hash:x} revision {s.revision} total_keys {s.total_keys} trailer {s.trailer}")
    else:
        with Snapshot.open(path) as snap:
            if args.view == "trailer":
                print("trailer", snap.trailer)
                n = 0
            else:
                it = {"latest": snap.latest, "all": snap.all_revisions, "records": snap.records}[args.view]
                n = sum(1 for _ in it())
    elapsed = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with Snapshot.open(path) as snap:
        stored = sum(1 for _ in snap.db.bucket(b"key").spans())
    print(
        f"{args.view}: {n} records yielded, {stored} key-bucket records in {elapsed:.3f} s = "
        f"{stored / elapsed:,.0f} records/s; peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()

"""Benchmark: ``snapshot-tools reencrypt`` end to end on the 100,000-Secret aescbc snapshot.

The input is the one ``bench.check`` builds through a real etcd and caches in bench/.cache/
(``check-aescbc-N.db`` and its config; built here through ``bench.check`` if missing). Two
targets, each run in a fresh process (wall time of the whole command, peak RSS = the child's
VmHWM):

* (a) another aescbc key (``--to`` a config with a new random key);
* (b) KMS v2 through a ``kms-plugin`` keyring (``--keyring NAME=FILE``): one fresh seed per
  run, wrapped once.

The command verifies every rewritten record (decrypted with the target config alone) before
it renames the output; each output is then also confirmed with ``snapshot-tools check OUT
--config NEW`` (exit 0, every object current) outside the timing, and removed.

Usage (from the repository root):
    python -m bench.rewrite                  # both targets, 2 runs each
    python -m bench.rewrite --only aescbc --repeat 3
    python -m bench.rewrite --secrets 2000 --repeat 1
    python -m bench.rewrite --profile        # cProfile one in-process aescbc rewrite (top 30)

Figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.check import aescbc_paths, build_aescbc
from bench.common import (
    CACHE,
    SNAPSHOT_TOOLS,
    load_avg,
    machine,
    print_profile,
    run_measured,
    shown,
    verdict,
    write_config,
)

TARGET_OBJECTS_PER_S = 50_000
TARGET_RSS_MB = 300
KMS_NAME = "bench-kms"


def new_aescbc(directory: Path) -> tuple[Path, list[str]]:
    secret = base64.b64encode(os.urandom(32)).decode()
    provider = f"  - aescbc:\n      keys:\n      - name: key2\n        secret: {secret}\n"
    return write_config(directory / "new-aescbc.yaml", provider), []


def new_kms(directory: Path) -> tuple[Path, list[str]]:
    from kms_plugin.keks.local import Keyring, save_keyring

    keyring = directory / "keyring.json"
    save_keyring(keyring, Keyring.generate(), replace=False)
    cfg = write_config(
        directory / "new-kms.yaml",
        f"  - kms: {{apiVersion: v2, name: {KMS_NAME}, endpoint: 'unix:///nonexistent/bench.sock', timeout: 3s}}\n",
    )
    return cfg, ["--keyring", f"{KMS_NAME}={keyring}"]


def confirm(out: Path, cfg: Path, flags: list[str], n: int) -> str:
    """``snapshot-tools check OUT --config NEW``: exit 0 and every object current, or stop."""
    proc = subprocess.run([*SNAPSHOT_TOOLS, "check", str(out), "--config", str(cfg), *flags, "--output", "json"],
                          capture_output=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"check of the output exited {proc.returncode}: {proc.stderr.decode().strip()}")
    s = json.loads(proc.stdout)["summary"]
    if s["objects"] != n or s["current"] != n:
        raise SystemExit(f"check of the output: unexpected verdicts {s}")
    return f"check exit 0, {n:,} current"


def bench(label: str, snap: Path, old: Path, cfg: Path, flags: list[str], n: int, repeat: int) -> None:
    out = CACHE / "rewrite-out.db"
    size = snap.stat().st_size
    print(f"\n{label}: {snap.name} ({size / 1e6:.0f} MB, {n:,} Secrets); load avg before: {load_avg()}", flush=True)
    runs = []
    for i in range(repeat):
        out.unlink(missing_ok=True)
        r = run_measured(["reencrypt", str(snap), "-c", str(old), "--to", str(cfg), *flags, str(out),
                       "-o", "json"], keep_stdout=True)  # fmt: skip
        if r["rc"] != 0:
            raise SystemExit(f"reencrypt exited {r['rc']}: {r['stderr']}")
        summary = json.loads(r["stdout"])
        if summary["revisions_rewritten"] != n:
            raise SystemExit(f"expected {n} revisions rewritten: {summary}")
        confirmed = confirm(out, cfg, flags, n)
        out.unlink()
        r["summary"] = summary
        runs.append(r)
        edges = ", ".join(
            f"{e['from']['provider']}/{e['from']['name']} -> {e['to']['provider']}/{e['to']['name']}: "
            f"{e['revisions']:,}"
            for e in summary["rewritten"]
        )
        print(f"  run {i + 1}: {r['wall_s']:.2f} s = {n / r['wall_s']:,.0f} objects/s, "
              f"{size / 1e6 / r['wall_s']:.0f} MB/s in, peak RSS {r['peak_rss_mb']:.0f} MB; "
              f"in-command {summary['seconds']:.2f} s; {edges}; verified before rename, {confirmed}",
              flush=True)  # fmt: skip
    best = min(runs, key=lambda r: r["wall_s"])
    rate = n / best["wall_s"]
    rss = max(r["peak_rss_mb"] for r in runs)
    print(f"  best of {repeat}; load avg after: {load_avg()}")
    print(f"  reencrypt end to end {rate:10,.0f} objects/s   target >= {TARGET_OBJECTS_PER_S:,}  "
          f"[{verdict(rate >= TARGET_OBJECTS_PER_S)}]")  # fmt: skip
    print(f"  throughput           {size / 1e6 / best['wall_s']:10,.0f} MB/s in, "
          f"{best['summary']['bytes_out'] / 1e6 / best['wall_s']:,.0f} MB/s out")  # fmt: skip
    print(f"  peak RSS             {rss:10,.0f} MB          target < {TARGET_RSS_MB} MB  "
          f"[{verdict(rss < TARGET_RSS_MB)}]")  # fmt: skip


def profile(snap: Path, old: Path, top: int) -> None:
    import cProfile

    from snapshot_tools.reencrypt import RewriteOptions, run_rewrite
    from snapshot_tools.unwrap import KeyAccess

    with tempfile.TemporaryDirectory(dir=CACHE) as d:
        cfg, _ = new_aescbc(Path(d))
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        summary = run_rewrite(RewriteOptions(snapshot=str(snap), access=KeyAccess(configs=(str(old),)), to=str(cfg),
                                             output=str(Path(d) / "out.db")))  # fmt: skip
        prof.disable()
        print(f"(profiled) {time.perf_counter() - t0:.2f} s, {summary.revisions_rewritten:,} rewritten")
    print_profile(prof, top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rewrite", description=__doc__.splitlines()[0])
    ap.add_argument("--secrets", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2, help="runs per target, each in a fresh process")
    ap.add_argument("--only", choices=("aescbc", "kms"))
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)

    snap, old = aescbc_paths(args.secrets)
    if not snap.exists() or not old.exists():
        print(f"building {shown(snap)} ({args.secrets:,} aescbc Secrets) through a real etcd ...",
              flush=True)  # fmt: skip
        build_aescbc(args.secrets)
    if args.profile:
        profile(snap, old, 30)
        return 0
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-rewrite-") as d:
        if args.only != "kms":
            cfg, flags = new_aescbc(Path(d))
            bench("(a) aescbc -> aescbc (new key)", snap, old, cfg, flags, args.secrets, args.repeat)
        if args.only != "aescbc":
            cfg, flags = new_kms(Path(d))
            bench("(b) aescbc -> KMS v2 (keyring)", snap, old, cfg, flags, args.secrets, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

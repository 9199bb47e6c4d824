"""Benchmark: ``check --etcd-endpoint`` against a running etcd, next to ``check`` on the file.

The 100k-secret aescbc snapshot of :mod:`bench.check` (built once, cached in bench/.cache/) is
restored with ``etcdutl snapshot restore`` into a temporary data dir and served by a real etcd
on 127.0.0.1. Then, each run in a fresh process (wall time, CPU time of the client, peak RSS from
the child's VmHWM): ``snapshot-tools check --etcd-endpoint URL --config CFG --output json`` and
``snapshot-tools check SNAP --config CFG --output json``. The etcd server's own CPU time during
the live runs is read from /proc (the cost a live check puts on the cluster). For reference, the
reader alone (``EtcdSource.latest()``, values dropped) is timed at a few page sizes.

Usage (from the repository root):
    python -m bench.live_etcd                  # build the snapshot if needed, then measure
    python -m bench.live_etcd --repeat 1 --secrets 20000
    python -m bench.live_etcd --history-only   # one latest-view run and the --all-revisions runs

Figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.check import aescbc_paths, build_aescbc, check_output
from bench.common import load_avg, machine, run_measured, shown

TARGET_NOTE = "issue 12: live-etcd check of the same data, objects/s (no numeric target)"
PAGE_SIZES = (100, 1000, 5000)


def _cpu_of(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runs(label: str, args: list[str], n: int, repeat: int, server_pid: int | None = None) -> list[dict[str, Any]]:
    runs = []
    for i in range(repeat):
        before = _cpu_of(server_pid) if server_pid else 0.0
        r = run_measured(args)
        if r["rc"] != 0:
            raise SystemExit(f"{label}: check exited {r['rc']}: {r['stderr']}")
        r["server_cpu_s"] = (_cpu_of(server_pid) - before) if server_pid else None
        runs.append(r)
        extra = f", etcd CPU {r['server_cpu_s']:.2f} s" if server_pid else ""
        print(f"  {label} run {i + 1}: {r['wall_s']:.2f} s = {n / r['wall_s']:,.0f} objects/s, "
              f"CPU {r['cpu_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB{extra}", flush=True)  # fmt: skip
    return runs


def _reader_alone(endpoint: str) -> list[tuple[int, float, int]]:
    from snapshot_tools.live_etcd import EtcdSource, etcd_target

    out = []
    for page in PAGE_SIZES:
        with EtcdSource(etcd_target(endpoint, timeout=60), page_keys=page) as source:
            t0 = time.perf_counter()
            count = sum(1 for _ in source.latest())
            out.append((page, time.perf_counter() - t0, count))
    return out


def server_revision(client: Any) -> int:
    """The head revision of the bench's own etcd (from a Range header)."""
    return int(client.get_response(b"/").header.revision)


def bench(n: int, repeat: int, history_only: bool = False) -> None:
    from snapshot_tools.live_etcd import RUN_BYTES
    from tests.support.etcd import etcd_version, etcdutl_restore, start_etcd_on

    snap, cfg = aescbc_paths(n)
    if not snap.exists() or not cfg.exists():
        print(f"building {shown(snap)} ({n} aescbc Secrets) through a real etcd ...", flush=True)
        build_aescbc(n)
    print(f"{machine()}; etcd {'.'.join(map(str, etcd_version()))}")
    print(f"{snap.name}: {snap.stat().st_size / 1e6:.0f} MB, {n} aescbc Secrets")
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-etcd-"))
    try:
        t0 = time.monotonic()
        etcdutl_restore(snap, tmp / "data", timeout=1800)
        server = start_etcd_on(tmp / "data", startup_timeout=300)
        try:
            print(f"restored and started in {time.monotonic() - t0:.1f} s: {server.endpoint}", flush=True)
            live_args = ["check", "--etcd-endpoint", server.endpoint, "--config", str(cfg), "--output", "json"]
            file_args = ["check", str(snap), "--config", str(cfg), "--output", "json"]
            if not history_only:
                out = check_output(live_args)
                s = out["summary"]
                assert s["objects"] == n and s["current"] == n, f"unexpected live verdicts: {s}"
                assert out["objects"] == check_output(file_args)["objects"], "live and file objects differ"
                del out
                print(f"verified: live and file reports list the same {n} objects, all current; "
                      f"load avg {load_avg()}", flush=True)  # fmt: skip
            assert server._proc is not None
            pid = server._proc.pid
            live = _runs("live", live_args, n, 1 if history_only else repeat, pid)
            on_file = _runs("file", file_args, n, 1 if history_only else repeat)
            reader = [] if history_only else _reader_alone(server.endpoint)
            history = ["--all-revisions", "--etcd-timeout", "120"]
            live_all = _runs("live --all-revisions", live_args + history, n, 1, pid)
            file_all = _runs("file --all-revisions", [*file_args, "--all-revisions"], n, 1)
            # The bench's etcd, not a user's: compacted at its head, history is the latest view
            # again (a Range at the compact revision, streamed; nothing left to watch).
            client = server.client(timeout=600)
            client.compact(server_revision(client), physical=True)
            live_compacted = _runs("live --all-revisions, compacted", live_args + history, n, 1, pid)
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def row(label: str, runs: list[dict[str, Any]]) -> str:
        best = min(runs, key=lambda r: r["wall_s"])
        med = statistics.median(r["wall_s"] for r in runs)
        server = f"{best['server_cpu_s']:8.2f} s" if best["server_cpu_s"] is not None else "       -  "
        return (f"  {label:<24} {n / best['wall_s']:12,.0f} {best['wall_s']:8.2f} s {med:8.2f} s "
                f"{best['cpu_s']:8.2f} s {server} {max(r['peak_rss_mb'] for r in runs):8.0f} MB")  # fmt: skip

    print(f"\nbest of {repeat} runs, each a fresh process; load avg after: {load_avg()}")
    print(f"  {'':<24} {'objects/s':>12} {'wall':>10} {'median':>10} {'CPU':>10} {'etcd CPU':>10} {'peak RSS':>11}")
    print(row("check --etcd-endpoint", live))
    print(row("check SNAPSHOT (file)", on_file))
    ratio = min(r["wall_s"] for r in live) / min(r["wall_s"] for r in on_file)
    print(f"  live / file wall time: {ratio:.2f} x   ({TARGET_NOTE})")
    print(row("live --all-revisions", live_all))
    print(row("  same, etcd compacted", live_compacted))
    print(row("file --all-revisions", file_all))
    print("  (history: a never-compacted etcd is read through one watch, sorted by key in runs of")
    print(f"   {RUN_BYTES >> 20} MiB spilled to $TMPDIR and merged back; after a compaction the survivors")
    print("   stream from a Range at the compact revision)")
    if reader:
        print("  reader alone (EtcdSource.latest(), values dropped), by Range page size (most keys a page):")
    for page, seconds, count in reader:
        print(f"    {page:>5} keys/page: {seconds:6.2f} s = {count / seconds:10,.0f} records/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.live_etcd", description=__doc__.splitlines()[0])
    ap.add_argument("--secrets", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, each in a fresh process")
    ap.add_argument("--history-only", action="store_true",
                    help="one run of the latest view of each, then the --all-revisions runs")  # fmt: skip
    args = ap.parse_args(argv)
    bench(args.secrets, args.repeat, args.history_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())

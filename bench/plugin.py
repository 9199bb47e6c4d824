"""Benchmark the KMS plugin over its unix socket: Encrypt and Decrypt next to Status (the floor).

Starts ``kms-plugin serve`` on a fresh keyring, then for each concurrency drives Status, Encrypt
and Decrypt with the same clients (client processes x threads, each thread one
:class:`~kms_plugin.client.KMSv2Client` call at a time) for ``--duration`` seconds and prints
per-call latency at the client (p50/p99) and calls/s. Ratio = method p50 / Status p50 and
Status calls/s / method calls/s (targets: <= 1.3).

``--backends keyring,pkcs11,pkcs11-direct`` adds the PKCS#11 rows: a key in a private SoftHSM2
token, with the local-KEK hierarchy (the default of ``serve --pkcs11-*``) and without it (every
Encrypt/Decrypt is a CKM_AES_GCM call in SoftHSM), then a table of each next to the keyring
(target for ``pkcs11``: within 1.3x).

Usage (from the repository root):
    python -m bench.plugin [--flavour sync|aio] [--workers 4] [--duration 3] [--concurrency 1,8,64]
    python -m bench.plugin --backends keyring,pkcs11,pkcs11-direct --concurrency 1,8

Figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import KMS_PLUGIN, ROOT


def _client_proc(endpoint: str, method: str, threads: int, duration: float, q: mp.Queue) -> None:
    from kms_plugin.client import KMSv2Client

    client = KMSv2Client(endpoint, timeout=10)
    enc = client.encrypt(os.urandom(32))
    seed = os.urandom(32)
    calls = {
        "Status": lambda: client.status(),
        "Encrypt": lambda: client.encrypt(seed),
        "Decrypt": lambda: client.decrypt(enc.ciphertext, enc.key_id, enc.annotations),
    }
    fn = calls[method]
    for _ in range(20):
        fn()  # warm up
    barrier = threading.Barrier(threads)
    results: list[list[float]] = []
    errors = [0]

    def worker() -> None:
        lat: list[float] = []
        barrier.wait()
        end = time.perf_counter() + duration
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            try:
                fn()
            except Exception:  # noqa: BLE001 - counted, reported
                errors[0] += 1
                continue
            lat.append(time.perf_counter() - t0)
        results.append(lat)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    client.close()
    q.put(([x for lat in results for x in lat], errors[0]))


def run_cell(endpoint: str, method: str, concurrency: int, duration: float, procs: int) -> tuple[list[float], int]:
    procs = min(procs, concurrency)
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()
    ps = [ctx.Process(target=_client_proc, args=(endpoint, method, n, duration, q)) for n in per]
    for p in ps:
        p.start()
    lat: list[float] = []
    errors = 0
    for _ in ps:
        part, err = q.get(timeout=duration + 120)  # a client that died must not hang the run
        lat.extend(part)
        errors += err
    for p in ps:
        p.join()
    return lat, errors


def summarise(lat: list[float], errors: int, seconds: float) -> dict:
    lat.sort()
    n = len(lat)
    return {
        "calls": n,
        "errors": errors,
        "rate": n / seconds,
        "p50": lat[n // 2] * 1e3 if n else float("nan"),
        "p99": lat[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
        "mean": statistics.fmean(lat) * 1e3 if n else float("nan"),
    }


def _serve_cmd(args: argparse.Namespace, backend: str, tmp: str, endpoint: str, token: object) -> list[str]:
    """The server command line for ``backend`` (keyring, pkcs11 = hierarchy, pkcs11-direct)."""
    common = ["--health-addr", "off", "--max-workers", str(args.workers), "--log-level", "error"]
    if backend == "keyring":
        keyring = Path(tmp, "k.json")
        subprocess.run([*KMS_PLUGIN, "keyring", "init", str(keyring)], check=True, capture_output=True)
        if args.flavour == "aio":  # the asyncio server lives here, not in the product
            return [sys.executable, "-m", "bench.plugin_aio", "--listen", endpoint, "--keyring", str(keyring)]
        return [*KMS_PLUGIN, "serve", "--listen", endpoint, "--keyring", str(keyring), *common]
    flags = token.flags()  # type: ignore[attr-defined]
    mode = "--local-kek" if backend == "pkcs11" else "--no-local-kek"
    return [*KMS_PLUGIN, "serve", "--listen", endpoint, *flags, mode, "--probe-interval", "3600", *common]


def run_backend(args: argparse.Namespace, backend: str, token: object) -> dict[tuple[int, str], dict]:
    """Serve ``backend``, drive every method at every concurrency; print rows, return them."""
    tmp = tempfile.mkdtemp(prefix="kmsb", dir="/tmp")
    rows: dict[tuple[int, str], dict] = {}
    try:
        sock = Path(tmp, "p.sock")
        endpoint = f"unix://{sock}"
        cmd = _serve_cmd(args, backend, tmp, endpoint, token)
        if args.profile:
            cmd = [sys.executable, "-m", "cProfile", "-o", args.profile, *cmd[1:]]
        server = subprocess.Popen(cmd, cwd=ROOT)
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        print(f"backend {backend}; server: {args.flavour}, {args.workers} workers; clients: up to "
              f"{args.client_procs} processes; {args.duration:g}s per cell; cores: {os.cpu_count()}")
        print(f"{'conc':>4} {'method':<8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'x floor p50':>11} {'floor/rate':>10} {'errors':>6}")
        methods = ("Status", "Encrypt", "Decrypt")
        for conc in (int(c) for c in args.concurrency.split(",")):
            # Interleave short slices so drift (other load on the box) hits all methods alike.
            lat: dict[str, list[float]] = {m: [] for m in methods}
            errs = dict.fromkeys(methods, 0)
            for _ in range(args.rounds):
                for method in methods:
                    part, e = run_cell(endpoint, method, conc, args.duration / args.rounds,
                                       args.client_procs)
                    lat[method].extend(part)
                    errs[method] += e
            floor = summarise(lat["Status"], errs["Status"], args.duration)
            for method in methods:
                r = summarise(lat[method], errs[method], args.duration)
                rows[(conc, method)] = r
                ratio = r["p50"] / floor["p50"]
                slow = floor["rate"] / r["rate"]
                print(f"{conc:>4} {method:<8} {r['rate']:>9.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} "
                      f"{ratio:>11.2f} {slow:>10.2f} {r['errors']:>6}", flush=True)
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def compare(results: dict[str, dict[tuple[int, str], dict]]) -> None:
    """Each backend next to the keyring: calls/s and p99 ratios (PKCS#11 target: within 1.3x)."""
    base = results.get("keyring")
    if base is None or len(results) < 2:
        return
    print(f"\n{'backend':<14} {'conc':>4} {'method':<8} {'calls/s':>9} {'p99 ms':>8} "
          f"{'keyring/rate':>12} {'p99/keyring':>11}")
    for backend, rows in results.items():
        if backend == "keyring":
            continue
        for (conc, method), r in rows.items():
            if method == "Status" or (conc, method) not in base:
                continue
            b = base[(conc, method)]
            print(f"{backend:<14} {conc:>4} {method:<8} {r['rate']:>9.0f} {r['p99']:>8.3f} "
                  f"{b['rate'] / r['rate']:>12.2f} {r['p99'] / b['p99']:>11.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plugin", description=__doc__.splitlines()[0])
    ap.add_argument("--flavour", default="sync", choices=["sync", "aio"])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved slices per cell")
    ap.add_argument("--client-procs", type=int, default=2, help="client processes (GIL)")
    ap.add_argument("--profile", help="write a cProfile of the server to this file")
    ap.add_argument(
        "--backends",
        default="keyring",
        help="comma list of keyring, pkcs11 (SoftHSM2 key, local-KEK hierarchy), pkcs11-direct "
        "(every call in SoftHSM2); e.g. keyring,pkcs11,pkcs11-direct --concurrency 1,8",
    )
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(backends) - {"keyring", "pkcs11", "pkcs11-direct"}
    if unknown:
        ap.error(f"unknown backend {min(unknown)!r}")
    results: dict[str, dict[tuple[int, str], dict]] = {}
    with contextlib.ExitStack() as stack:
        token = None
        if any(b.startswith("pkcs11") for b in backends):
            from tests.support.softhsm import softhsm_token

            token = stack.enter_context(softhsm_token())
            subprocess.run([*KMS_PLUGIN, "pkcs11", "init-key", *token.flags()], check=True, capture_output=True)
        for backend in backends:
            results[backend] = run_backend(args, backend, token)
            print(flush=True)
    compare(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

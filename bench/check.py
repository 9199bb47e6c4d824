"""Benchmark: ``snapshot-tools check`` end to end against the crypto floor.

Builds (once, cached in bench/.cache/) through a real etcd:

* ``check-aescbc-N.db``: N keys ``/registry/secrets/ns-{i%50}/secret-{i:06d}`` whose values are
  real aescbc-encrypted Secrets (``k8s\\x00`` + ``runtime.Unknown`` protobuf wrapping a
  ``v1.Secret`` with metadata and a ``data`` map, as kube-apiserver stores them), 1-20 KB
  log-uniform with a fixed seed, under key ``key1`` of a fixed key; plus its
  EncryptionConfiguration ``check-aescbc.yaml``;
* ``check-kmsv2-M.db``: M such Secrets in KMS v2 seed mode sharing one seed, wrapped once by the
  test KMS v2 plugin (tests/support/kms.py) with a fixed KEK; plus ``check-kmsv2.yaml``.

Then, each run in a fresh process: ``snapshot-tools check SNAP --config CFG --output json >
/dev/null`` (wall time of the whole command, peak RSS from ``wait4``), and the crypto floor: the
same values read into a list first, then only ``aescbc.decrypt`` + ``objects.is_kubernetes_object``
timed per value in a bare loop. For KMS v2 the test plugin serves the KEK on a unix socket in
this process and counts the Decrypt (unwrap) calls the check made.

Usage (from the repository root):
    python -m bench.check                 # build if needed, then measure (3 runs each)
    python -m bench.check --build-only
    python -m bench.check --profile       # cProfile one in-process aescbc check (top 25)
    python -m bench.check --secrets 20000 --kms-secrets 5000 --rebuild

Figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CACHE,
    SNAPSHOT_TOOLS,
    load_avg,
    load_through_etcd,
    machine,
    print_profile,
    run_child,
    run_measured,
    shown,
    verdict,
    write_config,
)
from tests.support import k8s_objects as k8s

TARGET_OBJECTS_PER_S = 100_000
TARGET_FLOOR_RATIO = 3.0
TARGET_RSS_MB = 200
SEED = 20240602
KEY_NAME = "key1"
KMS_NAME = "kms1"
MIN_VALUE, MAX_VALUE = 1024, 20 * 1024
# -- data ----------------------------------------------------------------------------------------


def secret_plaintext(rng: random.Random, namespace: str, name: str, size: int) -> bytes:
    """``k8s\\x00`` + runtime.Unknown{TypeMeta{v1, Secret}, raw=v1.Secret, "", ""} of ~size bytes."""
    uid = "%08x-%04x-%04x-%04x-%012x" % (  # noqa: UP031 - a uuid shape
        rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(16),
        rng.getrandbits(48),
    )  # fmt: skip
    created = 1_700_000_000 + rng.randrange(10**7)  # metav1.Time{seconds}
    head = k8s.field(1, k8s.object_meta(name, namespace, uid=uid, created=created, labels={"app": "bench"}))
    tail = k8s.field(3, b"Opaque")
    # Fill the data map up to the size wanted with a few random entries.
    budget = max(16, size - len(head) - len(tail) - 60)
    entries = []
    parts = rng.randint(1, 4)
    for i in range(parts):
        n = budget // parts
        value = base64.b64encode(rng.randbytes(n * 3 // 4))[:n]  # text-like, as most secrets are
        entries.append(k8s.entry(2, f"key-{i}", value))
    return k8s.stored("Secret", head + b"".join(entries) + tail)


def secret_key(i: int) -> str:
    return f"/registry/secrets/ns-{i % 50}/secret-{i:06d}"


def _size(rng: random.Random) -> int:
    return int(math.exp(rng.uniform(math.log(MIN_VALUE), math.log(MAX_VALUE))))


def _fixed(label: str, n: int) -> bytes:
    return random.Random(f"{SEED}-{label}").randbytes(n)


AESCBC_KEY = _fixed("aescbc-key", 32)
KMS_KEK = _fixed("kms-kek", 32)
KMS_SEED = _fixed("kms-seed", 32)


# -- building ------------------------------------------------------------------------------------


def aescbc_paths(n: int) -> tuple[Path, Path]:
    return CACHE / f"check-aescbc-{n}.db", CACHE / "check-aescbc.yaml"


def build_aescbc(n: int) -> dict[str, Any]:
    from snapshot_tools.providers import aescbc, static_prefix

    snap, cfg = aescbc_paths(n)
    prefix = static_prefix("aescbc", KEY_NAME)

    def ops():
        rng = random.Random(SEED)
        for i in range(n):
            key = secret_key(i)
            ns, name = key.rsplit("/", 2)[1:]
            plain = secret_plaintext(rng, ns, name, _size(rng))
            iv = rng.randbytes(16)
            yield key, prefix + aescbc._encrypt_from_parts(AESCBC_KEY, plain, iv)

    facts = load_through_etcd(ops(), snap, seed=SEED)
    secret = base64.b64encode(AESCBC_KEY).decode()
    write_config(cfg, f"  - aescbc:\n      keys:\n      - name: {KEY_NAME}\n        secret: {secret}\n")
    return facts


def kms_paths(n: int) -> tuple[Path, Path]:
    return CACHE / f"check-kmsv2-{n}.db", CACHE / f"check-kmsv2-{n}.wrapped.json"


def build_kms(n: int) -> dict[str, Any]:
    from kms_plugin.client import KMSv2Client
    from snapshot_tools.providers import kms_prefix, kmsv2
    from tests.support.kms import TestKMSPlugin, short_dir

    snap, wrapped_file = kms_paths(n)
    # As the apiserver does: one Encrypt of a fresh seed at start-up, shared by every write.
    with short_dir() as d, TestKMSPlugin(d / "p.sock", KMS_KEK) as plugin, KMSv2Client(plugin.endpoint) as client:
        wrapped = client.encrypt(KMS_SEED)
    prefix = kms_prefix("v2", KMS_NAME)

    def ops():
        rng = random.Random(SEED + 1)
        for i in range(n):
            key = secret_key(i)
            ns, name = key.rsplit("/", 2)[1:]
            plain = secret_plaintext(rng, ns, name, _size(rng))
            payload = kmsv2._encrypt_from_parts(
                KMS_SEED, plain, key.encode(), nonce=rng.randbytes(12), info=rng.randbytes(32),
                encrypted_dek_source=wrapped.ciphertext, key_id=wrapped.key_id,
                annotations=wrapped.annotations,
            )  # fmt: skip
            yield key, prefix + payload

    facts = load_through_etcd(ops(), snap, seed=SEED)
    wrapped_file.write_text(json.dumps({"key_id": wrapped.key_id}) + "\n")
    return facts


# -- measuring -----------------------------------------------------------------------------------


def floor_once(path: Path) -> dict[str, Any]:
    """Child body: time one bare reader pass; read every aescbc body into a list (untimed);
    then time decrypt + sniff only."""
    from snapshot_tools import objects
    from snapshot_tools.providers import aescbc, static_prefix
    from snapshot_tools.snapshot import Snapshot

    prefix = static_prefix("aescbc", KEY_NAME)
    skip = len(prefix)
    with Snapshot.open(path) as snap:
        t0 = time.perf_counter()
        for _rec in snap.latest():  # the reader alone, for reference (values dropped at once)
            pass
        read_s = time.perf_counter() - t0
        bodies = [r.value[skip:] for r in snap.latest() if r.value.startswith(prefix)]
    decrypt, sniff, key = aescbc.decrypt, objects.is_kubernetes_object, AESCBC_KEY
    t0 = time.perf_counter()
    good = 0
    for body in bodies:
        good += sniff(decrypt(key, body))
    elapsed = time.perf_counter() - t0
    return {"values": len(bodies), "readable": good, "seconds": elapsed, "read_s": read_s,
            "value_bytes": sum(map(len, bodies))}  # fmt: skip


def run_floor(path: Path) -> dict[str, Any]:
    return run_child("bench.check", "--_floor", str(path))


def check_output(args: list[str]) -> dict[str, Any]:
    """One untimed run with the JSON kept, to confirm the verdicts are what the data says."""
    proc = subprocess.run([*SNAPSHOT_TOOLS, *args], capture_output=True, check=False)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"check failed (rc {proc.returncode}): {proc.stderr.decode().strip()}")
    return json.loads(proc.stdout)


def bench_aescbc(n: int, repeat: int, rebuild: bool) -> None:
    snap, cfg = aescbc_paths(n)
    if rebuild or not snap.exists() or not cfg.exists():
        print(f"building {shown(snap)} ({n} aescbc Secrets) through a real etcd ...",
              flush=True)  # fmt: skip
        facts = build_aescbc(n)
        print(f"  built in {facts['build_seconds']} s, {facts['file_size'] / 1e6:.0f} MB, "
              f"{facts['transactions']} txns, etcd {facts['etcd_version']}", flush=True)  # fmt: skip
    args = ["check", str(snap), "--config", str(cfg), "--output", "json"]
    out = check_output(args)
    s = out["summary"]
    assert s["objects"] == n and s["current"] == n, f"unexpected verdicts: {s}"
    del out
    print(f"\naescbc: {snap.name} ({snap.stat().st_size / 1e6:.0f} MB), {n} Secrets, all current "
          f"(verified); load avg before: {load_avg()}")  # fmt: skip
    runs = []
    for i in range(repeat):
        r = run_measured(args)
        if r["rc"] != 0:
            raise SystemExit(f"check exited {r['rc']}: {r['stderr']}")
        runs.append(r)
        print(f"  run {i + 1}: {r['wall_s']:.2f} s = {n / r['wall_s']:,.0f} objects/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    floors = [run_floor(snap) for _ in range(repeat)]
    fl = min(f["seconds"] for f in floors)
    best = min(r["wall_s"] for r in runs)
    med = statistics.median(r["wall_s"] for r in runs)
    rss = max(r["peak_rss_mb"] for r in runs)
    rate = n / best
    ratio = best / fl
    print("  floor runs: " + ", ".join(f"{f['seconds']:.2f} s" for f in floors)
          + f" ({floors[0]['readable']}/{floors[0]['values']} readable, "
          f"{floors[0]['value_bytes'] / 1e6:.0f} MB of bodies)")  # fmt: skip
    print(f"  best of {repeat} (median {med:.2f} s); load avg after: {load_avg()}")
    print(f"  check end to end {rate:12,.0f} objects/s   target >= {TARGET_OBJECTS_PER_S:,}  "
          f"[{verdict(rate >= TARGET_OBJECTS_PER_S)}]")  # fmt: skip
    print(f"  crypto floor     {n / fl:12,.0f} objects/s   (aescbc.decrypt + is_kubernetes_object, "
          "values preloaded)")  # fmt: skip
    print(f"  ratio            {ratio:12.2f} x          target <= {TARGET_FLOOR_RATIO:.0f} x  "
          f"[{verdict(ratio <= TARGET_FLOOR_RATIO)}]")  # fmt: skip
    print(f"  peak RSS         {rss:12,.0f} MB         target < {TARGET_RSS_MB} MB  "
          f"[{verdict(rss < TARGET_RSS_MB)}]")  # fmt: skip
    read = min(f["read_s"] for f in floors)
    print(f"  for reference: the reader alone (Snapshot.latest(), values dropped) {read:.2f} s; "
          f"check - reader - floor = {best - read - fl:.2f} s (start-up, judging, report, JSON)")


def bench_kms(n: int, repeat: int, rebuild: bool) -> None:
    from tests.support.kms import TestKMSPlugin, short_dir

    snap, wrapped_file = kms_paths(n)
    if rebuild or not snap.exists() or not wrapped_file.exists():
        print(f"building {shown(snap)} ({n} KMS v2 Secrets, one seed) through a real "
              "etcd ...", flush=True)  # fmt: skip
        facts = build_kms(n)
        print(f"  built in {facts['build_seconds']} s, {facts['file_size'] / 1e6:.0f} MB",
              flush=True)  # fmt: skip
    print(f"\nkms v2: {snap.name} ({snap.stat().st_size / 1e6:.0f} MB), {n} Secrets sharing one "
          f"seed; load avg before: {load_avg()}")  # fmt: skip
    with short_dir() as d, TestKMSPlugin(d / "p.sock", KMS_KEK) as plugin:
        cfg = d / "kmsv2.yaml"
        write_config(cfg, f"  - kms: {{apiVersion: v2, name: {KMS_NAME}, "
                           f"endpoint: '{plugin.endpoint}', timeout: 3s}}\n")  # fmt: skip
        args = ["check", str(snap), "--config", str(cfg), "--output", "json"]
        before = plugin.calls["Decrypt"]
        out = check_output(args)
        s = out["summary"]
        assert s["objects"] == n and s["current"] == n, f"unexpected verdicts: {s}"
        del out
        verify_calls = plugin.calls["Decrypt"] - before
        runs = []
        for i in range(repeat):
            before = plugin.calls["Decrypt"]
            r = run_measured(args)
            if r["rc"] != 0:
                raise SystemExit(f"check exited {r['rc']}: {r['stderr']}")
            r["unwraps"] = plugin.calls["Decrypt"] - before
            runs.append(r)
            print(f"  run {i + 1}: {r['wall_s']:.2f} s = {n / r['wall_s']:,.0f} objects/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, unwrap calls {r['unwraps']}",
                  flush=True)  # fmt: skip
    best = min(r["wall_s"] for r in runs)
    unwraps = {r["unwraps"] for r in runs} | {verify_calls}
    rate = n / best
    print(f"  check end to end {rate:12,.0f} objects/s   target >= {TARGET_OBJECTS_PER_S:,}  "
          f"[{verdict(rate >= TARGET_OBJECTS_PER_S)}]")  # fmt: skip
    print(f"  unwrap calls     {'/'.join(map(str, sorted(unwraps))):>12} per run   target == 1  "
          f"[{verdict(unwraps == {1})}]")  # fmt: skip
    print(f"  peak RSS         {max(r['peak_rss_mb'] for r in runs):12,.0f} MB")


def profile(n: int, top: int) -> None:
    """cProfile run_check + JSON rendering in this process (build first)."""
    import cProfile

    from snapshot_tools.check import CheckOptions, run_check
    from snapshot_tools.cli.check import write_json
    from snapshot_tools.unwrap import KeyAccess

    snap, cfg = aescbc_paths(n)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    report = run_check(CheckOptions(snapshot=str(snap), access=KeyAccess(configs=(str(cfg),))))
    t1 = time.perf_counter()
    with open(os.devnull, "w") as null:
        write_json(report, null)
    prof.disable()
    t2 = time.perf_counter()
    print(f"(profiled) run_check {t1 - t0:.2f} s, JSON {t2 - t1:.2f} s")
    print_profile(prof, top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.check", description=__doc__.splitlines()[0])
    ap.add_argument("--secrets", type=int, default=100_000)
    ap.add_argument("--kms-secrets", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs, each in a fresh process")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--only", choices=("aescbc", "kms"))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--_floor", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._floor is not None:
        print(json.dumps(floor_once(args._floor)))
        return 0
    if args.profile:
        profile(args.secrets, 30)
        return 0
    if args.build_only:
        if args.only != "kms" and (args.rebuild or not aescbc_paths(args.secrets)[0].exists()):
            print(build_aescbc(args.secrets))
        if args.only != "aescbc" and (args.rebuild or not kms_paths(args.kms_secrets)[0].exists()):
            print(build_kms(args.kms_secrets))
        return 0
    print(machine())
    if args.only != "kms":
        bench_aescbc(args.secrets, args.repeat, args.rebuild)
    if args.only != "aescbc":
        bench_kms(args.kms_secrets, args.repeat, args.rebuild)
    return 0


if __name__ == "__main__":
    sys.exit(main())

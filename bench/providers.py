"""Benchmark: stored-value decryption + Kubernetes sniffing per provider, objects per second.

Values are real Secret plaintexts from the a-identity fixture (kube-apiserver v1.36.2 stored them
unencrypted; ~0.3-1 KiB, plus one 100 KiB Secret) encrypted under each provider, and a synthetic
set shaped like ``bench.scan``'s (1-20 KiB, log-uniform). One thread; figures only, no assertions.

Usage (from the repository root): python -m bench.providers [--seconds 2]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import time

from snapshot_tools import objects
from snapshot_tools.providers import aescbc, aesgcm, kmsv2, secretbox
from tests.support.fixtures import FIXTURES

FIXTURE = FIXTURES / "a-identity"


def _plaintexts() -> list[bytes]:
    raw = json.loads((FIXTURE / "etcd-raw-values.json").read_text())["values"]
    return [base64.b64decode(v["value_b64"]) for v in raw if "/secrets/" in v["etcd_key"]]


def _synthetic(n: int) -> list[bytes]:
    rng = random.Random(20240601)
    template = _plaintexts()[0]
    out = []
    for _ in range(n):
        size = int(math.exp(rng.uniform(math.log(1024), math.log(20 * 1024))))
        out.append(template + b"\x00" * max(0, size - len(template)))  # sniffs as an object
    return out


def _rate(fn, items: list, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for item in items:
            fn(item)
        done += len(items)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.providers")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    key, aad = os.urandom(32), b"/registry/secrets/default/bench"
    sets = {"fixture secrets": _plaintexts(), "1-20 KiB synthetic": _synthetic(500)}
    for label, plaintexts in sets.items():
        mean = sum(map(len, plaintexts)) / len(plaintexts)
        print(f"{label}: {len(plaintexts)} values, mean {mean:.0f} bytes")
        cbc = [aescbc.encrypt(key, p) for p in plaintexts]
        gcm = [aesgcm.encrypt(key, p, aad) for p in plaintexts]
        box = [secretbox.encrypt(key, p) for p in plaintexts]
        kms = [
            kmsv2.encrypt(key, p, aad, encrypted_dek_source=b"w" * 60, key_id="k")
            for p in plaintexts
        ]
        cases = {
            "aescbc decrypt+sniff": (
                lambda b: objects.is_kubernetes_object(aescbc.decrypt(key, b)),
                cbc,
            ),
            "aesgcm decrypt": (lambda b: aesgcm.decrypt(key, b, aad), gcm),
            "secretbox decrypt": (lambda b: secretbox.decrypt(key, b), box),
            "kmsv2 parse+decrypt": (lambda b: kmsv2.decrypt(kmsv2.parse(b), key, aad), kms),
            "sniff only": (objects.is_kubernetes_object, plaintexts),
        }
        for name, (fn, items) in cases.items():
            print(f"  {name:22s} {_rate(fn, items, args.seconds):>12,.0f} objects/s")


if __name__ == "__main__":
    main()

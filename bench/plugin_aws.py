"""Benchmark the plugin on the AWS KMS backend (a local moto server), with and without --local-kek.

Starts moto on 127.0.0.1, creates a key, then for each mode runs ``kms-plugin serve --aws-key-id``
(client-side rate limit off, probes every hour so they do not count) and drives Encrypt and
Decrypt as ``bench.plugin`` does. Prints calls/s, p50/p99 at the client and the remote AWS
calls (Encrypt+Decrypt, from the plugin's ``kms_plugin_remote_calls_total``) per 1,000 plugin
calls. moto answers in milliseconds on loopback; real AWS adds a network round trip per remote
call, which only the direct mode pays on every call.

Usage (from the repository root):
    python -m bench.plugin_aws [--duration 3] [--concurrency 1,8]

Figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from bench.common import KMS_PLUGIN
from bench.plugin import run_cell, summarise
from tests.support.aws import REGION, moto_server
from tests.support.etcd import free_ports
from tests.support.kms import short_dir

_REMOTE = re.compile(
    r'^kms_plugin_remote_calls_total\{operation="(Encrypt|Decrypt)",outcome="ok"\} (\S+)$', re.MULTILINE
)


def remote_calls(health: str) -> float:
    text = urllib.request.urlopen(f"http://{health}/metrics", timeout=5).read().decode()
    return sum(float(v) for _, v in _REMOTE.findall(text))


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plugin_aws", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--client-procs", type=int, default=2)
    args = ap.parse_args()

    # moto with dummy credentials in the environment, which the plugin processes inherit.
    with moto_server() as moto, short_dir() as tmp:
        url = moto.url
        arn = moto.create_key()
        print(f"AWS KMS on moto ({url}); {args.duration:g}s per cell; cores: {os.cpu_count()}")
        print(f"{'mode':<10} {'conc':>4} {'method':<8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'remote/1k':>9} {'errors':>6}")
        for mode, flag in (("direct", "--no-local-kek"), ("local-kek", "--local-kek")):
            sock = tmp / f"{mode}.sock"
            health = f"127.0.0.1:{free_ports(1)[0]}"
            server = subprocess.Popen([
                *KMS_PLUGIN, "serve", "--listen", f"unix://{sock}", "--aws-key-id", arn,
                "--aws-endpoint-url", url, "--aws-region", REGION, "--aws-max-qps", "0",
                "--aws-max-in-flight", "16", "--probe-interval", "3600", "--health-addr", health,
                "--log-level", "error", flag,
            ])
            for _ in range(400):
                if sock.exists():
                    break
                time.sleep(0.05)
            time.sleep(0.3)
            for conc in (int(c) for c in args.concurrency.split(",")):
                for method in ("Encrypt", "Decrypt"):
                    before = remote_calls(health)
                    lat, errors = run_cell(f"unix://{sock}", method, conc, args.duration, args.client_procs)
                    remote = remote_calls(health) - before
                    r = summarise(lat, errors, args.duration)
                    per_k = remote / max(1, r["calls"]) * 1000
                    print(f"{mode:<10} {conc:>4} {method:<8} {r['rate']:>9.0f} {r['p50']:>8.3f} "
                          f"{r['p99']:>8.3f} {per_k:>9.2f} {r['errors']:>6}", flush=True)
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

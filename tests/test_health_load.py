"""Idle TCP connections to the health port never starve the gRPC service (issue 9 item 5).

The real plugin runs as a subprocess with RLIMIT_NOFILE lowered to 256, so a few hundred idle
connections are more than it has descriptors for. Before the health server was bounded, each
idle connection held a thread and a descriptor forever: the plugin ran out of descriptors and
could no longer accept gRPC connections on its unix socket, nor health checks.
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import signal
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import pytest

from kms_plugin.client import KMSv2Client
from tests.support.cli import KMS_PLUGIN, plugin_cli
from tests.support.kms import http_get, short_dir

if TYPE_CHECKING:
    from pathlib import Path

NOFILE = 256
IDLE_CONNECTIONS = 600  # well past NOFILE


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _start(d: Path) -> tuple[subprocess.Popen[bytes], int, list[str]]:
    """The plugin with health on an ephemeral port; returns (process, health port, stderr lines)."""
    proc = subprocess.Popen(
        [*KMS_PLUGIN, "serve", "--listen", f"unix://{d}/p.sock", "--keyring", str(d / "k.json"),
         "--health-addr", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_limit_fds,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    port = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if not line:
            raise AssertionError(f"plugin exited {proc.wait()}: {''.join(lines)}")
        lines.append(line)
        found = re.search(r"serving KMS v2.*health on http://127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
            break
    assert port, "".join(lines)
    # Keep draining stderr so the plugin never blocks on a full pipe.
    threading.Thread(target=lambda: lines.extend(x.decode() for x in proc.stderr), daemon=True).start()  # type: ignore[union-attr]
    return proc, port, lines


def _open_idle(port: int, count: int) -> list[socket.socket]:
    """Connect ``count`` times and send nothing; stop early once the plugin stops accepting."""
    conns: list[socket.socket] = []
    failures = 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.5)  # a dropped SYN is resent after 1 s
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            failures += 1
            if failures >= 3:  # the accept queue stays full: nobody accepts any more
                break
            continue
        failures = 0
        conns.append(s)
    return conns


@pytest.mark.slow
def test_idle_health_connections_do_not_starve_grpc() -> None:
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        proc, port, lines = _start(d)
        idle: list[socket.socket] = []
        try:
            idle = _open_idle(port, IDLE_CONNECTIONS)
            assert len(idle) > NOFILE // 2, len(idle)
            time.sleep(0.5)  # let the plugin accept what it will

            # The first gRPC connection of this process: the plugin must accept it now.
            seed = os.urandom(32)
            started = time.monotonic()
            with KMSv2Client(f"unix://{d}/p.sock", timeout=5) as c:
                enc = c.encrypt(seed)
                assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
                assert c.status().healthz == "ok"
            assert time.monotonic() - started < 5

            # A fresh health connection answers, at worst once the idle ones have timed out.
            deadline = time.monotonic() + 15
            while True:
                try:
                    answer = http_get("127.0.0.1", port, timeout=2)
                    break
                except (OSError, http.client.HTTPException):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert answer == (200, "ok\n")
            assert proc.poll() is None, "".join(lines)
        finally:
            for s in idle:
                s.close()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
        assert rc == 0, "".join(lines)
        assert "Traceback" not in "".join(lines)

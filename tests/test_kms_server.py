"""``kms-plugin serve`` (kms_plugin/server.py) as a subprocess: socket lifecycle, signals, drain,
bad keyrings; and abstract sockets, served only with ``--allow-abstract-socket`` (issue 9 item 7).

An abstract socket has no file mode: any process in the network namespace could call
Encrypt/Decrypt. The client side (``KMSv2Client``, used by snapshot_tools) may still connect.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from kms_plugin.client import KMSv2Client
from kms_plugin.endpoint import parse_unix_endpoint
from kms_plugin.errors import ConfigError, PluginUnavailable
from kms_plugin.keks.local import Keyring
from kms_plugin.server import check_serving_endpoint
from tests.support.cli import KMS_PLUGIN, plugin_cli
from tests.support.kms import file_mode, short_dir, start_serve, wait_for_socket

if TYPE_CHECKING:
    from pathlib import Path


def _serve_args(d: Path, *extra: str) -> list[str]:
    return ["--listen", f"unix://{d}/p.sock", "--keyring", str(d / "k.json"),
            "--health-addr", "off", *extra]


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err.decode()


def test_mode_honoured_and_socket_removed_on_sigterm() -> None:
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        proc = start_serve(*_serve_args(d, "--socket-mode", "0660", "--log-format", "json"))
        wait_for_socket(d / "p.sock", proc)
        assert file_mode(d / "p.sock") == 0o660
        rc, err = _stop(proc)
        assert rc == 0
        assert not (d / "p.sock").exists()
        lines = [json.loads(line) for line in err.splitlines()]  # every line is JSON
        assert any("SIGTERM" in rec["msg"] for rec in lines)
        assert "Traceback" not in err


def test_default_mode_0600_and_sigint() -> None:
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        proc = start_serve(*_serve_args(d))
        wait_for_socket(d / "p.sock", proc)
        assert file_mode(d / "p.sock") == 0o600
        rc, err = _stop(proc, signal.SIGINT)
        assert rc == 0, err
        assert not (d / "p.sock").exists()


def test_stale_socket_replaced_and_live_socket_refused() -> None:
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(d / "p.sock"))  # bound, never listening: what a killed process leaves
        stale.close()
        proc = start_serve(*_serve_args(d))
        try:
            # Status answering on that path proves the refused (stale) socket was replaced.
            wait_for_socket(d / "p.sock", proc)
            live_inode = os.stat(d / "p.sock").st_ino
            second = subprocess.run(
                [*KMS_PLUGIN, "serve", *_serve_args(d)], capture_output=True, timeout=60
            )
            assert second.returncode == 2
            err = second.stderr.decode().strip()
            assert len(err.splitlines()) == 1 and "live listener" in err
            assert os.stat(d / "p.sock").st_ino == live_inode  # not stolen
            with KMSv2Client(f"unix://{d}/p.sock") as c:
                assert c.status().healthz == "ok"
        finally:
            rc, _ = _stop(proc)
        assert rc == 0


def test_a_non_socket_path_is_never_replaced() -> None:
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        (d / "p.sock").write_text("precious")
        res = subprocess.run([*KMS_PLUGIN, "serve", *_serve_args(d)], capture_output=True, timeout=60)
        assert res.returncode == 2
        assert "is not a socket" in res.stderr.decode()
        assert (d / "p.sock").read_text() == "precious"


# ``serve``'s signal handling and drain around a backend whose wraps take 1.5 s each.
_SLOW_SERVE = """
import sys, time
from pathlib import Path
from kms_plugin.server import PluginServer, ServeConfig, run_until_stopped

class Slow:
    def __init__(self, inner):
        self.inner = inner
    def __getattr__(self, name):
        return getattr(self.inner, name)
    def wrap(self, plaintext):
        time.sleep(1.5)
        return self.inner.wrap(plaintext)

def make():
    d = Path(sys.argv[1])
    server = PluginServer(ServeConfig(listen=f"unix://{d}/p.sock", keyring=d / "k.json",
                                      health_addr="off", drain_timeout=20))
    server.service.backend = Slow(server.service.backend)
    return server

sys.exit(run_until_stopped(make))
"""


def test_in_flight_calls_finish_during_drain() -> None:
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        keyring = Keyring.load(d / "k.json")
        proc = subprocess.Popen(
            [sys.executable, "-c", _SLOW_SERVE, str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        wait_for_socket(d / "p.sock", proc)
        results: list[object] = []
        lock = threading.Lock()

        def call(seed: bytes) -> None:
            try:
                with KMSv2Client(f"unix://{d}/p.sock", timeout=30) as c:
                    out: object = (seed, c.encrypt(seed))
            except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                out = exc
            with lock:
                results.append(out)

        threads = [threading.Thread(target=call, args=(os.urandom(32),)) for _ in range(3)]
        for t in threads:
            t.start()
        # Each call sleeps 1.5 s inside the server; SIGTERM lands while all three are in flight.
        threading.Event().wait(0.7)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        assert len(results) == 3
        for result in results:
            assert not isinstance(result, Exception), result
            seed, enc = result  # type: ignore[misc]
            assert keyring.unwrap(enc.ciphertext, enc.key_id) == seed
        assert not (d / "p.sock").exists()
        with pytest.raises(PluginUnavailable):
            KMSv2Client(f"unix://{d}/p.sock", timeout=1).status()


def _bad_keyring(d: Path, kind: str) -> None:
    path = d / "k.json"
    plugin_cli("keyring", "init", str(path))
    doc = json.loads(path.read_text())
    if kind == "world-readable":
        path.chmod(0o644)
        return
    if kind == "malformed":
        text = path.read_text()[:-5]
    elif kind == "no-active":
        doc["keks"][0]["state"] = "decrypt-only"
        text = json.dumps(doc)
    elif kind == "two-active":
        doc["keks"].append({**doc["keks"][0], "id": "second"})
        text = json.dumps(doc)
    else:
        raise AssertionError(kind)
    path.write_text(text)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("world-readable", "mode 0644 lets group or others read or write it"),
        ("malformed", "malformed JSON"),
        ("no-active", "no active KEK"),
        ("two-active", "2 active KEKs"),
    ],
)
def test_bad_keyring_refuses_to_start(kind: str, message: str) -> None:
    with short_dir() as d:
        _bad_keyring(d, kind)
        res = subprocess.run([*KMS_PLUGIN, "serve", *_serve_args(d)], capture_output=True, timeout=60)
        err = res.stderr.decode()
        assert res.returncode == 2
        assert err.count("\n") == 1 and err.startswith("kms-plugin: error: keyring ")
        assert message in err
        assert "Traceback" not in err
        assert not (d / "p.sock").exists()


# -- abstract sockets -----------------------------------------------------------------------------


def _name() -> str:
    return f"kms-plugin-abstract-{os.getpid()}-{time.monotonic_ns()}"


def test_check_serving_endpoint() -> None:
    check_serving_endpoint(parse_unix_endpoint("unix:///run/kms.sock"), allow_abstract=False)
    check_serving_endpoint(parse_unix_endpoint("unix:///@kms"), allow_abstract=True)
    with pytest.raises(ConfigError, match="--allow-abstract-socket"):
        check_serving_endpoint(parse_unix_endpoint("unix:///@kms"), allow_abstract=False)


def test_abstract_socket_refused_without_the_flag() -> None:
    name = _name()
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        res = subprocess.run(
            [*KMS_PLUGIN, "serve", "--listen", f"unix:///@{name}", "--keyring", str(d / "k.json"),
             "--health-addr", "off"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        err = res.stderr.decode()
        assert res.returncode == 2, err
        assert err.count("\n") == 1 and err.startswith("kms-plugin: error: --listen unix:///@")
        assert "abstract socket" in err and "no file mode" in err
        assert "--allow-abstract-socket" in err
        with pytest.raises(PluginUnavailable):  # nothing was bound
            KMSv2Client(f"unix:///@{name}", timeout=1).status()


def test_abstract_socket_served_with_the_flag_and_a_warning() -> None:
    name = _name()
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        proc = start_serve("--listen", f"unix:///@{name}", "--keyring", str(d / "k.json"),
                           "--health-addr", "off", "--allow-abstract-socket")
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.communicate()[1].decode()
                try:
                    with KMSv2Client(f"unix:///@{name}", timeout=1) as c:
                        st = c.status()
                    break
                except PluginUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            assert (st.version, st.healthz) == ("v2", "ok")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err_bytes = proc.communicate(timeout=30)
        err = err_bytes.decode()
        assert proc.returncode == 0, err
        warnings = [line for line in err.splitlines() if "WARNING" in line]
        assert any("abstract socket" in line and "no file mode" in line for line in warnings), err

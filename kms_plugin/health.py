"""Health of the plugin: a cached background round-trip probe and the HTTP endpoints.

``/livez`` fails only on problems a restart could fix (a broken round-trip with a healthy
keyring, a remote KMS failing for transient reasons); user-caused ones (a bad keyring file, a
disabled key, denied access) and throttling fail ``/healthz`` and ``/readyz`` only, so the
control plane is not restarted for them. A backend with its own ``probe()`` (a remote KMS) is
probed through it: the probe, not the request path, talks to the remote. ``/readyz`` also fails while
the server drains. Request paths never wait on a probe: they read the cached result.

References: aws-encryption-provider ``pkg/plugin/shared_health_check.go``; STYLE.md item 10.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kms_plugin.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from kms_plugin.keks.base import KEKBackend
    from kms_plugin.metrics import PluginMetrics

log = logging.getLogger("kms_plugin.health")


@dataclass(frozen=True)
class Probe:
    ok: bool
    reason: str = "ok"
    at: float = 0.0


class HealthMonitor:
    """Runs an Encrypt+Decrypt round trip through the backend every ``interval`` seconds."""

    def __init__(
        self,
        backend: KEKBackend,
        interval: float = 10.0,
        on_probe: Callable[[Probe], None] | None = None,
    ) -> None:
        self.backend = backend
        self.interval = interval
        self.on_probe = on_probe
        self.last_probe = Probe(True, "ok", 0.0)
        self.draining = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe(self) -> Probe:
        remote_probe = getattr(self.backend, "probe", None)
        if callable(remote_probe):
            st = remote_probe()  # caches its verdict in the backend's status(); never raises
            return self._record(Probe(st.healthy, st.reason, time.time()))
        seed = os.urandom(32)
        try:
            ciphertext, key_id, annotations = self.backend.wrap(seed)
            ok = self.backend.unwrap(ciphertext, key_id, annotations) == seed
            result = Probe(ok, "ok" if ok else "round-trip returned a different value", time.time())
        except Exception as exc:  # noqa: BLE001 - any failure is a health fact
            result = Probe(False, f"round-trip failed: {type(exc).__name__}: {exc}", time.time())
        return self._record(result)

    def _record(self, result: Probe) -> Probe:
        if result.ok != self.last_probe.ok:
            log.log(logging.INFO if result.ok else logging.WARNING, "health probe: %s", result.reason)
        self.last_probe = result
        if self.on_probe is not None:
            self.on_probe(result)
        return result

    def start(self) -> None:
        self.probe()
        self._thread = threading.Thread(target=self._loop, name="health-probe", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.probe()

    def stop(self) -> None:
        self._stop.set()

    def check(self, kind: str) -> tuple[bool, str]:
        """The verdict for ``healthz``, ``readyz`` or ``livez``."""
        if kind == "readyz" and self.draining:
            return False, "draining"
        st = self.backend.status()
        probe = self.last_probe
        if kind == "livez":
            # Only failures not explained by user-caused backend problems warrant a restart.
            if not st.healthy and not st.user_caused:
                return False, st.reason
            if not probe.ok and st.healthy:
                return False, probe.reason
            return True, "ok"
        if not st.healthy:
            return False, st.reason
        if not probe.ok:
            return False, probe.reason
        return True, "ok"


def parse_health_addr(addr: str) -> tuple[str, int] | None:
    """``host:port`` -> tuple; ``off`` or empty -> None (health server disabled)."""
    if addr in ("", "off", "none"):
        return None
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--health-addr {addr!r} must be HOST:PORT (e.g. 127.0.0.1:8787) or off")
    return host, int(port)


class HealthServer:
    """A small threaded HTTP server for /healthz /readyz /livez /metrics."""

    def __init__(self, addr: tuple[str, int], monitor: HealthMonitor, metrics: PluginMetrics) -> None:
        handler = _make_handler(monitor, metrics)
        try:
            self.httpd = ThreadingHTTPServer(addr, handler)
        except OSError as exc:
            raise ConfigError(
                f"--health-addr {addr[0]}:{addr[1]}: cannot listen: {exc.strerror}"
            ) from None
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_handler(monitor: HealthMonitor, metrics: PluginMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "kms-plugin"

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz", "/livez"):
                ok, reason = monitor.check(path[1:])
                self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            # Probes every few seconds would drown the log.
            return

    return Handler

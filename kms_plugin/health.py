"""Health of the plugin: a cached background round-trip probe and the HTTP endpoints.

``/livez`` fails only on problems a restart could fix (a broken round-trip with a healthy
keyring, a remote KMS failing for transient reasons); user-caused ones (a bad keyring file, a
disabled key, denied access) and throttling fail ``/healthz`` and ``/readyz`` only, so the
control plane is not restarted for them. A backend with its own ``probe()`` (a remote KMS) is
probed through it: the probe, not the request path, talks to the remote. ``/readyz`` also fails while
the server drains. Request paths never wait on a probe: they read the cached result.

The HTTP server is exposed to every local user (and every hostNetwork pod), so it is bounded
(:class:`HealthLimits`): at most 32 connections are served at once, each by its own thread; past
that a connection is accepted and closed at once, never queued. A connection must send its request
line and headers (8 KiB at most) within 3 s of silence and finish within 5 s, then it is shut down.
So idle or slow clients hold at most 32 threads and 32 descriptors, and can never eat the
descriptors or threads the gRPC server needs on the unix socket.

References: aws-encryption-provider ``pkg/plugin/shared_health_check.go``; STYLE.md item 10;
CPython ``socketserver.ThreadingMixIn`` (bounded here).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kms_plugin.errors import ConfigError, RequestTooLarge

if TYPE_CHECKING:
    from collections.abc import Callable
    from socketserver import BaseRequestHandler

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


@dataclass(frozen=True)
class HealthLimits:
    """Bounds of the health HTTP server; the defaults are what ``serve`` uses.

    ``max_connections``: a kubelet probes three paths every few seconds and a Prometheus scrape
    adds one, so a handful are ever legitimately open at once; 32 leaves room for slow scrapes
    while capping the threads and descriptors any client can hold (one of each per connection).
    ``read_timeout``: the socket timeout of every read and write on a connection; a client that
    goes silent this long is dropped (kubelet's own probe timeout defaults to 1 s).
    ``deadline``: the whole exchange, accept to last byte, so a client dribbling one byte per
    ``read_timeout`` cannot hold a slot either.
    ``max_request_bytes``: request line plus headers; a probe sends ~150 bytes. Bodies are never
    read, and HTTP/1.0 closes the connection after one response.
    ``backlog``: the kernel's accept queue (``listen``); queued connections hold no descriptor
    or thread of ours.
    """

    max_connections: int = 32
    read_timeout: float = 3.0
    deadline: float = 5.0
    max_request_bytes: int = 8 * 1024
    backlog: int = 64


_REFUSED_LOG_INTERVAL = 60.0


class _BudgetReader(io.BufferedIOBase):
    """``rfile`` with a byte budget for everything ``BaseHTTPRequestHandler`` reads (lines only:
    the handler serves GET, so nothing else is read)."""

    def __init__(self, raw: io.BufferedIOBase, budget: int) -> None:
        super().__init__()
        self._raw = raw
        self._budget = budget
        self.remaining = budget

    def readline(self, size: int | None = -1) -> bytes:
        cap = self.remaining + 1 if size is None or size < 0 else min(size, self.remaining + 1)
        line = self._raw.readline(cap)
        self.remaining -= len(line)
        if self.remaining < 0:
            raise RequestTooLarge(f"request line and headers exceed {self._budget} bytes")
        return line

    def close(self) -> None:
        self._raw.close()
        super().close()


class _BoundedHTTPServer(HTTPServer):
    """An HTTP server with one thread per connection, at most ``max_connections`` of them.

    Past the cap a connection is accepted and closed at once (its descriptor lives for
    microseconds), never queued behind a thread. A per-connection deadline is enforced from
    the accept loop (``service_actions`` runs every ``poll_interval``) by shutting the socket
    down, which wakes its handler thread; the handler thread alone closes it.
    """

    def __init__(
        self,
        addr: tuple[str, int],
        handler: type[BaseRequestHandler],
        limits: HealthLimits,
    ) -> None:
        self.limits = limits
        self.request_queue_size = limits.backlog
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._live: dict[socket.socket, float] = {}
        self._live_lock = threading.Lock()
        self.refused = 0
        self._refused_logged = 0
        self._refused_log_at = 0.0
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        with self._live_lock:
            self._live[request] = time.monotonic() + self.limits.deadline
        thread = threading.Thread(
            target=self._serve_one, args=(request, client_address), name="health-conn", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # cannot start a thread: drop this connection, keep serving
            self._forget(request)

    def _serve_one(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            # Timeouts, resets and oversized requests are the client's problem; the default
            # handle_error prints a traceback per connection, which would let clients flood
            # the log.
            log.debug("health: connection from %s dropped", client_address, exc_info=True)
        finally:
            self._forget(request)

    def _forget(self, request: socket.socket) -> None:
        # Unregister before closing, under the lock the reaper shuts sockets down with: the
        # reaper can never act on a descriptor number that was closed and reused.
        with self._live_lock:
            self._live.pop(request, None)
        self.shutdown_request(request)
        self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        with self._live_lock:  # wake every handler thread; each closes its own socket
            for request in self._live:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._live_lock:
            for request, deadline in self._live.items():
                if deadline <= now:
                    with contextlib.suppress(OSError):
                        request.shutdown(socket.SHUT_RDWR)
        if self.refused != self._refused_logged and now >= self._refused_log_at:
            log.warning(
                "health: %d connection(s) closed unserved so far: %d already open (the cap)",
                self.refused,
                self.limits.max_connections,
            )
            self._refused_logged = self.refused
            self._refused_log_at = now + _REFUSED_LOG_INTERVAL


class HealthServer:
    """A small bounded HTTP server for /healthz /readyz /livez /metrics (see :class:`HealthLimits`)."""

    def __init__(
        self,
        addr: tuple[str, int],
        monitor: HealthMonitor,
        metrics: PluginMetrics,
        limits: HealthLimits | None = None,
    ) -> None:
        self.limits = limits or HealthLimits()
        handler = _make_handler(monitor, metrics, self.limits)
        try:
            self.httpd = _BoundedHTTPServer(addr, handler, self.limits)
        except OSError as exc:
            raise ConfigError(
                f"--health-addr {addr[0]}:{addr[1]}: cannot listen: {exc.strerror}"
            ) from None
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


def _make_handler(
    monitor: HealthMonitor, metrics: PluginMetrics, limits: HealthLimits
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "kms-plugin"
        timeout = limits.read_timeout  # StreamRequestHandler: settimeout() on the connection

        def setup(self) -> None:
            super().setup()
            self.rfile = _BudgetReader(self.rfile, limits.max_request_bytes)

        def do_GET(self) -> None:
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

        def log_message(self, format: str, *args: object) -> None:
            # Probes every few seconds would drown the log.
            return

    return Handler

"""The health HTTP server's bounds (issue 9 item 5), each with small limits so tests stay fast."""

from __future__ import annotations

import http.client
import socket
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from kms_plugin.health import HealthLimits, HealthServer
from tests.support.kms import http_get, served, short_dir

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def health(limits: HealthLimits) -> Iterator[HealthServer]:
    """A health server with ``limits`` in front of a real in-process plugin."""
    with short_dir() as d, served(d) as plugin:
        server = HealthServer(("127.0.0.1", 0), plugin.monitor, plugin.metrics, limits)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def _connect(server: HealthServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def _get(server: HealthServer, path: str = "/healthz") -> tuple[int, str]:
    return http_get(server.host, server.port, path)


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes ``sock`` (reads and discards whatever it sends first)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_defaults_are_the_documented_ones() -> None:
    limits = HealthLimits()
    assert (limits.max_connections, limits.read_timeout, limits.deadline) == (32, 3.0, 5.0)
    assert limits.max_request_bytes == 8 * 1024


def test_past_the_cap_connections_are_closed_at_once_then_served_again() -> None:
    with health(HealthLimits(max_connections=3, read_timeout=30, deadline=60)) as server:
        idle = [_connect(server) for _ in range(3)]
        time.sleep(0.3)  # all three accepted and holding a slot
        extra = _connect(server)
        assert _closed_within(extra, 5) < 2  # closed unserved, not queued
        extra.close()
        for s in idle:
            s.close()
        deadline = time.monotonic() + 5
        while True:  # slots come back as the handler threads see EOF
            try:
                assert _get(server) == (200, "ok\n")
                break
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert server.httpd.refused >= 1


def test_an_idle_connection_is_dropped_after_the_read_timeout() -> None:
    with health(HealthLimits(read_timeout=0.5, deadline=30)) as server:
        s = _connect(server)
        took = _closed_within(s, 10)
        s.close()
        assert 0.3 < took < 3


def test_a_dribbling_client_is_dropped_at_the_deadline() -> None:
    # Each byte arrives within the read timeout; only the overall deadline stops it.
    with health(HealthLimits(read_timeout=1.0, deadline=1.5)) as server:
        s = _connect(server)
        started = time.monotonic()
        closed = False
        for byte in b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"a" * 100:
            try:
                s.send(bytes([byte]))
            except OSError:
                closed = True
                break
            s.settimeout(0.3)
            try:
                if s.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        s.close()
        assert closed
        assert time.monotonic() - started < 4


@pytest.mark.parametrize("where", ["request line", "headers"])
def test_oversized_requests_are_refused(where: str) -> None:
    with health(HealthLimits(max_request_bytes=1024)) as server:
        s = _connect(server)
        if where == "request line":
            s.sendall(b"GET /healthz?" + b"a" * 2000 + b" HTTP/1.0\r\n\r\n")
        else:
            s.sendall(b"GET /healthz HTTP/1.0\r\n" + b"X-Pad: aaaaaaaa\r\n" * 100 + b"\r\n")
        s.settimeout(5)
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
        s.close()
        assert not answer.startswith(b"HTTP/1.0 200")
        assert answer == b"" or answer.startswith(b"HTTP/1.0 431")
        assert _get(server) == (200, "ok\n")  # and the server goes on


def test_a_normal_request_fits_the_limits() -> None:
    with health(HealthLimits()) as server:
        assert _get(server, "/livez") == (200, "ok\n")
        status, body = _get(server, "/metrics")
        assert status == 200 and "kms" in body

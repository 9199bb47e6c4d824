"""AWS KMS for the tests: a real moto server over HTTP, and a fault-injecting proxy in front of it.

* :func:`moto_server` (the session fixture ``moto_kms``): ``moto.server.ThreadedMotoServer`` on
  127.0.0.1 with a free port and dummy credentials in the environment (nothing reads real AWS
  configuration).
* :class:`FaultProxy`: a small HTTP server on 127.0.0.1 between boto3 and moto. It counts calls
  by KMS operation (``X-Amz-Target``) and can delay, drop the connection, or answer an AWS error
  (``ThrottlingException`` JSON by default) for chosen operations, a number of times or until
  cleared (the fixture ``proxy``).
* :func:`served_aws`: our plugin in-process, backed by AWS KMS at a URL (moto or the proxy).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from kms_plugin.keks.awsclient import AwsSettings
from tests.support.kms import serve_config, serving

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from kms_plugin.server import PluginServer

REGION = "us-east-1"
_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class MotoKms:
    """A running moto server; ``client()`` talks to it directly (test setup, never via proxy)."""

    url: str

    def client(self) -> Any:
        return boto3.client("kms", endpoint_url=self.url, region_name=REGION)

    def create_key(self, alias: str | None = None) -> str:
        """A new symmetric key (optionally with ``alias/<alias>``); returns its ARN."""
        kms = self.client()
        meta = kms.create_key(Description="kms-plugin test key")["KeyMetadata"]
        if alias:
            kms.create_alias(AliasName=f"alias/{alias}", TargetKeyId=meta["KeyId"])
        return str(meta["Arn"])


@contextmanager
def moto_server() -> Iterator[MotoKms]:
    """A moto server on 127.0.0.1, with dummy AWS credentials in the environment meanwhile."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield MotoKms(f"http://{host}:{port}")
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Fault:
    kind: str  # "delay", "drop" or "error"
    ops: frozenset[str] | None = None  # None: every operation
    delay: float = 0.0
    code: str = "ThrottlingException"
    status: int = 400
    times: int | None = None  # None: until cleared


@dataclass
class FaultProxy:
    """Forward KMS calls to ``upstream``; count them; inject faults."""

    upstream: str
    counts: Counter[str] = field(default_factory=Counter)
    faulted: Counter[str] = field(default_factory=Counter)
    fault: Fault | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def set(self, kind: str, *ops: str, **kw: Any) -> None:
        with self._lock:
            self.fault = Fault(kind, frozenset(ops) if ops else None, **kw)

    def clear(self) -> None:
        with self._lock:
            self.fault = None

    def count(self, *ops: str) -> int:
        with self._lock:
            return sum(self.counts[o] for o in ops)

    def _take_fault(self, op: str) -> Fault | None:
        with self._lock:
            self.counts[op] += 1
            f = self.fault
            if f is None or (f.ops is not None and op not in f.ops):
                return None
            if f.times is not None:
                f.times -= 1
                if f.times <= 0:
                    self.fault = None
            self.faulted[op] += 1
            return f

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    up_host, _, up_port = proxy.upstream.removeprefix("http://").partition(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            op = self.headers.get("X-Amz-Target", "?").rpartition(".")[2]
            fault = proxy._take_fault(op)
            if fault is not None and fault.kind in ("delay", "drop"):
                time.sleep(fault.delay)
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                return
            if fault is not None and fault.kind == "error":
                doc = {"__type": fault.code, "message": f"injected {fault.code}"}
                self._answer(fault.status, json.dumps(doc).encode(), {"Content-Type": "application/x-amz-json-1.1"})
                return
            conn = http.client.HTTPConnection(up_host, int(up_port), timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request("POST", self.path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
                keep = {k: v for k, v in resp.getheaders() if k.lower() in ("content-type", "x-amzn-requestid")}
                self._answer(resp.status, data, keep)
            finally:
                conn.close()

        def _answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (its timeout): expected here

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


@contextmanager
def fault_proxy(moto: MotoKms) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto.url)
    try:
        yield proxy
    finally:
        proxy.close()


@contextmanager
def served_aws(
    directory: Path,
    endpoint_url: str,
    key: str,
    *,
    context: dict[str, str] | None = None,
    call_timeout: float = 2.5,
    max_attempts: int = 3,
    **overrides: Any,
) -> Iterator[PluginServer]:
    """An in-process plugin on ``directory/p.sock`` backed by AWS KMS at ``endpoint_url``."""
    settings = AwsSettings(
        key=key,
        region=REGION,
        endpoint_url=endpoint_url,
        encryption_context=context or {},
        call_timeout=call_timeout,
        max_attempts=max_attempts,
        max_qps=0,
    )
    with serving(serve_config(directory, aws=settings, **overrides)) as server:
        yield server


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)

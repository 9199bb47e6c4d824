"""Snapshots as K3s/RKE2 store them, for the SNAPSHOT-forms tests: zipped, gzipped, in S3.

* :func:`k3s_zip`: a zip as K3s's ``compressSnapshot`` writes it (one Deflate entry named after
  the snapshot, ``<name>-<node>-<unix-seconds>``; spec k3s-rke2-bootstrap.md 6.2).
* :func:`gzipped`, :func:`zip_of`, :func:`lying_zip`, :func:`truncated`: the same bytes in other
  (and hostile) shapes.
* :class:`MotoS3`: buckets and objects with user metadata on the session's moto server;
  :func:`auth_moto_server`: a second moto server, in its own process, that enforces IAM
  authentication (``INITIAL_NO_AUTH_ACTION_COUNT=0``), so unknown credentials get a real
  ``InvalidAccessKeyId``; :class:`StallingProxy`: forwards to moto and stops half-way through a
  response body, to signal a command mid-download.
"""

from __future__ import annotations

import gzip
import http.client
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3

from snapshot_tools.providers import aescbc, static_prefix
from tests.support.aws import REGION
from tests.support.snapshots import Builder, kv_bytes, revision_key

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SNAPSHOT_NAME = "etcd-snapshot-node1-1700000000"  # K3s: <name>-<node>-<unix seconds>
K3S_METADATA = {  # as K3s writes it (pkg/etcd/s3/s3.go); the token hash is sha256(token)[:12]
    "K3s-Cluster-Id": "0b6f2a4e-4a4e-4f0b-9a5e-3d1f9c2b7e10",
    "K3s-Node-Name": "node1",
    "K3s-Token-Hash": "5d3e2c1b0a99",
}


def k3s_zip(snapshot: Path, directory: Path, name: str = SNAPSHOT_NAME) -> Path:
    """``directory/<name>.zip``: one Deflate entry ``<name>`` holding ``snapshot``'s bytes."""
    out = directory / f"{name}.zip"
    with zipfile.ZipFile(out, "w") as zf:
        info = zipfile.ZipInfo(name, date_time=(2023, 11, 14, 22, 13, 20))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o600 << 16
        zf.writestr(info, snapshot.read_bytes())
    return out


def gzipped(snapshot: Path, out: Path) -> Path:
    out.write_bytes(gzip.compress(snapshot.read_bytes(), compresslevel=1))
    return out


def zip_of(out: Path, entries: dict[str, bytes]) -> Path:
    """A Deflate zip with these entries (a name ending in ``/`` is a directory entry)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out


def lying_zip(out: Path, data: bytes, declared: int) -> Path:
    """A one-entry zip whose headers declare ``declared`` bytes while the entry holds ``data``."""
    zip_of(out, {SNAPSHOT_NAME: data})
    raw = bytearray(out.read_bytes())
    local = raw.index(b"PK\x03\x04")
    struct.pack_into("<I", raw, local + 22, declared)
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, declared)
    out.write_bytes(bytes(raw))
    return out


def truncated(src: Path, out: Path) -> Path:
    """``src`` cut in the middle."""
    data = src.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def hostile_archive(name: str, tmp_path: Path, snapshot: Path) -> Path:
    """An archive that must be refused, in ``tmp_path``: ``name`` says how it is built."""
    data = snapshot.read_bytes()
    if name == "two-entries":
        return zip_of(tmp_path / "x.zip", {SNAPSHOT_NAME: data, "second": data})
    if name == "directory":
        return zip_of(tmp_path / "x.zip", {"snapshots/": b""})
    if name == "dotdot":
        return zip_of(tmp_path / "x.zip", {f"../{SNAPSHOT_NAME}": data})
    if name == "absolute":
        return zip_of(tmp_path / "x.zip", {f"/tmp/{SNAPSHOT_NAME}": data})
    if name == "empty-zip":
        return zip_of(tmp_path / "x.zip", {})
    if name == "truncated-gzip":
        return truncated(gzipped(snapshot, tmp_path / "full.gz"), tmp_path / "x.gz")
    if name == "truncated-zip":
        return truncated(k3s_zip(snapshot, tmp_path), tmp_path / "x.zip")
    if name == "lying-zip":  # declares fewer bytes than it holds
        return lying_zip(tmp_path / "x.zip", data, declared=4096)
    if name == "garbage-after-gzip-magic":
        path = tmp_path / "x.gz"
        path.write_bytes(b"\x1f\x8b" + os.urandom(512))
        return path
    if name == "many-entries":  # a central directory far beyond any one-entry zip's
        return zip_of(tmp_path / "x.zip", {f"e{i:05d}": b"" for i in range(5000)})
    if name == "stored-zip":  # no compression: fine from a file, no end a stream can find
        path = tmp_path / "x.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(SNAPSHOT_NAME, data)
        return path
    if name == "zip-of-garbage":  # a sound archive whose one entry is no snapshot
        return zip_of(tmp_path / "x.zip", {SNAPSHOT_NAME: b"not a snapshot" * 100})
    raise AssertionError(name)


def temp_leftovers(directory: Path) -> list[str]:
    """Everything below ``directory`` (a test's TMPDIR), as relative paths."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# -- S3 on moto ---------------------------------------------------------------------------------


@dataclass
class MotoS3:
    """S3 on a running moto server (the session's, shared with KMS)."""

    url: str

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION)

    def bucket(self, name: str) -> str:
        s3 = self.client()
        if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, path: Path, metadata: dict[str, str] | None = None) -> str:
        """Upload ``path`` as K3s does (content type by suffix, user metadata); its s3:// URL."""
        self.bucket(bucket)
        kind = "application/zip" if key.endswith(".zip") else "application/octet-stream"
        with path.open("rb") as f:
            self.client().put_object(Bucket=bucket, Key=key, Body=f, ContentType=kind, Metadata=metadata or {})
        return f"s3://{bucket}/{key}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def auth_moto_server() -> Iterator[str]:
    """A moto server (own process) that authenticates every request against its IAM, which
    knows no keys: any credentials are refused with ``InvalidAccessKeyId``. Yields its URL."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the authenticating moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class StallingProxy:
    """Forwards GETs to ``upstream``; of a body over 1 MiB it sends the headers and half, then
    holds the connection open until closed: a download that hangs mid-way."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self
        host, _, port = proxy.upstream.removeprefix("http://").partition(":")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request("GET", self.path, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if len(data) <= 1 << 20:
                        self.wfile.write(data)
                        return
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    proxy.release.wait(60)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    conn.close()
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler


def big_aescbc_snapshot(path: Path, count: int, key: bytes) -> Path:
    """``count`` small aescbc (``key1``) Secrets, one revision each: seconds of ``check``."""
    prefix = static_prefix("aescbc", "key1")
    items = []
    for i in range(count):
        k = b"/registry/secrets/ns/s%07d" % i
        body = b'{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s%d"}}' % i
        items.append((revision_key(i + 2), kv_bytes(k, i + 2, i + 2, 1, prefix + aescbc.encrypt(key, body))))
    with path.open("w+b") as f:
        b = Builder(f)
        key_bucket = b.bucket(items)
        meta = b.bucket([(b"consistent_index", (count + 1).to_bytes(8, "big"))])
        b.finish([(b"key", key_bucket), (b"meta", meta)])
    return path

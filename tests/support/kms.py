"""KMS plugins for tests: a small KMS v2 peer plugin, and our own plugin served in-process.

:class:`TestKMSPlugin` is a real gRPC server on a real unix socket. It serves
``v2.KeyManagementService`` and, on the same socket, ``v1beta1.KeyManagementService``.
It wraps like the plugin that wrote the g-kmsv2 fixture (fixtures README):
``ciphertext = nonce(12) || AES-256-GCM(KEK).Seal(nonce, plaintext, AAD=None)``, key_id
``kek-1``. It counts every call per method so tests can assert how often a client asked, and
can be told to answer every v2 Decrypt with a given gRPC status (``decrypt_error``), as a plugin
does for a disabled key (``FAILED_PRECONDITION``) or a throttled one.
This is a test double for the *peer* of our client, not a mock of our code: it speaks the
upstream ``v2.KeyManagementService`` wire API through the generated stubs.

:func:`served` runs ``kms_plugin``'s own server in this process (keyring backend);
:func:`start_serve` runs ``kms-plugin serve`` as a subprocess. Unix socket paths must stay under
~107 bytes, hence :func:`short_dir`.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_plugin.client import EncryptResult, KMSv2Client
from kms_plugin.errors import Error
from kms_plugin.keks.local import Keyring, save_keyring
from kms_plugin.proto import kms_v1beta1_pb2, kms_v1beta1_pb2_grpc, kms_v2_pb2, kms_v2_pb2_grpc
from kms_plugin.server import PluginServer, ServeConfig
from snapshot_tools.providers import kms_prefix, kmsv2
from tests.support.cli import KMS_PLUGIN
from tests.support.fixtures import fixture_kek
from tests.support.k8s_objects import json_object

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import TracebackType


class _Servicer(kms_v2_pb2_grpc.KeyManagementServiceServicer):
    def __init__(self, kek: bytes, key_id: str) -> None:
        self._aead = AESGCM(kek)
        self.key_id = key_id
        # Older key_ids Decrypt still accepts (a plugin after a KEK rotation).
        self.accept_key_ids: set[str] = set()
        # Answer every Decrypt with this status instead (after counting it).
        self.decrypt_error: grpc.StatusCode | None = None
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1

    def Status(self, request, context):  # noqa: N802 - gRPC signature
        self._count("Status")
        return kms_v2_pb2.StatusResponse(version="v2", healthz="ok", key_id=self.key_id)

    def Encrypt(self, request, context):  # noqa: N802
        self._count("Encrypt")
        nonce = os.urandom(12)
        ciphertext = nonce + self._aead.encrypt(nonce, request.plaintext, None)
        return kms_v2_pb2.EncryptResponse(ciphertext=ciphertext, key_id=self.key_id)

    def Decrypt(self, request, context):  # noqa: N802
        self._count("Decrypt")
        if self.decrypt_error is not None:
            context.abort(self.decrypt_error, f"test plugin answers {self.decrypt_error.name}")
        if request.key_id != self.key_id and request.key_id not in self.accept_key_ids:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown key_id {request.key_id!r}")
        data = request.ciphertext
        if len(data) < 12 + 16:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ciphertext too short")
        try:
            plaintext = self._aead.decrypt(data[:12], data[12:], None)
        except InvalidTag:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ciphertext could not be decrypted")
        return kms_v2_pb2.DecryptResponse(plaintext=plaintext)


class _V1Servicer(kms_v1beta1_pb2_grpc.KeyManagementServiceServicer):
    """KMS v1beta1 with the same wrap format; counts as ``v1.<Method>``."""

    def __init__(self, v2: _Servicer, kek: bytes) -> None:
        self._v2 = v2
        self._aead = AESGCM(kek)

    def Version(self, request, context):  # noqa: N802
        self._v2._count("v1.Version")
        return kms_v1beta1_pb2.VersionResponse(
            version="v1beta1", runtime_name="test-plugin", runtime_version="0.0.1"
        )

    def Encrypt(self, request, context):  # noqa: N802
        self._v2._count("v1.Encrypt")
        nonce = os.urandom(12)
        return kms_v1beta1_pb2.EncryptResponse(
            cipher=nonce + self._aead.encrypt(nonce, request.plain, None)
        )

    def Decrypt(self, request, context):  # noqa: N802
        self._v2._count("v1.Decrypt")
        data = request.cipher
        try:
            plain = self._aead.decrypt(data[:12], data[12:], None)
        except (InvalidTag, ValueError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ciphertext could not be decrypted")
        return kms_v1beta1_pb2.DecryptResponse(plain=plain)


class TestKMSPlugin:
    """Start with ``with TestKMSPlugin(socket_path, kek) as plugin:``; ``plugin.endpoint`` is
    the ``unix:///...`` endpoint and ``plugin.calls["Decrypt"]`` the number of Decrypt calls."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        socket_path: Path,
        kek: bytes,
        key_id: str = "kek-1",
        decrypt_error: grpc.StatusCode | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.servicer = _Servicer(kek, key_id)
        self.servicer.decrypt_error = decrypt_error
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        kms_v2_pb2_grpc.add_KeyManagementServiceServicer_to_server(self.servicer, self._server)
        kms_v1beta1_pb2_grpc.add_KeyManagementServiceServicer_to_server(
            _V1Servicer(self.servicer, kek), self._server
        )
        self._server.add_insecure_port(f"unix:{socket_path}")

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def calls(self) -> Counter[str]:
        return self.servicer.calls

    def __enter__(self) -> TestKMSPlugin:
        self._server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.stop(grace=None)


@contextmanager
def fixture_plugin() -> Iterator[TestKMSPlugin]:
    """The g-kmsv2 fixture's plugin (its KEK) on a real unix socket, for reading that fixture."""
    with short_dir() as d, TestKMSPlugin(d / "kms.sock", fixture_kek()) as plugin:
        yield plugin


# -- our own plugin ----------------------------------------------------------------------------


@contextmanager
def short_dir() -> Iterator[Path]:
    """A temp dir under /tmp: unix socket paths must stay under ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="kmst", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_keyring(path: Path) -> Keyring:
    keyring = Keyring.generate()
    save_keyring(path, keyring, replace=False)
    return keyring


@contextmanager
def serving(config: ServeConfig) -> Iterator[PluginServer]:
    """An in-process plugin for ``config``, stopped (1 s grace) on exit."""
    server = PluginServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=1.0)


def serve_config(directory: Path, **fields: Any) -> ServeConfig:
    """Serve on ``directory/p.sock`` with health on an ephemeral loopback port, plus ``fields``."""
    return ServeConfig(listen=f"unix://{directory / 'p.sock'}", health_addr="127.0.0.1:0", **fields)


@contextmanager
def served(directory: Path, **overrides: Any) -> Iterator[PluginServer]:
    """An in-process plugin on ``directory/p.sock`` with the keyring ``directory/k.json``."""
    keyring = directory / "k.json"
    if not keyring.exists():
        make_keyring(keyring)
    with serving(serve_config(directory, keyring=keyring, **overrides)) as server:
        yield server


def start_serve(*args: str) -> subprocess.Popen[bytes]:
    """``kms-plugin serve ARGS`` as a subprocess (stderr piped)."""
    return subprocess.Popen(
        [*KMS_PLUGIN, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until the server answers Status (the socket alone may still be a stale one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read().decode()}")
        if path.exists():
            try:
                with KMSv2Client(f"unix://{path}", timeout=1) as c:
                    c.status()
                return
            except Error:
                pass
        time.sleep(0.05)
    raise AssertionError(f"socket {path} did not come up")


def file_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def http_get(host: str, port: int, path: str = "/healthz", timeout: float = 5) -> tuple[int, str]:
    """GET ``path`` over a fresh connection: (status, body) for any status, 4xx and 5xx included."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def health_get(server: PluginServer, path: str) -> tuple[int, str]:
    """GET /healthz, /readyz, /livez or /metrics of an in-process plugin: (status, body)."""
    assert server.health is not None
    return http_get(server.health.host, server.health.port, path)


def write_through_plugin(
    etcd: Any, client: KMSv2Client, keys: Sequence[str], provider: str = "ours"
) -> tuple[bytes, EncryptResult]:
    """Put KMS v2 objects ``keys`` into ``etcd`` as kube-apiserver writes them after a (re)start:
    Status, one seed wrapped once by the plugin, every value sealed under that seed."""
    status = client.status()
    seed = os.urandom(32)
    wrapped = client.encrypt(seed)
    assert wrapped.key_id == status.key_id
    for key in keys:
        payload = kmsv2.encrypt(
            seed,
            json_object(key),
            key.encode(),
            encrypted_dek_source=wrapped.ciphertext,
            key_id=wrapped.key_id,
            annotations=wrapped.annotations,
        )
        etcd.put(key, kms_prefix("v2", provider) + payload)
    return seed, wrapped

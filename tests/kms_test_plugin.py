"""A small KMS v2 plugin for tests: a real gRPC server on a real unix socket.

It serves ``v2.KeyManagementService`` and, on the same socket, ``v1beta1.KeyManagementService``.
It wraps like the plugin that wrote the g-kmsv2 fixture (fixtures README):
``ciphertext = nonce(12) || AES-256-GCM(KEK).Seal(nonce, plaintext, AAD=None)``, key_id
``kek-1``. It counts every call per method so tests can assert how often a client asked, and
can be told to answer every v2 Decrypt with a given gRPC status (``decrypt_error``), as a plugin
does for a disabled key (``FAILED_PRECONDITION``) or a throttled one.
This is a test double for the *peer* of our client, not a mock of our code: it speaks the
upstream ``v2.KeyManagementService`` wire API through the generated stubs.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_plugin.proto import kms_v1beta1_pb2, kms_v1beta1_pb2_grpc, kms_v2_pb2, kms_v2_pb2_grpc

if TYPE_CHECKING:
    from pathlib import Path
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

    def Status(self, request, context):  # noqa: N802, ANN001, ANN201 - gRPC signature
        self._count("Status")
        return kms_v2_pb2.StatusResponse(version="v2", healthz="ok", key_id=self.key_id)

    def Encrypt(self, request, context):  # noqa: N802, ANN001, ANN201
        self._count("Encrypt")
        nonce = os.urandom(12)
        ciphertext = nonce + self._aead.encrypt(nonce, request.plaintext, None)
        return kms_v2_pb2.EncryptResponse(ciphertext=ciphertext, key_id=self.key_id)

    def Decrypt(self, request, context):  # noqa: N802, ANN001, ANN201
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

    def Version(self, request, context):  # noqa: N802, ANN001, ANN201
        self._v2._count("v1.Version")
        return kms_v1beta1_pb2.VersionResponse(
            version="v1beta1", runtime_name="test-plugin", runtime_version="0.0.1"
        )

    def Encrypt(self, request, context):  # noqa: N802, ANN001, ANN201
        self._v2._count("v1.Encrypt")
        nonce = os.urandom(12)
        return kms_v1beta1_pb2.EncryptResponse(
            cipher=nonce + self._aead.encrypt(nonce, request.plain, None)
        )

    def Decrypt(self, request, context):  # noqa: N802, ANN001, ANN201
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

"""Blocking KMS v2 and v1beta1 clients over a unix socket, as kube-apiserver calls a plugin.

Used by ``kms-plugin status``, by the snapshot tools (``--kms NAME=unix:///...``), the tests and
the benchmark. gRPC failures become :mod:`kms_plugin.errors` classes with one-line messages that
name the endpoint, the method and the gRPC code; never the payload.

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/grpc_service.go``
and ``.../envelope/grpc_service.go`` (v1, ``checkAPIVersion``).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import grpc

from kms_plugin.endpoint import UnixEndpoint, parse_unix_endpoint
from kms_plugin.errors import InvalidCiphertext, PluginError, PluginUnavailable
from kms_plugin.proto import kms_v1beta1_pb2, kms_v1beta1_pb2_grpc, kms_v2_pb2, kms_v2_pb2_grpc

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

V1_API_VERSION = "v1beta1"
_UNAVAILABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class StatusResult:
    version: str
    healthz: str
    key_id: str


@dataclass(frozen=True)
class EncryptResult:
    ciphertext: bytes = field(repr=False)
    key_id: str
    annotations: dict[str, bytes] = field(default_factory=dict)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Channel:
    """A gRPC channel to one endpoint, with per-call timeouts and error mapping."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        self._parsed: UnixEndpoint = parse_unix_endpoint(endpoint)
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self._parsed.grpc_target,
            options=[
                # kube-apiserver sets :authority to localhost for v2 (grpc_service.go).
                ("grpc.default_authority", "localhost"),
                ("grpc.enable_http_proxy", 0),
            ],
        )

    def call(self, method: str, fn: Callable[..., Any], request: Any) -> Any:
        # A missing socket file fails at once instead of costing a reconnect backoff.
        if not self._parsed.abstract and not os.path.exists(self._parsed.path):
            raise PluginUnavailable(
                f"KMS plugin at {self.endpoint}: {method}: socket {self._parsed.path} does not exist"
            )
        try:
            # wait_for_ready=False: a refused connection fails fast; the timeout bounds the rest.
            return fn(request, timeout=self.timeout, wait_for_ready=False)
        except grpc.RpcError as exc:
            raise self._map(method, exc) from None

    def _map(self, method: str, exc: grpc.RpcError) -> Exception:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else ""
        message = _one_line(
            f"KMS plugin at {self.endpoint}: {method}: {code.name}: {details or 'no details'}"
        )
        if code in _UNAVAILABLE_CODES:
            return PluginUnavailable(message)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidCiphertext(message)
        return PluginError(message, code.name)

    def close(self) -> None:
        self._channel.close()

    @property
    def channel(self) -> grpc.Channel:
        return self._channel


class _Client:
    """What both clients share: one channel, closed explicitly or by ``with``."""

    _ch: _Channel

    def close(self) -> None:
        self._ch.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class KMSv2Client(_Client):
    """A KMS v2 client (``v2.KeyManagementService``)."""

    def __init__(self, endpoint: str, timeout: float = 3.0) -> None:
        self._ch = _Channel(endpoint, timeout)
        self._stub = kms_v2_pb2_grpc.KeyManagementServiceStub(self._ch.channel)
        self.endpoint = endpoint

    def status(self) -> StatusResult:
        resp = self._ch.call("Status", self._stub.Status, kms_v2_pb2.StatusRequest())
        return StatusResult(version=resp.version, healthz=resp.healthz, key_id=resp.key_id)

    def encrypt(self, plaintext: bytes, uid: str | None = None) -> EncryptResult:
        req = kms_v2_pb2.EncryptRequest(plaintext=plaintext, uid=uid or str(uuid.uuid4()))
        resp = self._ch.call("Encrypt", self._stub.Encrypt, req)
        return EncryptResult(
            ciphertext=resp.ciphertext, key_id=resp.key_id, annotations=dict(resp.annotations)
        )

    def decrypt(
        self,
        ciphertext: bytes,
        key_id: str,
        annotations: Mapping[str, bytes] | None = None,
        uid: str | None = None,
    ) -> bytes:
        req = kms_v2_pb2.DecryptRequest(
            ciphertext=ciphertext,
            key_id=key_id,
            annotations=dict(annotations or {}),
            uid=uid or str(uuid.uuid4()),
        )
        resp = self._ch.call("Decrypt", self._stub.Decrypt, req)
        return bytes(resp.plaintext)


class KMSv1Client(_Client):
    """A KMS v1beta1 client: calls ``Version`` once before the first Encrypt/Decrypt."""

    def __init__(self, endpoint: str, timeout: float = 3.0) -> None:
        self._ch = _Channel(endpoint, timeout)
        self._stub = kms_v1beta1_pb2_grpc.KeyManagementServiceStub(self._ch.channel)
        self.endpoint = endpoint
        self._checked = False

    def version(self) -> str:
        resp = self._ch.call(
            "Version", self._stub.Version, kms_v1beta1_pb2.VersionRequest(version=V1_API_VERSION)
        )
        return str(resp.version)

    def _check_version(self) -> None:
        if self._checked:
            return
        got = self.version()
        if got != V1_API_VERSION:
            raise PluginError(
                f"KMS plugin at {self.endpoint}: KMS provider api version {got!r} is not supported, "
                f"only {V1_API_VERSION} is supported now"
            )
        self._checked = True

    def encrypt(self, plain: bytes) -> bytes:
        self._check_version()
        req = kms_v1beta1_pb2.EncryptRequest(version=V1_API_VERSION, plain=plain)
        return bytes(self._ch.call("Encrypt", self._stub.Encrypt, req).cipher)

    def decrypt(self, cipher: bytes) -> bytes:
        self._check_version()
        req = kms_v1beta1_pb2.DecryptRequest(version=V1_API_VERSION, cipher=cipher)
        return bytes(self._ch.call("Decrypt", self._stub.Decrypt, req).plain)


"""The KMS v2 (and optional v1beta1) gRPC service: validate, call the KEK backend, map errors.

One :class:`KMSService` holds the logic as plain functions on protobuf messages; a thin adapter
makes the (thread pool) servicers of it. Errors are mapped to gRPC codes in one table
(:data:`ERROR_CODES`): an exception no class there covers (a bare ``ValueError``, a bug) is
``INTERNAL`` and its text is never sent or logged. Metrics and error logs are taken in one
place (:meth:`KMSService.run`).

References: aws-encryption-provider ``pkg/plugin/plugin_v2.go``; apiserver
``kmsv2/envelope.go`` ``ValidateEncryptedObject`` (the limits checked here).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import grpc

from kms_plugin import __version__, deadline
from kms_plugin.errors import (
    BackendError,
    BackendThrottled,
    ConfigError,
    Error,
    InvalidCiphertext,
    InvalidRequest,
    KeyUnavailable,
    RpcFailure,
    UnknownKeyId,
)
from kms_plugin.logs import CALLS_LOGGER, key_id_hash
from kms_plugin.proto import kms_v1beta1_pb2, kms_v2_pb2

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from kms_plugin.health import HealthMonitor
    from kms_plugin.keks.base import KEKBackend
    from kms_plugin.metrics import PluginMetrics

log = logging.getLogger("kms_plugin.service")
calls_log = logging.getLogger(CALLS_LOGGER)

API_VERSION = "v2"
V1_API_VERSION = "v1beta1"
DEFAULT_ANNOTATION_DOMAIN = "kms-plugin.local"
MAX_CIPHERTEXT = 1024
MAX_KEY_ID = 1024
MAX_ANNOTATIONS = 32 * 1024
MAX_REQUEST_ID = 128  # characters of a request uid kept in a log line (the apiserver sends a UUID: 36)
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# The one table of error class -> gRPC code. Any other ``Error`` is INTERNAL with its message;
# anything else (``ValueError`` included) is INTERNAL with the class name only (_to_failure).
ERROR_CODES: dict[type[Error], grpc.StatusCode] = {
    InvalidCiphertext: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownKeyId: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    KeyUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    BackendThrottled: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BackendError: grpc.StatusCode.UNAVAILABLE,
}


def is_fqdn(name: str) -> bool:
    """apimachinery ``IsFullyQualifiedDomainName``: lowercase subdomain with >= 2 labels."""
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return len(labels) >= 2 and all(len(lb) <= 63 and _LABEL.match(lb) for lb in labels)


def check_annotation_domain(domain: str) -> str:
    if not is_fqdn(domain):
        raise ConfigError(f"--annotation-domain {domain!r} is not a fully qualified domain name")
    return domain.rstrip(".")


def _to_failure(exc: Exception) -> RpcFailure:
    for cls, code in ERROR_CODES.items():
        if isinstance(exc, cls):
            return RpcFailure(code, str(exc))
    if isinstance(exc, Error):
        return RpcFailure(grpc.StatusCode.INTERNAL, str(exc))
    # Unexpected: say nothing that might carry material.
    return RpcFailure(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")


class KMSService:
    """The plugin's request logic, independent of the gRPC flavour."""

    def __init__(
        self,
        backend: KEKBackend,
        metrics: PluginMetrics,
        health: HealthMonitor | None = None,
        annotation_domain: str = DEFAULT_ANNOTATION_DOMAIN,
        v1_backend: KEKBackend | None = None,
    ) -> None:
        self.backend = backend
        # KMS v1 has no annotations, so it cannot carry a local KEK: it uses the remote directly.
        self.v1_backend = v1_backend or backend
        self.metrics = metrics
        self.health = health
        self.domain = check_annotation_domain(annotation_domain)

    # -- v2 ------------------------------------------------------------------------------

    def status(self, _request: Any) -> kms_v2_pb2.StatusResponse:
        st = self.backend.status()
        healthz = st.reason if not st.healthy else "ok"
        if st.healthy and self.health is not None:
            probe = self.health.last_probe
            if not probe.ok:
                healthz = probe.reason
        self.metrics.healthy.set(1 if healthz == "ok" else 0)
        return kms_v2_pb2.StatusResponse(version=API_VERSION, healthz=healthz, key_id=st.key_id)

    def encrypt(self, request: kms_v2_pb2.EncryptRequest) -> kms_v2_pb2.EncryptResponse:
        wrapped = self.backend.wrap(self._plaintext(request.plaintext))
        for key in wrapped.annotations:
            if not self._ours(key):
                raise RpcFailure(grpc.StatusCode.INTERNAL, f"backend wrote foreign annotation {key}")
        return kms_v2_pb2.EncryptResponse(
            ciphertext=wrapped.ciphertext, key_id=wrapped.key_id, annotations=wrapped.annotations
        )

    def decrypt(self, request: kms_v2_pb2.DecryptRequest) -> kms_v2_pb2.DecryptResponse:
        ciphertext = self._ciphertext(request.ciphertext)
        key_id = request.key_id
        if not key_id:
            raise InvalidCiphertext("key_id is empty")
        if len(key_id.encode()) > MAX_KEY_ID:
            raise InvalidCiphertext(f"key_id exceeds {MAX_KEY_ID} bytes")
        annotations = dict(request.annotations)
        if annotations:
            self._check_annotations(annotations)
        plaintext = self.backend.unwrap(ciphertext, key_id, annotations)
        return kms_v2_pb2.DecryptResponse(plaintext=plaintext)

    # -- v1beta1 -------------------------------------------------------------------------

    def v1_version(self, _request: Any) -> kms_v1beta1_pb2.VersionResponse:
        return kms_v1beta1_pb2.VersionResponse(
            version=V1_API_VERSION, runtime_name="kms-plugin", runtime_version=__version__
        )

    def v1_encrypt(self, request: kms_v1beta1_pb2.EncryptRequest) -> kms_v1beta1_pb2.EncryptResponse:
        self._v1_check(request.version)
        wrapped = self.v1_backend.wrap(self._plaintext(request.plain, self.v1_backend))
        return kms_v1beta1_pb2.EncryptResponse(cipher=wrapped.ciphertext)

    def v1_decrypt(self, request: kms_v1beta1_pb2.DecryptRequest) -> kms_v1beta1_pb2.DecryptResponse:
        self._v1_check(request.version)
        ciphertext = self._ciphertext(request.cipher)
        # v1 carries no key_id: the header routes to any KEK the keyring still holds.
        return kms_v1beta1_pb2.DecryptResponse(plain=self.v1_backend.unwrap(ciphertext, None, {}))

    # -- checks --------------------------------------------------------------------------

    def _plaintext(self, plaintext: bytes, backend: KEKBackend | None = None) -> bytes:
        if not plaintext:
            raise InvalidRequest("plaintext is empty")
        limit = (backend or self.backend).max_plaintext()
        if len(plaintext) > limit:
            raise InvalidRequest(f"plaintext is {len(plaintext)} bytes; at most {limit} are accepted")
        return plaintext

    @staticmethod
    def _ciphertext(ciphertext: bytes) -> bytes:
        if not ciphertext:
            raise InvalidCiphertext("ciphertext is empty")
        if len(ciphertext) > MAX_CIPHERTEXT:
            raise InvalidCiphertext(f"ciphertext is {len(ciphertext)} bytes, over {MAX_CIPHERTEXT}")
        return ciphertext

    def _ours(self, key: str) -> bool:
        key = key.rstrip(".")
        return key == self.domain or key.endswith("." + self.domain)

    def _check_annotations(self, annotations: Mapping[str, bytes]) -> None:
        total = sum(len(k.encode()) + len(v) for k, v in annotations.items())
        if total > MAX_ANNOTATIONS:
            raise InvalidCiphertext(f"annotations total {total} bytes, over {MAX_ANNOTATIONS}")
        for key in sorted(annotations):
            if not is_fqdn(key):
                raise InvalidCiphertext(f"annotation key {key!r} is not a fully qualified domain name")
            if not self._ours(key):
                raise InvalidCiphertext(f"foreign annotation {key!r}: not under {self.domain}")

    @staticmethod
    def _v1_check(version: str) -> None:
        if version and version != V1_API_VERSION:
            raise InvalidRequest(f"unsupported KMS API version {version!r}; this is {V1_API_VERSION}")

    # -- one place for metrics, logs and error mapping -------------------------------------

    def run(self, api: str, method: str, fn: Callable[[Any], Any], request: Any) -> Any:
        """Call ``fn(request)``; returns the response or raises :class:`RpcFailure`."""
        start = time.perf_counter()
        try:
            response = fn(request)
        except RpcFailure as failure:
            self._done(api, method, start, request, None, failure)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            mapped = _to_failure(exc)
            self._done(api, method, start, request, None, mapped)
            raise mapped from None
        self._done(api, method, start, request, response, None)
        return response

    def _done(
        self,
        api: str,
        method: str,
        start: float,
        request: Any,
        response: Any,
        failure: RpcFailure | None,
    ) -> None:
        """Metrics and the one log line of a call. The key_id is the answer's (Status, Encrypt)
        or the request's (Decrypt); only its hash is logged, and only answered calls count it
        in metrics, so a caller cannot grow the label set with made-up key_ids."""
        seconds = time.perf_counter() - start
        code = "OK" if failure is None else failure.code.name
        key_id = str(getattr(response, "key_id", "") or getattr(request, "key_id", "") or "")
        self.metrics.observe(api, method, code, seconds, key_id if failure is None else "")
        level = logging.INFO if failure is None else logging.WARNING
        if not calls_log.isEnabledFor(level):
            return
        extra = {
            "api": api,
            "method": method,
            "code": code,
            "latency_ms": round(seconds * 1000, 3),
            "key_id_hash": key_id_hash(key_id) if key_id else None,
            # The apiserver sends a fresh UUID per Encrypt/Decrypt; Status carries none. Any
            # caller of the socket chooses it: bounded, so one call cannot make a huge line.
            "request_id": str(getattr(request, "uid", ""))[:MAX_REQUEST_ID] or f"gen-{uuid.uuid4()}",
        }
        if failure is None:
            calls_log.info("%s %s OK", api, method, extra=extra)
        else:
            calls_log.warning("%s %s failed: %s: %s", api, method, code, failure.message, extra=extra)


def _sync_handler(
    service: KMSService, api: str, method: str, fn: Callable[[Any], Any]
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        # Remote backends bound their calls by the caller's deadline (kms_plugin.deadline).
        token = deadline.set_remaining(context.time_remaining())
        try:
            return service.run(api, method, fn, request)
        except RpcFailure as f:
            context.abort(f.code, f.message)
        finally:
            deadline.reset(token)

    return handler


def methods(service: KMSService, api: str) -> dict[str, Callable[[Any], Any]]:
    """The RPC methods of ``api`` (``"v2"`` or ``"v1beta1"``) by name, as plain functions."""
    if api == "v2":
        return {"Status": service.status, "Encrypt": service.encrypt, "Decrypt": service.decrypt}
    return {"Version": service.v1_version, "Encrypt": service.v1_encrypt, "Decrypt": service.v1_decrypt}


class Servicer:
    """The thread-pool servicer of ``api``: one handler per RPC, under the method names the
    generated ``add_KeyManagementServiceServicer_to_server`` looks up."""

    def __init__(self, service: KMSService, api: str) -> None:
        for name, fn in methods(service, api).items():
            setattr(self, name, _sync_handler(service, api, name, fn))

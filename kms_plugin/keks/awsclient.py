"""A bounded AWS KMS client: timeouts, retries, a client-side rate limit, calls in flight, errors.

Every AWS call of the plugin and of the offline tools goes through :meth:`AwsKms.call`:

* each attempt has botocore connect/read timeouts; throttling and transient failures are
  retried up to ``max_attempts`` with exponential backoff and full jitter (botocore's
  ``standard`` mode policy), but here, not inside botocore, so that retries stop when the budget
  does and the caller hears the real cause ("throttled"), not a timeout. The budget is
  ``call_timeout`` or the gRPC caller's deadline (:mod:`kms_plugin.deadline`), whichever comes
  first: a hung endpoint costs the caller an error in time, never a hang;
* a token bucket (``max_qps``) and a semaphore (``max_in_flight``) bound what we ask of AWS;
* :func:`classify` turns every botocore failure into one :mod:`kms_plugin.errors` class.

Credentials come from the standard AWS chain (environment, shared files, web identity, instance
or container role) through a boto3 session.

References: aws-encryption-provider ``pkg/kmsplugin/errors.go`` (``ParseError``,
``KMSErrorType``) and ``pkg/cloud/cloud.go`` (client config); STYLE.md item 3.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from kms_plugin import deadline
from kms_plugin.errors import (
    BackendError,
    BackendThrottled,
    ConfigError,
    Error,
    InvalidCiphertext,
    KeyUnavailable,
)
from kms_plugin.keks import awsformat

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("kms_plugin.aws")

# AWS error code -> (class, short reason). Reasons end up in Status healthz and logs: no ARNs.
_CODES: dict[str, tuple[type[Error], str]] = {
    "DisabledException": (KeyUnavailable, "key is disabled"),
    "KMSInvalidStateException": (KeyUnavailable, "key state forbids use (pending deletion?)"),
    "AccessDeniedException": (KeyUnavailable, "access denied"),
    "AccessDenied": (KeyUnavailable, "access denied"),
    "NotFoundException": (KeyUnavailable, "key or alias not found"),
    "InvalidKeyUsageException": (KeyUnavailable, "key cannot encrypt/decrypt"),
    "UnrecognizedClientException": (KeyUnavailable, "credentials not recognised"),
    "InvalidClientTokenId": (KeyUnavailable, "credentials not recognised"),
    "ExpiredTokenException": (KeyUnavailable, "credentials expired"),
    "InvalidSignatureException": (KeyUnavailable, "request signature rejected"),
    # A wrong encryption context or another key's ciphertext: opaque on purpose (STYLE.md 4).
    "InvalidCiphertextException": (InvalidCiphertext, "AWS KMS refused the ciphertext"),
    "IncorrectKeyException": (InvalidCiphertext, "AWS KMS refused the ciphertext"),
    "ThrottlingException": (BackendThrottled, "throttled"),
    "LimitExceededException": (BackendThrottled, "request quota exceeded"),
    "TooManyRequestsException": (BackendThrottled, "throttled"),
    "RequestLimitExceeded": (BackendThrottled, "throttled"),
    "KMSInternalException": (BackendError, "internal error"),
    "DependencyTimeoutException": (BackendError, "dependency timeout"),
    "KeyUnavailableException": (BackendError, "key material temporarily unavailable"),
    "ServiceUnavailableException": (BackendError, "service unavailable"),
    "InternalFailure": (BackendError, "internal failure"),
}
RETRY_BASE = 0.05  # seconds; attempt n waits up to base * 2**n (full jitter)
RETRY_CAP = 1.0
_OPS = {
    "describe_key": "DescribeKey",
    "list_key_rotations": "ListKeyRotations",
    "encrypt": "Encrypt",
    "decrypt": "Decrypt",
}


def _final(err: Error) -> Error:
    """Mark an error that a retry cannot fix in this call (our own limits, the budget)."""
    err.final = True
    return err


def classify(exc: BaseException, op: str = "call") -> Error:
    """The one place AWS failures become our error classes; sets ``aws_code`` on the result."""
    if isinstance(exc, Error):
        return exc
    code = ""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        cls, reason = _CODES.get(code, (BackendError, "unexpected error"))
        if code not in _CODES and 400 <= status < 500:
            reason = "rejected the call"
        err: Error = cls(f"AWS KMS {op}: {reason} ({code or status})")
    elif isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        err = KeyUnavailable(f"AWS KMS {op}: no usable AWS credentials ({type(exc).__name__})")
    elif isinstance(exc, HTTPClientError):
        err = BackendError(f"AWS KMS {op}: cannot reach AWS KMS ({type(exc).__name__})")
    elif isinstance(exc, BotoCoreError):
        err = BackendError(f"AWS KMS {op}: {type(exc).__name__}")
    else:
        err = BackendError(f"AWS KMS {op}: unexpected {type(exc).__name__}")
    err.aws_code = code
    return err


@dataclass(frozen=True)
class AwsSettings:
    """How to reach AWS KMS; built by the CLIs."""

    key: str | None  # key ARN, key id, alias name or alias ARN; None offline means "any key"
    region: str | None = None
    endpoint_url: str | None = None
    encryption_context: dict[str, str] = field(default_factory=dict)
    max_qps: float = 50.0  # 0 = no client-side limit
    max_in_flight: int = 8
    call_timeout: float = 2.5  # whole call incl. retries; kube-apiserver waits 3 s by default
    connect_timeout: float = 1.0
    read_timeout: float = 2.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.max_qps < 0:
            raise ConfigError("--aws-max-qps must not be negative")
        if self.max_in_flight < 1:
            raise ConfigError("--aws-max-in-flight must be at least 1")
        if self.call_timeout <= 0 or self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError("AWS timeouts must be positive")
        if self.max_attempts < 1:
            raise ConfigError("--aws-max-attempts must be at least 1")


class TokenBucket:
    """``rate`` calls per second with a burst of ``max(1, rate)``; callers may wait for a token."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, timeout: float) -> bool:
        """Take a token, waiting at most ``timeout`` s; False when none comes in time."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            wait = (1.0 - self._tokens) / self.rate if self._tokens < 1.0 else 0.0
            if wait > timeout:
                return False
            self._tokens -= 1.0  # reserve now, sleep outside the lock
        if wait > 0:
            time.sleep(wait)
        return True


class AwsKms:
    """AWS KMS calls for one configuration; thread-safe. ``calls`` counts calls by operation."""

    ROTATION_REFRESH = 5.0  # an unknown key_id re-reads ListKeyRotations at most this often
    ALIAS_TTL = 60.0

    def __init__(
        self, settings: AwsSettings, *, on_call: Callable[[str, str], None] | None = None
    ) -> None:
        self.settings = settings
        region = settings.region or (awsformat.region_of(settings.key) if settings.key else None)
        config = Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            # One attempt per botocore call: call() retries within the caller's budget.
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=settings.max_in_flight,
            user_agent_extra="kms-plugin",
        )
        try:
            session = boto3.session.Session(region_name=region)
            self.client = session.client("kms", endpoint_url=settings.endpoint_url, config=config)
        except NoRegionError:
            raise ConfigError(
                "no AWS region: pass --aws-region, set AWS_REGION, or give the key as an ARN"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"--aws-endpoint-url: {exc}") from None
        self._on_call = on_call
        self._bucket = TokenBucket(settings.max_qps) if settings.max_qps > 0 else None
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        self._pool = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="aws-kms")
        self._lock = threading.Lock()
        self._key_ids: dict[str, tuple[float, frozenset[str], str]] = {}
        self._aliases: dict[str, tuple[float, str]] = {}
        self.rotations_visible = True
        self.calls: Counter[str] = Counter()

    # -- the one bounded call ----------------------------------------------------------------

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Run ``client.<method>(**params)`` within the budget, retrying what may pass.

        Raises:
            KeyUnavailable, InvalidCiphertext, BackendThrottled, BackendError: see classify().
        """
        op = _OPS.get(method, method)
        limit = deadline.budget(self.settings.call_timeout)
        end = time.monotonic() + limit
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(method, op, params, end, limit)
            except (BackendThrottled, BackendError) as exc:
                pause = random.uniform(0.0, min(RETRY_CAP, RETRY_BASE * 2**attempt))  # noqa: S311 - retry jitter, not a secret
                if exc.final or attempt >= self.settings.max_attempts or time.monotonic() + pause >= end:
                    raise
                time.sleep(pause)

    def _attempt(
        self, method: str, op: str, params: dict[str, Any], end: float, limit: float
    ) -> dict[str, Any]:
        outcome = "error"
        try:
            if self._bucket is not None and not self._bucket.take(end - time.monotonic()):
                outcome = "rate-limited"
                raise _final(BackendThrottled(
                    f"AWS KMS {op}: client-side rate limit ({self.settings.max_qps:g}/s) reached"
                ))
            if not self._slots.acquire(timeout=max(0.0, end - time.monotonic())):
                outcome = "rate-limited"
                raise _final(BackendThrottled(
                    f"AWS KMS {op}: {self.settings.max_in_flight} calls already in flight"
                ))
            try:
                future = self._pool.submit(getattr(self.client, method), **params)
            except RuntimeError:
                self._slots.release()
                raise _final(BackendError(f"AWS KMS {op}: client is closed")) from None
            future.add_done_callback(lambda _f: self._slots.release())
            with self._lock:
                self.calls[op] += 1
            try:
                result: dict[str, Any] = future.result(timeout=max(0.0, end - time.monotonic()))
            except FutureTimeout:
                future.cancel()
                outcome = "timeout"
                raise _final(BackendError(f"AWS KMS {op}: no answer within {limit:.1f}s")) from None
            except Exception as exc:  # noqa: BLE001 - classified right here
                err = classify(exc, op)
                outcome = type(err).__name__
                raise err from None
            outcome = "ok"
            return result
        finally:
            if self._on_call is not None:
                self._on_call(op, outcome)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- operations -----------------------------------------------------------------------

    def describe(self, key: str) -> dict[str, Any]:
        """``DescribeKey``: the key's metadata (``Arn``, ``KeyState``, ...); aliases resolve."""
        meta: dict[str, Any] = self.call("describe_key", KeyId=key)["KeyMetadata"]
        return meta

    def encrypt(self, arn: str, plaintext: bytes) -> tuple[bytes, str]:
        out = self.call(
            "encrypt",
            KeyId=arn,
            Plaintext=plaintext,
            EncryptionContext=self.settings.encryption_context,
        )
        return bytes(out["CiphertextBlob"]), str(out["KeyId"])

    def decrypt(self, blob: bytes) -> tuple[bytes, str]:
        """Decrypt a CiphertextBlob; returns the plaintext and the ARN of the key AWS used."""
        out = self.call(
            "decrypt", CiphertextBlob=blob, EncryptionContext=self.settings.encryption_context
        )
        return bytes(out["Plaintext"]), str(out["KeyId"])

    def markers(self, arn: str) -> list[str]:
        """Rotation markers of ``arn``, oldest first (``[""]`` if rotations are not visible)."""
        rotations: list[dict[str, Any]] = []
        params: dict[str, Any] = {"KeyId": arn}
        try:
            for _ in range(100):  # 100 pages of 1000 rotations: far beyond any real key
                page = self.call("list_key_rotations", **params)
                rotations.extend(page.get("Rotations", []))
                if not page.get("Truncated") or not page.get("NextMarker"):
                    break
                params["Marker"] = page["NextMarker"]
        except KeyUnavailable as exc:
            if exc.aws_code not in ("AccessDeniedException", "AccessDenied"):
                raise
            if self.rotations_visible:
                log.warning(
                    "kms:ListKeyRotations is denied: the key_id follows alias moves but not "
                    "key material rotations; grant it to the plugin's role"
                )
            self.rotations_visible = False
            return [""]
        return awsformat.rotation_markers(rotations)

    def key_ids(self, arn: str, *, max_age: float | None = None) -> tuple[frozenset[str], str]:
        """Every key_id ``arn`` has had, and the current one.

        Cached; re-read (``ListKeyRotations``) when nothing is cached or the answer is older than
        ``max_age`` seconds (None: any age will do).
        """
        now = time.monotonic()
        with self._lock:
            cached = self._key_ids.get(arn)
        if cached is not None and (max_age is None or now - cached[0] < max_age):
            return cached[1], cached[2]
        markers = self.markers(arn)
        ids = frozenset(awsformat.key_id_for(arn, m) for m in markers)
        current = awsformat.key_id_for(arn, markers[-1])
        with self._lock:
            self._key_ids[arn] = (now, ids, current)
        return ids, current

    def resolve_alias(self, alias: str) -> str | None:
        """The key ARN an alias (name or ARN) points to now; None if there is no such alias."""
        now = time.monotonic()
        with self._lock:
            cached = self._aliases.get(alias)
        if cached is not None and now - cached[0] < self.ALIAS_TTL:
            return cached[1] or None
        try:
            arn = str(self.describe(alias)["Arn"])
        except KeyUnavailable as exc:
            if exc.aws_code != "NotFoundException":
                raise
            arn = ""
        with self._lock:
            self._aliases[alias] = (now, arn)
        return arn or None

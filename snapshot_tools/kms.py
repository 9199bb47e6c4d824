"""Unwrapping KMS-encrypted data keys: a small protocol, a caching layer and the plugin client.

``resolve`` asks an :class:`Unwrapper` for the plaintext of a KMS v1 encrypted DEK or a KMS v2
``encryptedDEKSource``. :class:`CachingUnwrapper` makes sure each distinct encrypted DEK source is
unwrapped exactly once, even when many threads ask at the same time (KMS v2 shares one seed
across thousands of objects), bounds the number of calls in flight, and remembers failures so a
source that cannot be unwrapped is not retried for every object. :class:`PluginUnwrapper` asks a
KMS plugin over its unix socket, as kube-apiserver would.

Errors: an unreachable plugin is ``errors.KMSUnavailable``; a plugin that refuses the ciphertext
is ``errors.InvalidCiphertext``.

References: ``kmsv2/envelope.go`` (``generateCacheKey``: cache by the full DEK source identity),
``envelope/envelope.go`` (v1 cache by encrypted DEK), spec sections 5.2 and 6.4.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

from kms_plugin import errors as plugin_errors
from kms_plugin.keks.base import Wrapped
from snapshot_tools.errors import ConfigError, Error, InvalidCiphertext, KMSUnavailable
from snapshot_tools.providers import kmsv2

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from kms_plugin.client import KMSv1Client, KMSv2Client

DEFAULT_MAX_CONCURRENCY = 8


class Unwrapper(Protocol):
    """Turns encrypted data keys into plaintext ones."""

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        """Plaintext of a KMS v2 ``encryptedDEKSource`` (a DEK or a seed)."""
        ...

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        """Plaintext of a KMS v1 encrypted DEK."""
        ...

    def current_key_id(self) -> str | None:
        """The key_id new writes would carry now (KMS v2 Status); ``None`` if unknown or v1."""
        ...


# -- caching ----------------------------------------------------------------------------------


class _Entry:
    """One cache slot: filled once by the thread that created it; others wait on ``done``."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: bytes | None = None
        # (class, message): a fresh exception is raised for every caller, not one shared object.
        self.error: tuple[type[Error], str] | None = None

    def __repr__(self) -> str:
        return f"<cache entry done={self.done.is_set()} failed={self.error is not None}>"


class CachingUnwrapper:
    """Unwrap each distinct encrypted DEK source once; thread-safe; bounded concurrency.

    Cache keys: KMS v2 uses the apiserver's cache key of spec 6.4 (encDEKSource, keyID and the
    sorted annotations; the source type is left at 0 because it does not change the plugin
    call), KMS v1 the encrypted DEK bytes. Failures are cached too. After the first
    ``KMSUnavailable`` every later call fails fast with it: a dead plugin costs one timeout per
    provider, not one per object.

    Args:
        inner: the unwrapper that does the work.
        max_concurrency: calls to ``inner`` in flight at once.
    """

    def __init__(self, inner: Unwrapper, max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.inner = inner
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._entries: dict[bytes, _Entry] = {}
        self._calls = 0
        self._unavailable: str | None = None
        self._key_id: _Entry | None = None

    @property
    def calls(self) -> int:
        """How many unwrap calls reached ``inner`` (tests and benchmarks read this)."""
        return self._calls

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        key = b"v2" + kmsv2.cache_key(kmsv2.AES_GCM_KEY, ciphertext, key_id, annotations)
        return self._get(key, lambda: self.inner.unwrap_v2(ciphertext, key_id, annotations))

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        return self._get(b"v1" + ciphertext, lambda: self.inner.unwrap_v1(ciphertext))

    def current_key_id(self) -> str | None:
        """Asked of ``inner`` once; the answer (or failure) is kept."""
        with self._lock:
            entry = self._key_id
            owner = entry is None
            if owner:
                entry = self._key_id = _Entry()
        assert entry is not None
        if owner:
            self._fill(entry, lambda: (self.inner.current_key_id() or "").encode(), count=False)
        return self._result(entry).decode() or None

    def wrap_v2(self, plaintext: bytes) -> Wrapped:
        """Wrap a new seed through ``inner`` (not cached: a rewrite wraps one fresh seed)."""
        wrap = getattr(self.inner, "wrap_v2", None)
        if wrap is None:
            raise KMSUnavailable(f"{self.inner!r} cannot wrap data keys")
        return wrap(plaintext)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def _get(self, key: bytes, call: Callable[[], bytes]) -> bytes:
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if owner:
                if self._unavailable is not None:
                    raise KMSUnavailable(self._unavailable)
                entry = self._entries[key] = _Entry()
        assert entry is not None
        if owner:
            self._fill(entry, call, count=True)
        return self._result(entry)

    def _fill(self, entry: _Entry, call: Callable[[], bytes], *, count: bool) -> None:
        try:
            with self._slots:
                if count:
                    with self._lock:
                        self._calls += 1
                entry.value = call()
        except KMSUnavailable as exc:
            entry.error = (KMSUnavailable, str(exc))
            with self._lock:
                self._unavailable = self._unavailable or str(exc)
        except Error as exc:
            entry.error = (type(exc), str(exc))
        except BaseException as exc:
            # A bug, not a verdict: waiters see it too, but nothing is cached.
            entry.error = (Error, f"unwrapping failed: {type(exc).__name__}")
            with self._lock:
                for k, v in list(self._entries.items()):
                    if v is entry:
                        del self._entries[k]
            raise
        finally:
            entry.done.set()

    @staticmethod
    def _result(entry: _Entry) -> bytes:
        entry.done.wait()
        if entry.error is not None:
            cls, message = entry.error
            raise cls(message)
        assert entry.value is not None
        return entry.value

    def __repr__(self) -> str:
        return f"CachingUnwrapper({self.inner!r}, calls={self._calls})"


# -- a KMS plugin over its unix socket ----------------------------------------------------------


class PluginUnwrapper:
    """Unwrap through a KMS plugin socket with ``kms_plugin.client``.

    The endpoint is checked at once; the gRPC channel opens on first use.

    Args:
        endpoint: ``unix:///path/to/socket`` or ``unix:///@abstract-name``.
        timeout: seconds per call (the provider's ``timeout``, default 3 s as upstream).
        api_version: ``"v2"`` or ``"v1"`` (KMS v1beta1).

    Raises:
        ConfigError: a malformed endpoint or an unknown API version.
    """

    def __init__(self, endpoint: str, timeout: float = 3.0, api_version: str = "v2") -> None:
        from kms_plugin.client import parse_endpoint

        if api_version not in ("v1", "v2"):
            raise ConfigError(f"KMS apiVersion must be v1 or v2, got {api_version!r}")
        try:
            parse_endpoint(endpoint)
        except plugin_errors.ConfigError as exc:
            raise ConfigError(str(exc)) from None
        self.endpoint = endpoint
        self.timeout = timeout
        self.api_version = api_version
        self._lock = threading.Lock()
        self._client: KMSv1Client | KMSv2Client | None = None

    def _get_client(self) -> KMSv1Client | KMSv2Client:
        with self._lock:
            if self._client is None:
                from kms_plugin.client import KMSv1Client, KMSv2Client

                cls = KMSv2Client if self.api_version == "v2" else KMSv1Client
                self._client = cls(self.endpoint, timeout=self.timeout)
            return self._client

    def _wrong_version(self, wanted: str) -> KMSUnavailable:
        return KMSUnavailable(
            f"KMS plugin at {self.endpoint} is configured as apiVersion {self.api_version}; "
            f"it cannot unwrap KMS {wanted} data keys"
        )

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        if self.api_version != "v2":
            raise self._wrong_version("v2")
        client = self._get_client()
        with _mapped_errors(self.endpoint):
            return client.decrypt(ciphertext, key_id, dict(annotations))  # type: ignore[call-arg]

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        if self.api_version != "v1":
            raise self._wrong_version("v1")
        client = self._get_client()
        with _mapped_errors(self.endpoint):
            return client.decrypt(ciphertext)  # type: ignore[call-arg]

    def wrap_v2(self, plaintext: bytes) -> Wrapped:
        """Encrypt a seed as the apiserver does: Status, then Encrypt; both key_ids must agree."""
        if self.api_version != "v2":
            raise self._wrong_version("v2")
        client = self._get_client()
        with _mapped_errors(self.endpoint):
            status = client.status()  # type: ignore[union-attr]
            result = client.encrypt(plaintext)  # type: ignore[union-attr]
        if status.healthz != "ok":
            raise KMSUnavailable(f"KMS plugin at {self.endpoint} is not healthy: {status.healthz}")
        if result.key_id != status.key_id:
            raise KMSUnavailable(
                f"KMS plugin at {self.endpoint}: Encrypt key_id differs from Status key_id"
            )
        return Wrapped(result.ciphertext, result.key_id, dict(result.annotations))

    def current_key_id(self) -> str | None:
        """The Status ``key_id`` (v2); ``None`` for v1, an empty key_id or a plugin error."""
        if self.api_version != "v2":
            return None
        client = self._get_client()
        try:
            with _mapped_errors(self.endpoint):
                status = client.status()  # type: ignore[union-attr]
        except InvalidCiphertext:
            return None
        return status.key_id or None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __repr__(self) -> str:
        return f"PluginUnwrapper({self.endpoint!r}, api_version={self.api_version!r})"


class _mapped_errors:  # noqa: N801 - used as a context manager, reads like one
    """Turn ``kms_plugin`` client errors into ``snapshot_tools`` ones."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        if isinstance(exc, plugin_errors.PluginUnavailable):
            raise KMSUnavailable(str(exc)) from None
        if isinstance(exc, plugin_errors.InvalidCiphertext):
            # Opaque on purpose: the plugin refused this encrypted DEK (INVALID_ARGUMENT).
            raise InvalidCiphertext(
                f"KMS plugin at {self.endpoint} refused to decrypt the data key"
            ) from None
        if isinstance(exc, plugin_errors.Error):
            # Any other plugin answer (unknown key_id, permission, internal): it cannot give us
            # this data key. The message names endpoint, method and gRPC code, not payloads.
            raise InvalidCiphertext(str(exc)) from None


class KeyringUnwrapper:
    """Unwrap offline from a ``kms-plugin`` keyring file, without a running plugin.

    The keyring's active KEK gives the current key_id, exactly what the plugin's Status would
    report, so verdicts match a cluster served by that keyring.

    Raises:
        ConfigError: the keyring file is missing, unsafe (group/other access) or malformed.
    """

    def __init__(self, path: str) -> None:
        from kms_plugin.keks.local import Keyring

        try:
            self.keyring = Keyring.load(path)
        except plugin_errors.Error as exc:
            raise ConfigError(f"--keyring {path}: {exc}") from None
        self.path = path

    def _unwrap(self, ciphertext: bytes, key_id: str | None, annotations: Mapping[str, bytes] | None) -> bytes:
        try:
            return self.keyring.unwrap(ciphertext, key_id=key_id, annotations=annotations)
        except plugin_errors.Error:
            # Unknown KEK, key_id mismatch or tampering: opaque on purpose.
            raise InvalidCiphertext(f"keyring {self.path} cannot unwrap this data key") from None

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        return self._unwrap(ciphertext, key_id, dict(annotations) or None)

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        return self._unwrap(ciphertext, None, None)

    def current_key_id(self) -> str | None:
        return self.keyring.active_key_id

    def wrap_v2(self, plaintext: bytes) -> Wrapped:
        wrapped = self.keyring.wrap(plaintext)
        return Wrapped(wrapped.ciphertext, wrapped.key_id, dict(wrapped.annotations))

    def close(self) -> None:
        """Nothing to release; here for symmetry with :class:`PluginUnwrapper`."""

    def __repr__(self) -> str:
        return f"KeyringUnwrapper({self.path!r})"


class AwsKmsUnwrapper:
    """Unwrap offline straight from AWS KMS, without a plugin: every format ``kms-plugin`` reads.

    Our plain format (``"ka"`` + CiphertextBlob), the local-KEK format (``"kh"`` with the wrapped
    local KEK in an ``encrypted-local-kek.*`` annotation; each local KEK is unwrapped once) and
    aws-encryption-provider's (``"1"`` + CiphertextBlob). With a key (``NAME=ARN|alias``) the
    current key_id is computed exactly as the plugin's Status computes it, and values wrapped by
    other keys are refused; without one any key AWS decrypts with is accepted and every value
    is stale (no current key_id).

    Raises:
        ConfigError: bad AWS settings (no region, bad endpoint URL).
    """

    def __init__(self, settings: object) -> None:
        from kms_plugin.keks.aws import AwsKmsBackend
        from kms_plugin.keks.awsclient import AwsKms
        from kms_plugin.keks.hierarchy import LocalKekHierarchy

        try:
            self.backend = AwsKmsBackend(AwsKms(settings))  # type: ignore[arg-type]
        except plugin_errors.Error as exc:
            raise ConfigError(f"--aws-kms: {exc}") from None
        self.key = self.backend.key
        self.reader = LocalKekHierarchy(self.backend, None)

    def _call(self, fn: Callable[[], bytes]) -> bytes:
        try:
            return fn()
        except (plugin_errors.InvalidCiphertext, plugin_errors.UnknownKeyId) as exc:
            raise InvalidCiphertext(f"AWS KMS cannot unwrap this data key: {exc}") from None
        except plugin_errors.Error as exc:
            # Unreachable, throttled, disabled key, no permission: no verdict possible.
            raise KMSUnavailable(str(exc)) from None

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        return self._call(lambda: self.reader.unwrap(ciphertext, key_id, dict(annotations)))

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        return self._call(lambda: self.backend.unwrap(ciphertext, None, {}))

    def current_key_id(self) -> str | None:
        if self.key is None:
            return None
        return self._call(lambda: (self.backend.current_key_id() or "").encode()).decode() or None

    def wrap_v2(self, plaintext: bytes) -> Wrapped:
        """Wrap a new seed with the configured key (our plain ``"ka"`` format; the plugin reads it)."""
        if self.key is None:
            raise KMSUnavailable("--aws-kms NAME=KEY is needed to wrap new data keys (no key given)")
        try:
            self.backend.current_key_id()  # resolves the alias once
            return self.backend.wrap(plaintext)
        except plugin_errors.Error as exc:
            raise KMSUnavailable(str(exc)) from None

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        return f"AwsKmsUnwrapper(key={self.key!r})"

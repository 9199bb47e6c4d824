"""Keys and access: unwrapping KMS-encrypted data keys for ``check``, ``extract`` and ``reencrypt``.

* :class:`KeyAccess`: what the user gave to reach keys (configs, KMS plugin sockets, keyring
  files, AWS KMS), built once by the CLI.
* :func:`open_unwrappers`: one :class:`Unwrapper` per KMS provider name, closed on exit.
* :class:`CachingUnwrapper` unwraps each distinct encrypted DEK source exactly once, even when
  many threads ask at the same time (KMS v2 shares one seed across thousands of objects), and
  bounds the number of calls in flight.
* :class:`PluginUnwrapper` asks a KMS plugin over its unix socket, as kube-apiserver would;
  :class:`KeyringUnwrapper` reads a ``kms-plugin`` keyring file; :class:`AwsKmsUnwrapper` asks
  AWS KMS directly. All three reach ``kms_plugin`` through ``kms_plugin.api`` only.
* :func:`unwrap_error`: the one mapping of their failures to ``InvalidCiphertext`` (the verdict
  ``wrong-key``) or ``KMSUnavailable`` (``kms-unavailable``), DESIGN.md "Keys and verdicts".

References: ``kmsv2/envelope.go`` (``generateCacheKey``: cache by the full DEK source identity),
``envelope/envelope.go`` (v1 cache by encrypted DEK), spec sections 5.2 and 6.4.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from kms_plugin import api as plugin
from snapshot_tools.errors import (
    ConfigError,
    Error,
    InvalidCiphertext,
    KMSUnavailable,
    KMSUnreachable,
    UsageError,
)
from snapshot_tools.providers import kmsv2

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from kms_plugin.api import AwsSettings, KMSv1Client, KMSv2Client, Pkcs11Settings, Wrapped
    from snapshot_tools.keysets import KeySet

T = TypeVar("T")

DEFAULT_MAX_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class KeyAccess:
    """Where keys come from: the configs and how to reach each KMS provider. Built by the CLI.

    Attributes:
        configs: EncryptionConfiguration files or directories, the current one first.
        kms: provider name -> ``unix://`` plugin endpoint (``--kms``; else the config's).
        keyrings: provider name -> ``kms-plugin`` keyring file (``--keyring``).
        aws_kms: provider name -> AWS key (ARN, key id or alias) or None (``--aws-kms``).
        aws: the AWS settings every ``aws_kms`` provider shares (key unset); None without one.
        k3s_token: a K3s/RKE2 server token (``--k3s-token``) that opens the encryption config
            the snapshot itself carries; never shown in ``repr``.
        pkcs11: provider name -> PKCS#11 token and key family (``--pkcs11``).
        k3s_token_file: the file ``--k3s-token @FILE`` read the token from (an input: no output
            may replace it), None otherwise.
    """

    configs: tuple[str, ...] = ()
    kms: Mapping[str, str] = field(default_factory=dict)
    keyrings: Mapping[str, str] = field(default_factory=dict)
    aws_kms: Mapping[str, str | None] = field(default_factory=dict)
    aws: AwsSettings | None = None
    k3s_token: str | None = field(default=None, repr=False)
    pkcs11: Mapping[str, Pkcs11Settings] = field(default_factory=dict)
    k3s_token_file: str | None = None

    def key_files(self) -> list[str]:
        """The files keys are read from besides the configs (keyrings, the token file): inputs."""
        files = list(self.keyrings.values())
        if self.k3s_token_file is not None:
            files.append(self.k3s_token_file)
        return files


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


# -- the one error mapping ----------------------------------------------------------------------

# A plugin's answers about the ciphertext itself (INVALID_ARGUMENT already arrives as
# plugin.InvalidCiphertext); NOT_FOUND is how some plugins say "unknown key_id".
_WRONG_KEY_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND"})


def unwrap_error(exc: plugin.Error, refused: str) -> Error:
    """The one mapping of KMS failures (a plugin's gRPC status, AWS KMS, a keyring) to our errors.

    * An answer about the ciphertext itself: invalid ciphertext (``INVALID_ARGUMENT``), unknown
      key_id (``NOT_FOUND``) -> :class:`InvalidCiphertext` with the message ``refused``: opaque
      on purpose; the verdict is ``wrong-key``.
    * No answer at all: no socket, refused, timed out (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``),
      AWS KMS unreachable or failing -> :class:`KMSUnreachable`.
    * Any other refusal: key disabled or pending deletion (``FAILED_PRECONDITION``), no
      permission, throttled (``RESOURCE_EXHAUSTED``), an internal error ->
      :class:`KMSUnavailable`: the KMS may well hold the key, so no verdict is possible.
    """
    if isinstance(exc, (plugin.InvalidCiphertext, plugin.UnknownKeyId)):
        return InvalidCiphertext(refused)
    if isinstance(exc, plugin.PluginError) and exc.code in _WRONG_KEY_CODES:
        return InvalidCiphertext(f"{refused} ({exc.code})")
    if isinstance(exc, (plugin.PluginUnavailable, plugin.BackendError)):
        return KMSUnreachable(str(exc))
    return KMSUnavailable(str(exc))


def _calling(fn: Callable[[], T], refused: str) -> T:
    """``fn()``, its ``kms_plugin`` errors mapped by :func:`unwrap_error`."""
    try:
        return fn()
    except plugin.Error as exc:
        raise unwrap_error(exc, refused) from None


# -- why a KMS did not answer ---------------------------------------------------------------

# Reasons a KMS endpoint gave no answer (``unreachable``), most specific first.
_REASON_TEXT = {
    "no-socket": "no socket file",
    "not-a-socket": "not a socket",
    "permission-denied": "permission denied",
    "connection-refused": "connection refused",
    "timeout": "timed out",
    "tls": "TLS handshake failed",
    "error": "no answer",
}
_MESSAGE_REASONS = (
    ("timeout", re.compile(r"DEADLINE_EXCEEDED|timed? ?out|Timeout", re.IGNORECASE)),
    ("permission-denied", re.compile(r"permission denied|EACCES|AccessDenied", re.IGNORECASE)),
    ("connection-refused", re.compile(r"connection refused|ECONNREFUSED|Could not connect", re.IGNORECASE)),
    ("no-socket", re.compile(r"No such file|does not exist|ENOENT", re.IGNORECASE)),
    ("not-a-socket", re.compile(r"not a socket|ENOTSOCK", re.IGNORECASE)),
    ("tls", re.compile(r"\bSSL|\bTLS|certificate", re.IGNORECASE)),
)


@dataclass(frozen=True, slots=True)
class KmsProblem:
    """A KMS provider that gave no verdict-worthy answer: which endpoint, and why.

    ``status`` is ``unreachable`` (no answer: ``reason`` says why) or ``unavailable`` (it
    answered with a refusal: ``reason`` is its gRPC code in lower case, or ``refused``).
    ``detail`` is the raw error text (gRPC status code and details), shown only on demand.
    Never carries key material: endpoints, paths and codes only.
    """

    provider: str
    endpoint: str
    status: str
    reason: str
    detail: str = field(default="", compare=False)

    def describe(self, debug: bool = False) -> str:
        """One stderr line."""
        why = _REASON_TEXT.get(self.reason, self.reason)
        line = f"KMS provider {self.provider!r} at {self.endpoint}: {self.status} ({why})"
        return f"{line}; {self.detail}" if debug and self.detail else line

    def to_json(self, debug: bool = False) -> dict[str, str]:
        out = {"provider": self.provider, "endpoint": self.endpoint, "status": self.status, "reason": self.reason}
        if debug and self.detail:
            out["detail"] = self.detail
        return out


def _socket_reason(path: str) -> str | None:
    """Why a unix socket path cannot be connected to, found by ``stat`` alone; None: it looks fine."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no-socket"
    except PermissionError:
        return "permission-denied"  # a parent directory is not searchable
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return "not-a-socket"
    if not os.access(path, os.W_OK):
        return "permission-denied"  # connect(2) needs write permission on the socket
    return None


def _diagnose(provider: str, inner: object, unreachable: bool, message: str) -> KmsProblem:
    endpoint = "?"
    reason: str | None = None
    detail = message
    if isinstance(inner, PluginUnwrapper):
        endpoint = inner.endpoint
        detail = message.removeprefix(f"KMS plugin at {endpoint}: ")
        path = endpoint.removeprefix("unix://")
        if unreachable and not path.startswith("@"):
            reason = _socket_reason(path)
    elif isinstance(inner, KeyringUnwrapper):
        endpoint = f"keyring {inner.path}"
    elif isinstance(inner, AwsKmsUnwrapper):
        endpoint = f"aws-kms {inner.key}" if inner.key else "aws-kms"
    elif isinstance(inner, Pkcs11Unwrapper):
        endpoint = inner.describe()
    if not unreachable:
        code = re.search(r"\b([A-Z][A-Z_]{3,})\b", detail)
        return KmsProblem(provider, endpoint, "unavailable", code.group(1).lower() if code else "refused", detail)
    if reason is None:
        reason = next((r for r, rx in _MESSAGE_REASONS if rx.search(message)), "error")
    return KmsProblem(provider, endpoint, "unreachable", reason, detail)


def kms_problems(unwrappers: Mapping[str, Unwrapper]) -> list[KmsProblem]:
    """One :class:`KmsProblem` per KMS provider that failed to answer during the run, by name."""
    out = []
    for name in sorted(unwrappers):
        unwrapper = unwrappers[name]
        failure = getattr(unwrapper, "failure", None)
        if failure is not None:
            unreachable, message = failure
            out.append(_diagnose(name, getattr(unwrapper, "inner", unwrapper), unreachable, message))
    return out


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
    call), KMS v1 the encrypted DEK bytes. Answers about a source are kept: its plaintext, or
    the refusal of its ciphertext (``InvalidCiphertext``). A :class:`KMSUnavailable` is not an
    answer about the source and is never kept: callers waiting for that call see it, the next
    one asks again. Only after a :class:`KMSUnreachable` does every later call for a new source
    fail fast with it: a dead plugin costs one timeout per provider, not one per object.

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
        self._unreachable: str | None = None
        self._key_id: _Entry | None = None
        # The first failure to answer, (unreachable?, message), for :func:`kms_problems`.
        self.failure: tuple[bool, str] | None = None

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        key = b"v2" + kmsv2.cache_key(kmsv2.AES_GCM_KEY, ciphertext, key_id, annotations)
        return self._get(key, lambda: self.inner.unwrap_v2(ciphertext, key_id, annotations))

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        return self._get(b"v1" + ciphertext, lambda: self.inner.unwrap_v1(ciphertext))

    def current_key_id(self) -> str | None:
        """Asked of ``inner`` once; the answer (or a failure other than unavailability) is kept."""
        with self._lock:
            entry = self._key_id
            owner = entry is None
            if owner:
                entry = self._key_id = _Entry()
        assert entry is not None
        if owner:

            def forget() -> None:
                if self._key_id is entry:
                    self._key_id = None

            self._fill(entry, lambda: (self.inner.current_key_id() or "").encode(), forget)
        return self._result(entry).decode() or None

    def wrap_v2(self, plaintext: bytes) -> Wrapped:
        """Wrap a new seed through ``inner`` (not cached: a rewrite wraps one fresh seed)."""
        wrap = getattr(self.inner, "wrap_v2", None)
        if wrap is None:
            raise KMSUnavailable(f"{self.inner!r} cannot wrap data keys")
        return cast("Wrapped", wrap(plaintext))

    def kek_id(self, key_id: str) -> str | None:
        """The KEK id behind ``key_id`` when the inner unwrapper knows it (a keyring)."""
        find = getattr(self.inner, "kek_id", None)
        return cast("str | None", find(key_id)) if find is not None else None

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def _get(self, key: bytes, call: Callable[[], bytes]) -> bytes:
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if owner:
                if self._unreachable is not None:
                    raise KMSUnreachable(self._unreachable)
                entry = self._entries[key] = _Entry()
        assert entry is not None
        if owner:

            def forget() -> None:
                if self._entries.get(key) is entry:
                    del self._entries[key]

            self._fill(entry, call, forget)
        return self._result(entry)

    def _fill(self, entry: _Entry, call: Callable[[], bytes], forget: Callable[[], None]) -> None:
        """Run ``call`` into ``entry``; ``forget`` (under the lock) drops what must not be kept."""
        keep = True
        try:
            with self._slots:
                entry.value = call()
        except KMSUnavailable as exc:
            entry.error = (type(exc), str(exc))
            keep = False
            unreachable = isinstance(exc, KMSUnreachable)
            with self._lock:
                if unreachable:
                    self._unreachable = self._unreachable or str(exc)
                if self.failure is None or (unreachable and not self.failure[0]):
                    self.failure = (unreachable, str(exc))
        except Error as exc:
            entry.error = (type(exc), str(exc))
        except BaseException as exc:
            # A bug, not a verdict: waiters see it too, but nothing is cached.
            entry.error = (Error, f"unwrapping failed: {type(exc).__name__}")
            keep = False
            raise
        finally:
            if not keep:
                with self._lock:
                    forget()
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
        return f"CachingUnwrapper({self.inner!r})"


# -- a KMS plugin over its unix socket ----------------------------------------------------------


class PluginUnwrapper:
    """Unwrap through a KMS plugin socket.

    The endpoint is checked at once; the gRPC channel opens on first use.

    Args:
        endpoint: ``unix:///path/to/socket`` or ``unix:///@abstract-name``.
        timeout: seconds per call (the provider's ``timeout``, default 3 s as upstream).
        api_version: ``"v2"`` or ``"v1"`` (KMS v1beta1).

    Raises:
        ConfigError: a malformed endpoint or an unknown API version.
    """

    def __init__(self, endpoint: str, timeout: float = 3.0, api_version: str = "v2") -> None:
        if api_version not in ("v1", "v2"):
            raise ConfigError(f"KMS apiVersion must be v1 or v2, got {api_version!r}")
        try:
            plugin.check_endpoint(endpoint)
        except plugin.ConfigError as exc:
            raise ConfigError(str(exc)) from None
        self.endpoint = endpoint
        self.timeout = timeout
        self.api_version = api_version
        self._refused = f"KMS plugin at {endpoint} refused to decrypt the data key"
        self._lock = threading.Lock()
        self._client: KMSv1Client | KMSv2Client | None = None

    def _get_client(self) -> KMSv1Client | KMSv2Client:
        with self._lock:
            if self._client is None:
                self._client = plugin.plugin_client(self.endpoint, self.timeout, self.api_version)
            return self._client

    def _v2(self) -> KMSv2Client:
        if self.api_version != "v2":
            raise self._wrong_version("v2")
        return cast("KMSv2Client", self._get_client())

    def _v1(self) -> KMSv1Client:
        if self.api_version != "v1":
            raise self._wrong_version("v1")
        return cast("KMSv1Client", self._get_client())

    def _wrong_version(self, wanted: str) -> KMSUnavailable:
        return KMSUnavailable(
            f"KMS plugin at {self.endpoint} is configured as apiVersion {self.api_version}; "
            f"it cannot unwrap KMS {wanted} data keys"
        )

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        client = self._v2()
        return _calling(lambda: client.decrypt(ciphertext, key_id, dict(annotations)), self._refused)

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        client = self._v1()
        return _calling(lambda: client.decrypt(ciphertext), self._refused)

    def wrap_v2(self, plaintext: bytes) -> Wrapped:
        """Encrypt a seed as the apiserver does: Status, then Encrypt; both key_ids must agree."""
        client = self._v2()
        status = _calling(client.status, self._refused)
        result = _calling(lambda: client.encrypt(plaintext), self._refused)
        if status.healthz != "ok":
            raise KMSUnavailable(f"KMS plugin at {self.endpoint} is not healthy: {status.healthz}")
        if result.key_id != status.key_id:
            raise KMSUnavailable(
                f"KMS plugin at {self.endpoint}: Encrypt key_id differs from Status key_id"
            )
        return plugin.Wrapped(result.ciphertext, result.key_id, dict(result.annotations))

    def current_key_id(self) -> str | None:
        """The Status ``key_id`` (v2); ``None`` for v1, an empty key_id or an error answer.

        Raises:
            KMSUnreachable: the plugin did not answer.
        """
        if self.api_version != "v2":
            return None
        client = self._v2()
        try:
            status = _calling(client.status, self._refused)
        except KMSUnreachable:
            raise
        except (InvalidCiphertext, KMSUnavailable):
            return None
        return status.key_id or None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __repr__(self) -> str:
        return f"PluginUnwrapper({self.endpoint!r}, api_version={self.api_version!r})"


class KeyringUnwrapper:
    """Unwrap offline from a ``kms-plugin`` keyring file, without a running plugin.

    The keyring's active KEK gives the current key_id, exactly what the plugin's Status would
    report, so verdicts match a cluster served by that keyring.

    Raises:
        ConfigError: the keyring file is missing, unsafe (group/other access) or malformed.
    """

    def __init__(self, path: str) -> None:
        try:
            self.keyring = plugin.open_keyring(path)
        except plugin.Error as exc:
            raise ConfigError(f"--keyring {path}: {exc}") from None
        self.path = path
        self._refused = f"keyring {path} cannot unwrap this data key"
        self._kek_ids = {str(k["key_id"]): str(k["id"]) for k in self.keyring.describe()}

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        given = dict(annotations) or None
        return _calling(
            lambda: self.keyring.unwrap(ciphertext, key_id=key_id, annotations=given), self._refused
        )

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        return _calling(
            lambda: self.keyring.unwrap(ciphertext, key_id=None, annotations=None), self._refused
        )

    def current_key_id(self) -> str | None:
        return self.keyring.active_key_id

    def kek_id(self, key_id: str) -> str | None:
        """The id of the keyring's KEK whose key_id is ``key_id`` (both are safe to print)."""
        return self._kek_ids.get(key_id)

    def wrap_v2(self, plaintext: bytes) -> Wrapped:
        wrapped = self.keyring.wrap(plaintext)
        return plugin.Wrapped(wrapped.ciphertext, wrapped.key_id, dict(wrapped.annotations))

    def close(self) -> None:
        """Nothing to release; here for symmetry with :class:`PluginUnwrapper`."""

    def __repr__(self) -> str:
        return f"KeyringUnwrapper({self.path!r})"


class AwsKmsUnwrapper:
    """Unwrap offline straight from AWS KMS, without a plugin: every format ``kms-plugin`` reads.

    With a key (``NAME=ARN|alias``) the current key_id is computed exactly as the plugin's Status
    computes it, and values wrapped by other keys are refused; without one any key AWS decrypts
    with is accepted and every value is stale (no current key_id).

    Raises:
        ConfigError: bad AWS settings (no region, bad endpoint URL).
    """

    _refused = "AWS KMS cannot unwrap this data key"

    def __init__(self, settings: AwsSettings, key: str | None) -> None:
        try:
            self.keys = plugin.AwsKmsKeys(settings, key)
        except plugin.Error as exc:
            raise ConfigError(f"--aws-kms: {exc}") from None
        self.key = key

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        return _calling(lambda: self.keys.unwrap(ciphertext, key_id, annotations), self._refused)

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        return _calling(lambda: self.keys.unwrap_v1(ciphertext), self._refused)

    def current_key_id(self) -> str | None:
        return _calling(self.keys.current_key_id, self._refused) or None

    def wrap_v2(self, plaintext: bytes) -> Wrapped:
        """Wrap a new seed with the configured key (our plain ``"ka"`` format; the plugin reads it)."""
        if self.key is None:
            raise KMSUnavailable("--aws-kms NAME=KEY is needed to wrap new data keys (no key given)")
        return _calling(lambda: self.keys.wrap(plaintext), self._refused)

    def close(self) -> None:
        self.keys.close()

    def __repr__(self) -> str:
        return f"AwsKmsUnwrapper(key={self.key!r})"


class Pkcs11Unwrapper:
    """Unwrap offline straight from the PKCS#11 token, without a plugin: every format the
    PKCS#11 plugin writes (``"kx"`` and the local-KEK format). The current key_id is the one
    the plugin's Status reports (the key family's highest generation ``K-<n>``); a value
    wrapped by a key outside the family is ``wrong-key``. A missing token, a refused PIN or a
    family with no key leave every value ``kms-unavailable`` (exit 4).

    Raises:
        ConfigError: the PKCS#11 module cannot be loaded.
    """

    def __init__(self, settings: Pkcs11Settings) -> None:
        try:
            self.keys = plugin.Pkcs11Keys(settings)
        except plugin.Error as exc:
            raise ConfigError(f"--pkcs11: {exc}") from None
        self.settings = settings
        self._refused = f"PKCS#11 key family {settings.key_label!r} cannot unwrap this data key"

    def describe(self) -> str:
        return f"pkcs11 token {self.settings.token_label} key {self.settings.key_label}"

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        return _calling(lambda: self.keys.unwrap(ciphertext, key_id, annotations), self._refused)

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        return _calling(lambda: self.keys.unwrap_v1(ciphertext), self._refused)

    def current_key_id(self) -> str | None:
        return _calling(self.keys.current_key_id, self._refused) or None

    def wrap_v2(self, plaintext: bytes) -> Wrapped:
        """Wrap a new seed with the current key (the plugin's plain ``"kx"`` format)."""
        return _calling(lambda: self.keys.wrap(plaintext), self._refused)

    def close(self) -> None:
        self.keys.close()

    def __repr__(self) -> str:
        return f"Pkcs11Unwrapper({self.describe()!r})"


# -- opening them -------------------------------------------------------------------------------


def _check_provider_names(keyset: KeySet, access: KeyAccess) -> None:
    """A KMS flag naming a provider no config has would be ignored: a typo, or the wrong configs.

    Raises:
        UsageError: naming the flag, the name and the KMS provider names the configs do have.
    """
    have = keyset.kms_provider_names()
    for flag, names in (("--kms", access.kms), ("--keyring", access.keyrings), ("--aws-kms", access.aws_kms),
                        ("--pkcs11", access.pkcs11)):  # fmt: skip
        for name in names:
            if name not in have:
                listed = (
                    f"the configs' KMS providers are {', '.join(repr(n) for n in have)}"
                    if have
                    else "the configs given have no KMS provider"
                )
                raise UsageError(f"{flag} names provider {name!r}, which no config given has; {listed}")


@contextmanager
def open_unwrappers(keyset: KeySet, access: KeyAccess) -> Iterator[dict[str, Unwrapper]]:
    """One caching unwrapper per KMS provider name, closed on exit.

    ``--aws-kms``, ``--keyring`` and ``--kms`` name providers first; every other KMS provider
    of the configs is reached at its configured endpoint.

    Raises:
        UsageError: two flags name the same provider.
        ConfigError: a bad endpoint, keyring file or AWS setting.
    """
    kms, keyrings, aws_kms = access.kms, access.keyrings, access.aws_kms
    for a, b, names in (("--kms", "--keyring", set(kms) & set(keyrings)),
                        ("--kms", "--aws-kms", set(kms) & set(aws_kms)),
                        ("--keyring", "--aws-kms", set(keyrings) & set(aws_kms))):  # fmt: skip
        if names:
            raise UsageError(f"{a} and {b} may not both name provider {min(names)!r}")
    for flag, given in (("--kms", kms), ("--keyring", keyrings), ("--aws-kms", aws_kms)):
        if set(given) & set(access.pkcs11):
            raise UsageError(f"{flag} and --pkcs11 may not both name provider {min(set(given) & set(access.pkcs11))!r}")
    _check_provider_names(keyset, access)
    opened: list[CachingUnwrapper] = []
    unwrappers: dict[str, Unwrapper] = {}

    def add(name: str, inner: Unwrapper) -> None:
        caching = CachingUnwrapper(inner)
        opened.append(caching)
        unwrappers[name] = caching

    try:
        if aws_kms:
            assert access.aws is not None, "KeyAccess.aws is set with aws_kms"
            for name, key in aws_kms.items():
                add(name, AwsKmsUnwrapper(access.aws, key))
        tokens: dict[Pkcs11Settings, Pkcs11Unwrapper] = {}  # one login per token and family
        for name, settings in access.pkcs11.items():
            if settings not in tokens:
                tokens[settings] = Pkcs11Unwrapper(settings)
            add(name, tokens[settings])
        for name, path in keyrings.items():
            add(name, KeyringUnwrapper(path))
        for name, endpoint in kms.items():
            provider = keyset.kms_provider(name)
            version = provider.api_version if provider is not None else "v2"
            add(name, PluginUnwrapper(endpoint, api_version=version))
        for provider in keyset.kms_all():
            if provider.name not in unwrappers:
                add(
                    provider.name,
                    PluginUnwrapper(
                        provider.endpoint, timeout=provider.timeout_s, api_version=provider.api_version
                    ),
                )
        yield unwrappers
    finally:
        for caching in opened:
            caching.close()

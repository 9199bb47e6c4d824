"""The public surface of ``kms_plugin`` for other packages (``snapshot_tools``): nothing else.

* the error classes and the exit codes both CLIs share (:mod:`kms_plugin.errors`);
* :class:`Wrapped`, a wrap result;
* the KMS plugin clients, made by :func:`plugin_client` (:func:`check_endpoint` validates an
  endpoint without connecting);
* the offline unwrap entry points: a keyring file (:func:`open_keyring`), AWS KMS
  (:func:`aws_settings`, :class:`AwsKmsKeys`) and a PKCS#11 token (:func:`pkcs11_settings`,
  :class:`Pkcs11Keys`), reading every format the plugin writes.

Running a console script with the shared exit policy is :mod:`kms_plugin.cli_runner`; stop
signals as exceptions are :mod:`kms_plugin.stop_signals`. Cheap to import: cryptography, grpc
and boto3 load when a keyring, a client, AWS settings or an AWS reader are first made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict, Unpack

from kms_plugin.errors import (
    EXIT_FINDINGS,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_KMS,
    EXIT_OK,
    EXIT_USAGE,
    BackendError,
    BackendThrottled,
    ConfigError,
    Error,
    InvalidCiphertext,
    InvalidRequest,
    KeyUnavailable,
    PluginError,
    PluginUnavailable,
    UnknownKeyId,
)
from kms_plugin.keks.base import Wrapped
from kms_plugin.keks.pkcs11format import KeyRef as Pkcs11KeyRef  # pure: hashlib and re only

if TYPE_CHECKING:
    from collections.abc import Mapping

    # For annotations only (they import grpc and boto3); ``as`` re-exports them to type checkers.
    from kms_plugin.client import KMSv1Client as KMSv1Client
    from kms_plugin.client import KMSv2Client as KMSv2Client
    from kms_plugin.keks.awsclient import AwsSettings as AwsSettings
    from kms_plugin.keks.local import Keyring as Keyring
    from kms_plugin.keks.pkcs11pool import Pkcs11Settings as Pkcs11Settings

__all__ = [
    "EXIT_FINDINGS",
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "EXIT_KMS",
    "EXIT_OK",
    "EXIT_USAGE",
    "AwsKmsKeys",
    "AwsLimits",
    "BackendError",
    "BackendThrottled",
    "ConfigError",
    "Error",
    "InvalidCiphertext",
    "InvalidRequest",
    "KeyUnavailable",
    "Pkcs11KeyRef",
    "Pkcs11Keys",
    "PluginError",
    "PluginUnavailable",
    "UnknownKeyId",
    "Wrapped",
    "aws_settings",
    "check_endpoint",
    "open_keyring",
    "pkcs11_settings",
    "pkcs11_wrapping_ref",
    "plugin_client",
    "wrapped_kek_id",
]


def check_endpoint(endpoint: str) -> None:
    """Validate a ``unix:///path`` or ``unix:///@name`` endpoint without connecting.

    Raises:
        ConfigError: anything that is not a valid ``unix://`` endpoint.
    """
    from kms_plugin.endpoint import parse_unix_endpoint

    parse_unix_endpoint(endpoint)


def open_keyring(path: str) -> Keyring:
    """A ``kms-plugin`` keyring file, loaded once (``wrap``, ``unwrap``, ``active_key_id``).

    Raises:
        ConfigError: the file is missing, unsafe (group/other access) or malformed.
    """
    from kms_plugin.keks.local import Keyring

    return Keyring.load(path)


def pkcs11_wrapping_ref(ciphertext: bytes, annotations: Mapping[str, bytes]) -> bytes | None:
    """The 8-byte ref of the PKCS#11 key that wrapped a value the PKCS#11 plugin wrote (its
    ``"kx"`` format, or a local KEK in that format): ``key_ref(key_id)``; None for any other
    format. Not authenticated until unwrapped."""
    from kms_plugin.keks.pkcs11format import wrapping_ref

    return wrapping_ref(ciphertext, dict(annotations))


def wrapped_kek_id(ciphertext: bytes) -> str | None:
    """The keyring KEK id a wrapped key in ``kms-plugin``'s keyring format names in its header
    (not authenticated until unwrapped); ``None`` for any other format or a malformed header."""
    from kms_plugin.keks import format as wire

    try:
        return wire.parse(ciphertext).kek_id
    except InvalidCiphertext:
        return None


def plugin_client(endpoint: str, timeout: float, api_version: str) -> KMSv1Client | KMSv2Client:
    """A blocking client of the plugin at ``endpoint``: KMS ``"v2"`` or ``"v1"`` (v1beta1).

    gRPC answers become the error classes above; a :class:`PluginError` keeps the gRPC code.
    """
    from kms_plugin.client import KMSv1Client, KMSv2Client

    if api_version == "v2":
        return KMSv2Client(endpoint, timeout=timeout)
    return KMSv1Client(endpoint, timeout=timeout)


class AwsLimits(TypedDict, total=False):
    """Limits of AWS KMS calls; what is left out keeps :class:`AwsSettings`' default."""

    max_qps: float
    max_in_flight: int
    call_timeout: float
    read_timeout: float
    max_attempts: int


def aws_settings(
    region: str | None,
    endpoint_url: str | None,
    encryption_context: str,
    *,
    key: str | None = None,
    **limits: Unpack[AwsLimits],
) -> AwsSettings:
    """AWS KMS settings from command-line values: the plugin's (with its ``key``) and the offline
    readers' (without one: :class:`AwsKmsKeys` adds one per provider).

    Raises:
        ConfigError: a malformed encryption context (``k=v[,k=v...]``) or bad limits.
    """
    from kms_plugin.keks.awsclient import AwsSettings
    from kms_plugin.keks.awsformat import parse_encryption_context

    context = parse_encryption_context(encryption_context)
    return AwsSettings(key=key, region=region, endpoint_url=endpoint_url, encryption_context=context, **limits)


class AwsKmsKeys:
    """AWS KMS without a plugin: unwrap every format ``kms-plugin`` reads, wrap with its key.

    Our plain format, the local-KEK format (each local KEK unwrapped once) and
    aws-encryption-provider's. With a ``key`` the current key_id is the one the plugin's Status
    would report and values wrapped by other keys are refused; without one any key AWS decrypts
    with is accepted and there is no current key_id.

    Raises:
        ConfigError: bad AWS settings (no region, bad endpoint URL).
    """

    def __init__(self, settings: AwsSettings, key: str | None) -> None:
        import dataclasses

        from kms_plugin.keks.aws import AwsKmsBackend
        from kms_plugin.keks.awsclient import AwsKms
        from kms_plugin.keks.hierarchy import LocalKekHierarchy

        self._backend = AwsKmsBackend(AwsKms(dataclasses.replace(settings, key=key)))
        self._reader = LocalKekHierarchy(self._backend, None)
        self.key = key

    def unwrap(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        """A KMS v2 ``encryptedDEKSource``, in any format the plugin writes."""
        return self._reader.unwrap(ciphertext, key_id, dict(annotations))

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        """A KMS v1 encrypted DEK (no key_id, no annotations)."""
        return self._backend.unwrap(ciphertext, None, {})

    def current_key_id(self) -> str | None:
        """The key_id the plugin's Status would report for ``key`` now; None without a key."""
        if self.key is None:
            return None
        return self._backend.current_key_id()

    def wrap(self, plaintext: bytes) -> Wrapped:
        """Wrap with ``key`` in the plugin's plain format (the alias is resolved first)."""
        self._backend.current_key_id()
        return self._backend.wrap(plaintext)

    def close(self) -> None:
        self._backend.close()

    def __repr__(self) -> str:
        return f"AwsKmsKeys(key={self.key!r})"


def pkcs11_settings(
    module: str, token_label: str, key_label: str, pin: str | None, *, max_sessions: int = 4
) -> Pkcs11Settings:
    """PKCS#11 settings from command-line values; ``pin`` is ``@FILE`` or None (the environment).

    Raises:
        ConfigError: a bare PIN on the command line, a malformed key label or bad limits.
    """
    from kms_plugin.keks.pkcs11format import check_base_label
    from kms_plugin.keks.pkcs11pin import pin_source
    from kms_plugin.keks.pkcs11pool import Pkcs11Settings

    source = pin_source(pin)
    check_base_label(key_label)
    return Pkcs11Settings(module, token_label, key_label, source, max_sessions=max_sessions)


class Pkcs11Keys:
    """A PKCS#11 key family without a plugin: unwrap every format the PKCS#11 plugin writes.

    Its plain format (``"kx"``) and the local-KEK format (each local KEK unwrapped once by the
    token). The current key_id is the one the plugin's Status would report (the highest
    generation ``K-<n>``); values wrapped by keys outside the family are refused.

    Raises:
        ConfigError: the module cannot be loaded, or no PIN can be read.
    """

    def __init__(self, settings: Pkcs11Settings) -> None:
        from kms_plugin.keks.hierarchy import LocalKekHierarchy
        from kms_plugin.keks.pkcs11 import Pkcs11Backend

        self._backend = Pkcs11Backend(settings)
        self._backend.pool.load()
        settings.pin.read()  # a missing or unsafe PIN file is a config error, not an unavailable KMS
        self._reader = LocalKekHierarchy(self._backend, None)
        self.settings = settings

    def unwrap(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        """A KMS v2 ``encryptedDEKSource``, in any format the plugin writes."""
        self._backend.current_key_id()
        return self._reader.unwrap(ciphertext, key_id, dict(annotations))

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        """A KMS v1 encrypted DEK (no key_id, no annotations)."""
        self._backend.current_key_id()
        return self._backend.unwrap(ciphertext, None, {})

    def current_key_id(self) -> str | None:
        """The key_id the plugin's Status would report now (the token is read once)."""
        return self._backend.current_key_id()

    def family(self) -> tuple[list[Pkcs11KeyRef], list[Pkcs11KeyRef]]:
        """(live generations, retired generations) in the token now, oldest first."""
        return self._backend.scan_all()

    def wrap(self, plaintext: bytes) -> Wrapped:
        """Wrap with the current key in the plugin's plain ``"kx"`` format (the plugin reads it)."""
        self._backend.current_key_id()
        return self._backend.wrap(plaintext)

    def close(self) -> None:
        self._backend.close()

    def __repr__(self) -> str:
        return f"Pkcs11Keys(token={self.settings.token_label!r}, key={self.settings.key_label!r})"

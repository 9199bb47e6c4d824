"""The storage forms of a stored etcd value, and the one place that knows their prefixes.

Every form kube-apiserver writes is one :class:`Format`: ``identity`` (no prefix), the three
static-key providers (``aescbc``, ``aesgcm``, ``secretbox``: a :class:`StaticProvider` record
each, from its own module) and the two KMS envelopes (``kms-v1``, ``kms-v2``: their modules are
called by the KMS reader, which unwraps the data key first). Code that asks which form a value has, which
provider a config kind names, or which prefix to write asks here; nothing else lists providers or
matches prefixes.

References: ``staging/src/k8s.io/apiserver/pkg/server/options/encryptionconfig/config.go``
(prefix constants), spec section 1.1.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapshot_tools.providers import aescbc, aesgcm, secretbox
from snapshot_tools.providers._common import ENCRYPTED_PREFIX, StaticProvider

__all__ = [
    "ENCRYPTED_PREFIX",
    "FORMATS",
    "IDENTITY",
    "KMS_API_VERSIONS",
    "STATIC_NAMES",
    "Format",
    "StaticProvider",
    "by_name",
    "format_of",
    "kms_prefix",
    "static_prefix",
    "static_provider",
    "storage_form",
]

@dataclass(frozen=True, slots=True)
class Format:
    """One storage form: its name in reports and JSON, its prefix and how it is read."""

    name: str  # "identity", "aescbc", "aesgcm", "secretbox", "kms-v1", "kms-v2"
    prefix: bytes  # b"" for identity
    static: StaticProvider | None = None  # set for the three static forms
    kms_version: str | None = None  # "v1" / "v2" for the KMS envelopes


IDENTITY = Format("identity", b"")
_STATIC: tuple[StaticProvider, ...] = (aescbc.PROVIDER, aesgcm.PROVIDER, secretbox.PROVIDER)
# Every encrypted form, in the order values are matched against the prefixes (none is a prefix
# of another, so the order only fixes what is tried first).
FORMATS: tuple[Format, ...] = (
    *(Format(p.name, p.prefix, static=p) for p in _STATIC),
    Format("kms-v1", b"k8s:enc:kms:v1:", kms_version="v1"),
    Format("kms-v2", b"k8s:enc:kms:v2:", kms_version="v2"),
)
STATIC_NAMES: tuple[str, ...] = tuple(p.name for p in _STATIC)
KMS_API_VERSIONS: tuple[str, ...] = tuple(f.kms_version for f in FORMATS if f.kms_version)

_BY_NAME = {f.name: f for f in (IDENTITY, *FORMATS)}
_STATIC_BY_NAME = {p.name: p for p in _STATIC}
_KMS_BY_VERSION = {f.kms_version: f for f in FORMATS if f.kms_version}


def format_of(value: bytes) -> Format | None:
    """The form of a stored value, by its prefix alone (no keys needed).

    Returns :data:`IDENTITY` for a value without ``k8s:enc:``, ``None`` for a ``k8s:enc:``
    prefix no provider writes.
    """
    if not value.startswith(ENCRYPTED_PREFIX):
        return IDENTITY
    for fmt in FORMATS:
        if value.startswith(fmt.prefix):
            return fmt
    return None


def by_name(name: str) -> Format:
    """The form called ``name`` (``identity``, ``aescbc``, ..., ``kms-v2``).

    Raises:
        ValueError: no such form.
    """
    fmt = _BY_NAME.get(name)
    if fmt is None:
        raise ValueError(f"storage form must be one of {', '.join(_BY_NAME)}, got {name!r}")
    return fmt


def static_provider(name: str) -> StaticProvider:
    """The static provider a config's provider kind names (``aescbc``, ``aesgcm``, ``secretbox``).

    Raises:
        ValueError: not a static provider (``identity``, ``kms`` or unknown).
    """
    provider = _STATIC_BY_NAME.get(name)
    if provider is None:
        raise ValueError(f"provider must be one of {', '.join(STATIC_NAMES)}, got {name!r}")
    return provider


def static_prefix(provider: str, keyname: str) -> bytes:
    """``k8s:enc:<provider>:v1:<keyname>:`` for aescbc, aesgcm or secretbox.

    Raises:
        ValueError: unknown provider or empty key name.
    """
    prefix = static_provider(provider).prefix
    if not keyname:
        raise ValueError("key name must not be empty")
    return prefix + keyname.encode() + b":"


def kms_prefix(api_version: str, name: str) -> bytes:
    """``k8s:enc:kms:<v1|v2>:<name>:``.

    Raises:
        ValueError: unknown API version, empty name, or a v2 name containing ``:``.
    """
    fmt = _KMS_BY_VERSION.get(api_version)
    if fmt is None:
        raise ValueError(f"KMS apiVersion must be v1 or v2, got {api_version!r}")
    if not name:
        raise ValueError("KMS provider name must not be empty")
    if api_version == "v2" and ":" in name:
        raise ValueError("KMS v2 provider name must not contain ':'")
    return fmt.prefix + name.encode() + b":"


def storage_form(value: bytes) -> tuple[str, str | None]:
    """Return ``(form, name)`` for a stored value (``status`` counts these).

    ``form`` is a :class:`Format` name, or ``"unknown"`` for a ``k8s:enc:`` prefix no provider
    writes. ``name`` is the key (static providers) or KMS provider name, ``None`` for identity or
    when the value ends before a name separator. Key and KMS provider names are not escaped and
    may contain ``:``, so this is only the text up to the next ``:`` - good for counting and
    display; the readers match real names against the configs.
    """
    fmt = format_of(value)
    if fmt is None:
        return "unknown", None
    if fmt is IDENTITY:
        return "identity", None
    start = len(fmt.prefix)
    end = value.find(b":", start)
    if end <= start:
        return fmt.name, None
    return fmt.name, value[start:end].decode("utf-8", "replace")

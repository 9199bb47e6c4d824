"""What the stored-value providers share: the static-provider record, sizes, key checks and
the per-key cache rule.

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/aes/aes.go`` (sizes),
``.../apis/apiserver/validation/validation_encryption.go`` (``aesKeySizes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

_T = TypeVar("_T")

# Reserved: identity refuses to read data that starts with it (spec 1.1).
ENCRYPTED_PREFIX = b"k8s:enc:"
AES_KEY_SIZES = (16, 24, 32)
BLOCK_SIZE = 16
GCM_NONCE_SIZE = 12
GCM_TAG_SIZE = 16

# One opaque text for every failed authentication or padding check: no oracle (STYLE.md 4).
DECRYPTION_FAILED = "decryption failed"

# Per-key cipher objects are cached; the caches are cleared wholesale when they grow past this
# (KMS v1 has one DEK per object, so an unbounded cache would grow with the snapshot).
KEY_CACHE_LIMIT = 1024


def check_aes_key(key: bytes, what: str) -> None:
    """Raise ``ValueError`` unless ``key`` is a valid AES key length."""
    if len(key) not in AES_KEY_SIZES:
        raise ValueError(f"{what} key must be 16, 24 or 32 bytes, got {len(key)}")


def check_size(value: bytes, size: int, what: str) -> None:
    """Raise ``ValueError`` unless ``value`` is exactly ``size`` bytes (IVs, nonces)."""
    if len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(value)}")


def remember(cache: dict[bytes, _T], key: bytes, value: _T) -> _T:
    """``cache[key] = value``, emptying a full cache first; returns ``value``."""
    if len(cache) >= KEY_CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class StaticProvider:
    """A static-key provider: a value is ``prefix || <keyname> ":" || body`` and the body is
    sealed with a key listed in the config (spec sections 2-4). One instance per provider
    (``aescbc.PROVIDER``, ...); the registry lists them.

    ``decrypt(key, body, aad)`` raises ``errors.InvalidCiphertext`` (opaque) when authentication
    or padding fails and ``errors.MalformedValue`` (exact reason) for broken framing; a key of a
    size not in ``key_sizes`` is a ``ValueError``. ``encrypt(key, plaintext, aad)`` draws a fresh
    IV or nonce and hands it to the module's deterministic core (``_encrypt_from_parts``, which
    the golden vectors pin). Both take ``aad``; only providers with ``needs_aad`` use it.
    """

    name: str  # the config's provider kind and the report's form: "aescbc" | "aesgcm" | "secretbox"
    key_sizes: tuple[int, ...]  # valid key lengths in bytes
    authenticated: bool  # False for aescbc: a read must also parse as a Kubernetes object
    needs_aad: bool  # True when the etcd key is bound in as AAD (aesgcm)
    decrypt: Callable[[bytes, bytes | memoryview, bytes], bytes]  # (key, body, aad) -> plaintext
    encrypt: Callable[[bytes, bytes, bytes], bytes]  # (key, plaintext, aad) -> body
    prefix: bytes = field(init=False)  # b"k8s:enc:<name>:v1:"

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", ENCRYPTED_PREFIX + self.name.encode() + b":v1:")

    def __repr__(self) -> str:
        return f"<static provider {self.name}>"

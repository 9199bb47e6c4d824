"""Constants and key checks shared by the stored-value providers.

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/aes/aes.go`` (sizes),
``.../apis/apiserver/validation/validation_encryption.go`` (``aesKeySizes``).
"""

from __future__ import annotations

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

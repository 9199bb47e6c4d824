"""The ``secretbox`` provider: ``nonce(24) || poly1305 tag(16) || XSalsa20 ciphertext``.

Provider :data:`PROVIDER` (:func:`decrypt`, :func:`encrypt`) works on the *body*, the bytes after
``k8s:enc:secretbox:v1:<keyname>:``. NaCl secretbox authenticates against the key but has no AAD:
a value moved to another etcd key still decrypts. The layout is exactly what PyNaCl's
``SecretBox.encrypt`` returns.

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/secretbox/secretbox.go``.
"""

from __future__ import annotations

import os

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from snapshot_tools.errors import InvalidCiphertext, MalformedValue
from snapshot_tools.providers._common import DECRYPTION_FAILED, StaticProvider, check_size, remember

KEY_SIZE = 32
NONCE_SIZE = 24
OVERHEAD = 16  # poly1305 tag
MIN_BODY = NONCE_SIZE + OVERHEAD

_boxes: dict[bytes, SecretBox] = {}


def _box(key: bytes) -> SecretBox:
    box = _boxes.get(key)
    if box is None:
        check_size(key, KEY_SIZE, "secretbox key")
        box = remember(_boxes, key, SecretBox(key))
    return box


def decrypt(key: bytes, body: bytes | memoryview, aad: bytes = b"") -> bytes:
    """Open a secretbox body.

    Raises:
        ValueError: the key is not 32 bytes.
        MalformedValue: shorter than nonce + tag (40 bytes).
        InvalidCiphertext: wrong key or tampered data.
    """
    box = _box(key)
    if len(body) < MIN_BODY:
        raise MalformedValue("secretbox: the stored data was shorter than the required size")
    if type(body) is not bytes:
        body = bytes(body)  # PyNaCl takes bytes only
    try:
        return box.decrypt(body[NONCE_SIZE:], body[:NONCE_SIZE])
    except CryptoError:
        raise InvalidCiphertext(DECRYPTION_FAILED) from None


def encrypt(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Seal with a fresh random nonce; returns the body ``nonce || tag || ciphertext``.

    Raises:
        ValueError: the key is not 32 bytes.
    """
    return _encrypt_from_parts(key, plaintext, os.urandom(NONCE_SIZE))


def _encrypt_from_parts(key: bytes, plaintext: bytes, nonce: bytes) -> bytes:
    """Deterministic core of :func:`encrypt` (vector tests pass a fixed nonce)."""
    box = _box(key)
    check_size(nonce, NONCE_SIZE, "secretbox nonce")
    return bytes(box.encrypt(plaintext, nonce))


# ``aad`` is accepted and ignored: secretbox binds nothing to the etcd key.
PROVIDER = StaticProvider(
    "secretbox", (KEY_SIZE,), authenticated=True, needs_aad=False, decrypt=decrypt, encrypt=encrypt
)

"""The ``aesgcm`` provider: ``nonce(12) || AES-GCM(key, nonce, plaintext, AAD) || tag(16)``.

Provider :data:`PROVIDER` (:func:`decrypt`, :func:`encrypt`) works on the *body*, the bytes
after ``k8s:enc:aesgcm:v1:<keyname>:``.
The AAD is the full etcd key (``--etcd-prefix`` included), so a value does not decrypt under
another key. :func:`open_gcm` and :func:`seal_gcm` are shared with the KMS envelopes, which use
the same layout with their data keys.

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/aes/aes.go``
(``NewGCMTransformer``, ``gcm.TransformFromStorage``), spec section 3.1.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from snapshot_tools.errors import InvalidCiphertext, MalformedValue
from snapshot_tools.providers._common import (
    AES_KEY_SIZES,
    DECRYPTION_FAILED,
    GCM_NONCE_SIZE,
    GCM_TAG_SIZE,
    StaticProvider,
    check_aes_key,
    check_size,
    remember,
)

MIN_BODY = GCM_NONCE_SIZE + GCM_TAG_SIZE

# AESGCM objects are immutable and thread-safe, so one per key serves everyone.
_aeads: dict[bytes, AESGCM] = {}


def aead(key: bytes, what: str = "aesgcm") -> AESGCM:
    """The cached ``AESGCM`` for ``key``.

    Raises:
        ValueError: the key has an invalid length.
    """
    obj = _aeads.get(key)
    if obj is None:
        check_aes_key(key, what)
        obj = remember(_aeads, key, AESGCM(key))
    return obj


def open_gcm(cipher: AESGCM, data: bytes | memoryview, aad: bytes | None, what: str) -> bytes:
    """Open ``nonce(12) || ciphertext || tag(16)``.

    Raises:
        MalformedValue: shorter than nonce + tag.
        InvalidCiphertext: authentication failed.
    """
    if len(data) < MIN_BODY:
        raise MalformedValue(f"{what}: the stored data was shorter than the required size")
    view = memoryview(data)
    try:
        return cipher.decrypt(view[:GCM_NONCE_SIZE], view[GCM_NONCE_SIZE:], aad)
    except InvalidTag:
        raise InvalidCiphertext(DECRYPTION_FAILED) from None


def seal_gcm(cipher: AESGCM, nonce: bytes, plaintext: bytes, aad: bytes | None) -> bytes:
    """``nonce || ciphertext || tag``; the nonce must be 12 bytes."""
    check_size(nonce, GCM_NONCE_SIZE, "AES-GCM nonce")
    return nonce + cipher.encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, body: bytes | memoryview, aad: bytes) -> bytes:
    """Decrypt an aesgcm body.

    Args:
        key: 16, 24 or 32 bytes.
        body: the stored value after ``k8s:enc:aesgcm:v1:<keyname>:``.
        aad: the full etcd key the value is stored under.

    Raises:
        ValueError: the key has an invalid length.
        MalformedValue: shorter than nonce + tag (28 bytes).
        InvalidCiphertext: wrong key, other etcd key, or tampered data.
    """
    return open_gcm(aead(key), body, aad, "aesgcm")


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt with a fresh random nonce; returns the body ``nonce || ciphertext || tag``.

    Raises:
        ValueError: the key has an invalid length.
    """
    return _encrypt_from_parts(key, plaintext, aad, os.urandom(GCM_NONCE_SIZE))


def _encrypt_from_parts(key: bytes, plaintext: bytes, aad: bytes, nonce: bytes) -> bytes:
    """Deterministic core of :func:`encrypt` (vector tests pass a fixed nonce)."""
    return seal_gcm(aead(key), nonce, plaintext, aad)


# The AAD is the full etcd key the value is stored under.
PROVIDER = StaticProvider(
    "aesgcm", AES_KEY_SIZES, authenticated=True, needs_aad=True, decrypt=decrypt, encrypt=encrypt
)

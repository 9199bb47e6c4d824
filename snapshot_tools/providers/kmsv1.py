"""KMS v1 envelope: ``u16be(L) || encDEK(L) || payload`` after ``k8s:enc:kms:v1:<name>:``.

The DEK is 32 random bytes per write, wrapped by the plugin (one ``Encrypt`` per write). The
payload is ``nonce(12) || AES-GCM(DEK, AAD = etcd key) || tag(16)`` since v1.25, and
``IV(16) || AES-CBC(DEK, PKCS#7(plaintext))`` (no AAD) before. Reads try GCM, then CBC; data that
only CBC opens is stale. The caller unwraps the encrypted DEK (``snapshot_tools.kms``).

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/envelope/envelope.go``,
``config.go`` ``unionTransformers`` (GCM then CBC), spec section 5.
"""

from __future__ import annotations

import os
import struct

from snapshot_tools.errors import InvalidCiphertext, MalformedValue
from snapshot_tools.providers import aescbc
from snapshot_tools.providers._common import (
    AES_KEY_SIZES,
    BLOCK_SIZE,
    DECRYPTION_FAILED,
    GCM_NONCE_SIZE,
)
from snapshot_tools.providers.aesgcm import MIN_BODY as GCM_MIN_BODY
from snapshot_tools.providers.aesgcm import aead, open_gcm, seal_gcm

DEK_SIZE = 32
MAX_ENCRYPTED_DEK = 0xFFFF
_U16 = struct.Struct(">H")
_BAD_FRAME = (
    "kms v1: invalid data encountered by envelope transformer: "
    "failed to read uint16 length prefixed data"
)


def split(payload: bytes) -> tuple[bytes, bytes]:
    """Split the payload after the provider prefix into ``(encrypted DEK, encrypted data)``.

    Raises:
        MalformedValue: the length prefix is missing, runs past the end, or is zero.
    """
    if len(payload) < 2:
        raise MalformedValue(_BAD_FRAME)
    (length,) = _U16.unpack_from(payload)
    end = 2 + length
    if end > len(payload):
        raise MalformedValue(_BAD_FRAME)
    if length == 0:
        # Upstream would ask the plugin to decrypt nothing; no plugin ever wrote that.
        raise MalformedValue("kms v1: the encrypted DEK is empty")
    return payload[2:end], payload[end:]


def join(encrypted_dek: bytes, data: bytes) -> bytes:
    """``u16be(len) || encrypted DEK || data``.

    Raises:
        ValueError: the encrypted DEK is empty or longer than 65535 bytes.
    """
    if not 0 < len(encrypted_dek) <= MAX_ENCRYPTED_DEK:
        raise ValueError(f"KMS v1 encrypted DEK must be 1..65535 bytes, got {len(encrypted_dek)}")
    return _U16.pack(len(encrypted_dek)) + encrypted_dek + data


def decrypt_payload(dek: bytes, data: bytes, aad: bytes) -> tuple[bytes, str]:
    """Decrypt the data after the encrypted DEK; returns ``(plaintext, mode)``.

    ``mode`` is ``"gcm"`` (current format) or ``"cbc"`` (pre-1.25, so stale). CBC has no MAC:
    callers must check a ``"cbc"`` plaintext with ``objects.is_kubernetes_object``.

    Raises:
        MalformedValue: the data fits neither layout (too short for GCM and not CBC blocks).
        InvalidCiphertext: the DEK has an unusable length, or neither mode opens the data.
    """
    if len(dek) not in AES_KEY_SIZES:
        raise InvalidCiphertext("the unwrapped KMS v1 data key has an invalid length")
    gcm_fits = len(data) >= GCM_MIN_BODY
    cbc_fits = len(data) > BLOCK_SIZE and len(data) % BLOCK_SIZE == 0
    if not gcm_fits and not cbc_fits:
        raise MalformedValue("kms v1: the stored data was shorter than the required size")
    if gcm_fits:
        try:
            return open_gcm(aead(dek, "KMS v1 DEK"), data, aad, "kms v1"), "gcm"
        except InvalidCiphertext:
            if not cbc_fits:
                raise
    try:
        return aescbc.decrypt(dek, data), "cbc"
    except (InvalidCiphertext, MalformedValue):
        raise InvalidCiphertext(DECRYPTION_FAILED) from None


def encrypt(dek: bytes, encrypted_dek: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Build a payload (after the provider prefix) in the current GCM format.

    Args:
        dek: the fresh 32-byte data key, drawn by the caller.
        encrypted_dek: ``dek`` as wrapped by the KMS plugin's ``Encrypt``.
        plaintext: the object bytes.
        aad: the full etcd key.
    """
    return _encrypt_from_parts(dek, encrypted_dek, plaintext, aad, os.urandom(GCM_NONCE_SIZE))


def _encrypt_from_parts(
    dek: bytes, encrypted_dek: bytes, plaintext: bytes, aad: bytes, nonce: bytes
) -> bytes:
    """Deterministic core of :func:`encrypt` (vector tests pass a fixed nonce)."""
    if len(dek) != DEK_SIZE:
        raise ValueError(f"KMS v1 DEK must be 32 bytes, got {len(dek)}")
    return join(encrypted_dek, seal_gcm(aead(dek, "KMS v1 DEK"), nonce, plaintext, aad))


def _encrypt_cbc_from_parts(dek: bytes, encrypted_dek: bytes, plaintext: bytes, iv: bytes) -> bytes:
    """The pre-1.25 CBC payload; only for tests of the legacy read path (never written now)."""
    return join(encrypted_dek, aescbc._encrypt_from_parts(dek, plaintext, iv))

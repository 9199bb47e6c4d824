"""KMS v2 envelope: ``k8s:enc:kms:v2:<name>:`` + protobuf ``v2.EncryptedObject``.

Two ways to turn the unwrapped ``encryptedDEKSource`` into the AES-256-GCM key:

* ``AES_GCM_KEY`` (0): it *is* the DEK; ``encryptedData = nonce(12) || ct || tag(16)``.
* ``HKDF_SHA256_XNONCE_AES_GCM_SEED`` (1): it is a seed;
  ``encryptedData = info(32) || nonce(12) || ct || tag(16)`` and
  ``DEK = HKDF-Expand(SHA-256, PRK=seed, info, L=32) = HMAC-SHA256(seed, info || 0x01)``.

Both use AAD = the full etcd key. The plugin call that unwraps ``encryptedDEKSource`` is the
caller's (``snapshot_tools.kms``); this module parses, validates, decrypts and encrypts.

References: ``staging/src/k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/envelope.go``
(``ValidateEncryptedObject``, ``generateCacheKey``, ``doDecode``),
``.../encrypt/aes/aes_extended_nonce.go``, spec sections 6 and 3.3.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError

from snapshot_tools.errors import InvalidCiphertext, MalformedValue
from snapshot_tools.proto import kmsv2_encrypted_object_pb2 as pb
from snapshot_tools.protowire import LEN, WireError, decode_varint, encode_varint, tag
from snapshot_tools.providers._common import AES_KEY_SIZES, GCM_NONCE_SIZE, check_size
from snapshot_tools.providers.aesgcm import MIN_BODY as GCM_MIN_BODY
from snapshot_tools.providers.aesgcm import aead, open_gcm, seal_gcm

if TYPE_CHECKING:
    from collections.abc import Mapping

AES_GCM_KEY = 0
HKDF_SHA256_XNONCE_AES_GCM_SEED = 1
DEK_SOURCE_TYPES = (AES_GCM_KEY, HKDF_SHA256_XNONCE_AES_GCM_SEED)

INFO_SIZE = 32  # commonSize in aes_extended_nonce.go: info = derived key = minimum seed
MIN_SEED_SIZE = 32
ENCRYPTED_DEK_SOURCE_MAX_SIZE = 1024
KEY_ID_MAX_SIZE = 1024
ANNOTATIONS_MAX_SIZE = 32 * 1024

_DATA_TAG = bytes([tag(1, LEN)])  # encryptedData, the first field Go marshals
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


@dataclass(frozen=True, slots=True)
class EncryptedObject:
    """A parsed ``v2.EncryptedObject`` (field names follow Python style)."""

    encrypted_data: bytes = field(repr=False)
    key_id: str
    encrypted_dek_source: bytes = field(repr=False)
    annotations: dict[str, bytes] = field(default_factory=dict)
    dek_source_type: int = AES_GCM_KEY

    @property
    def cache_key(self) -> bytes:
        """The apiserver's decrypt-cache key for this object's DEK source (spec 6.4)."""
        return cache_key(
            self.dek_source_type, self.encrypted_dek_source, self.key_id, self.annotations
        )


# -- validation (ValidateEncryptedObject) ----------------------------------------------------


def _is_fqdn(name: str) -> bool:
    """``validation.IsFullyQualifiedDomainName``: lowercase RFC 1123 subdomain, >= 2 labels."""
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if len(labels) < 2:
        return False
    return all(len(label) <= 63 and _DNS1123_LABEL.match(label) for label in labels)


def validation_error(obj: EncryptedObject) -> str | None:
    """The first problem ``ValidateEncryptedObject`` would report, in its order and words."""
    if obj.dek_source_type not in DEK_SOURCE_TYPES:
        return f"unknown encryptedDEKSourceType: {obj.dek_source_type}"
    if not obj.encrypted_data:
        return "encrypted data is empty"
    source_len = len(obj.encrypted_dek_source)
    if source_len == 0:
        return "failed to validate encrypted DEK source: encrypted DEK source is empty"
    if source_len > ENCRYPTED_DEK_SOURCE_MAX_SIZE:
        return (
            "failed to validate encrypted DEK source: encrypted DEK source is "
            f"{source_len} bytes, which exceeds the max size of {ENCRYPTED_DEK_SOURCE_MAX_SIZE}"
        )
    key_id_len = len(obj.key_id.encode("utf-8"))
    if key_id_len == 0:
        return "failed to validate key id: keyID is empty"
    if key_id_len > KEY_ID_MAX_SIZE:
        return (
            f"failed to validate key id: keyID is {key_id_len} bytes, which exceeds the max "
            f"size of {KEY_ID_MAX_SIZE}"
        )
    total = 0
    for key in sorted(obj.annotations):
        if not _is_fqdn(key):
            shown = key if len(key) <= 80 else key[:77] + "..."
            return (
                f"failed to validate annotations: annotation key {shown!r} is not a fully "
                "qualified domain name"
            )
        total += len(key.encode("utf-8")) + len(obj.annotations[key])
    if total > ANNOTATIONS_MAX_SIZE:
        return (
            f"failed to validate annotations: total size of annotations is {total}, which "
            f"exceeds the max size of {ANNOTATIONS_MAX_SIZE}"
        )
    return None


# -- wire format ------------------------------------------------------------------------------


def parse(payload: bytes) -> EncryptedObject:
    """Parse and validate the bytes after ``k8s:enc:kms:v2:<name>:``.

    Raises:
        MalformedValue: not a valid protobuf, or a validation failure (spec 6.3, exact reason).
    """
    msg = pb.EncryptedObject()
    try:
        msg.ParseFromString(payload)
    except DecodeError:
        raise MalformedValue("kms v2: the stored data is not a valid EncryptedObject") from None
    obj = EncryptedObject(
        encrypted_data=msg.encryptedData,
        key_id=msg.keyID,
        encrypted_dek_source=msg.encryptedDEKSource,
        annotations=dict(msg.annotations),
        dek_source_type=int(msg.encryptedDEKSourceType),
    )
    problem = validation_error(obj)
    if problem is not None:
        raise MalformedValue(f"kms v2: {problem}")
    return obj


def serialize(obj: EncryptedObject) -> bytes:
    """Validate and marshal, byte-identical to Go's ``proto.Marshal`` (fields in number order;
    a type of 0 is not written; map entries sorted by key).

    Raises:
        ValueError: the object fails validation (spec 6.3).
    """
    problem = validation_error(obj)
    if problem is not None:
        raise ValueError(problem)
    msg = pb.EncryptedObject(
        encryptedData=obj.encrypted_data,
        keyID=obj.key_id,
        encryptedDEKSource=obj.encrypted_dek_source,
        annotations=obj.annotations,
        # The generated stub types enum fields as the enum class only; the runtime takes the int.
        encryptedDEKSourceType=obj.dek_source_type,  # type: ignore[arg-type]
    )
    return msg.SerializeToString(deterministic=True)


class ObjectTemplate:
    """The EncryptedObject of every object written under one wrapped DEK source, marshalled once.

    An apiserver wraps one seed per state and writes all its objects with the same keyID,
    encryptedDEKSource, annotations and type; only ``encryptedData`` differs, and Go's marshal
    writes it first (field 1). So the shared fields are validated and marshalled once (``tail``)
    and :meth:`encode` puts field 1 in front: byte-identical to :func:`serialize` of the whole
    object. :meth:`encrypted_data` is the inverse, for values this template wrote.

    Raises:
        ValueError: the shared fields fail validation (spec 6.3).
    """

    __slots__ = ("tail",)

    def __init__(
        self,
        key_id: str,
        encrypted_dek_source: bytes,
        annotations: Mapping[str, bytes] | None = None,
        dek_source_type: int = HKDF_SHA256_XNONCE_AES_GCM_SEED,
    ) -> None:
        # Field 1 of a one-byte placeholder, then the shared fields.
        one = serialize(
            EncryptedObject(
                encrypted_data=b"\x00",
                key_id=key_id,
                encrypted_dek_source=encrypted_dek_source,
                annotations=dict(annotations or {}),
                dek_source_type=dek_source_type,
            )
        )
        assert one.startswith(_DATA_TAG + b"\x01\x00")
        self.tail = one[3:]

    def __repr__(self) -> str:
        return f"<ObjectTemplate tail={len(self.tail)} bytes>"

    def encode(self, encrypted_data: bytes, prefix: bytes = b"") -> bytes:
        """``prefix`` and the object holding ``encrypted_data`` (non-empty, as Go writes it)."""
        if not encrypted_data:
            raise ValueError("encrypted data is empty")
        return b"".join((prefix, _DATA_TAG, encode_varint(len(encrypted_data)), encrypted_data, self.tail))

    def encrypted_data(self, value: bytes, start: int = 0) -> memoryview | None:
        """``encryptedData`` if ``value[start:]`` is byte for byte an object :meth:`encode`
        wrote with this template (no copy), else ``None``."""
        tail = self.tail
        if not value.endswith(tail) or value[start : start + 1] != _DATA_TAG:
            return None
        try:
            n, at = decode_varint(value, start + 1, len(value))
        except WireError:
            return None
        if at + n + len(tail) != len(value):
            return None
        return memoryview(value)[at : at + n]


def cache_key(
    dek_source_type: int,
    encrypted_dek_source: bytes,
    key_id: str,
    annotations: Mapping[str, bytes] | None = None,
) -> bytes:
    """``u32(type) || u16-prefixed encDEKSource || u16-prefixed keyID`` and, when there are
    annotations, ``|| u32(count) || (u16-prefixed key || u16-prefixed value)`` sorted by key.

    Raises:
        ValueError: a part is longer than a u16 length prefix allows.
    """
    parts = [_U32.pack(dek_source_type), _u16_prefixed(encrypted_dek_source)]
    parts.append(_u16_prefixed(key_id.encode("utf-8")))
    if annotations:
        parts.append(_U32.pack(len(annotations)))
        encoded = sorted((k.encode("utf-8"), v) for k, v in annotations.items())
        for key, value in encoded:
            parts.append(_u16_prefixed(key))
            parts.append(_u16_prefixed(value))
    return b"".join(parts)


def _u16_prefixed(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"cache key part of {len(data)} bytes does not fit a u16 length prefix")
    return _U16.pack(len(data)) + data


# -- decryption -------------------------------------------------------------------------------


def derive_dek(seed: bytes, info: bytes) -> bytes:
    """HKDF-Expand(SHA-256, PRK=seed, info, L=32): one HMAC block, no Extract step."""
    return hmac.digest(seed, info + b"\x01", hashlib.sha256)


def decrypt_data(dek_source_type: int, source: bytes, encrypted_data: bytes | memoryview, aad: bytes) -> bytes:
    """Decrypt ``encryptedData`` with the unwrapped DEK source.

    Args:
        dek_source_type: 0 (``AES_GCM_KEY``) or 1 (``HKDF_SHA256_XNONCE_AES_GCM_SEED``).
        source: the plugin's plaintext of ``encryptedDEKSource`` (DEK or seed).
        encrypted_data: field 1 of the EncryptedObject.
        aad: the full etcd key.

    Raises:
        MalformedValue: ``encrypted_data`` is too short for its layout, or an unknown type.
        InvalidCiphertext: the DEK/seed has an unusable length, or authentication failed.
    """
    if dek_source_type == HKDF_SHA256_XNONCE_AES_GCM_SEED:
        if len(source) < MIN_SEED_SIZE:
            raise InvalidCiphertext("the unwrapped KMS v2 seed has an invalid length")
        if len(encrypted_data) < INFO_SIZE + GCM_MIN_BODY:
            raise MalformedValue("kms v2: the stored data was shorter than the required size")
        view = memoryview(encrypted_data)
        dek = derive_dek(source, bytes(view[:INFO_SIZE]))
        # A fresh DEK per object: not worth the shared cache.
        return open_gcm(AESGCM(dek), view[INFO_SIZE:], aad, "kms v2")
    if dek_source_type == AES_GCM_KEY:
        if len(source) not in AES_KEY_SIZES:
            raise InvalidCiphertext("the unwrapped KMS v2 data key has an invalid length")
        return open_gcm(aead(source, "KMS v2 DEK"), encrypted_data, aad, "kms v2")
    raise MalformedValue(f"kms v2: unknown encryptedDEKSourceType: {dek_source_type}")


def decrypt(obj: EncryptedObject, source: bytes, aad: bytes) -> bytes:
    """Decrypt a parsed object with its unwrapped ``encryptedDEKSource`` (:func:`decrypt_data`)."""
    return decrypt_data(obj.dek_source_type, source, obj.encrypted_data, aad)


# -- encryption -------------------------------------------------------------------------------


def encrypt(
    seed: bytes,
    plaintext: bytes,
    aad: bytes,
    *,
    encrypted_dek_source: bytes,
    key_id: str,
    annotations: Mapping[str, bytes] | None = None,
) -> bytes:
    """Encrypt in seed mode (what 1.29+ writes); returns the payload after the provider prefix.

    Args:
        seed: the plaintext seed (>= 32 bytes; the apiserver uses 32).
        plaintext: the object bytes.
        aad: the full etcd key.
        encrypted_dek_source: ``seed`` as wrapped by the plugin's ``Encrypt``.
        key_id: the ``key_id`` the plugin returned with it.
        annotations: the plugin's annotations, stored in the clear.

    Raises:
        ValueError: a bad seed length, or the result fails validation (spec 6.3).
    """
    return _encrypt_from_parts(
        seed,
        plaintext,
        aad,
        nonce=os.urandom(GCM_NONCE_SIZE),
        info=os.urandom(INFO_SIZE),
        encrypted_dek_source=encrypted_dek_source,
        key_id=key_id,
        annotations=annotations,
    )


def encrypt_data(seed: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``encryptedData`` in seed mode with a fresh info and nonce: ``info || nonce || ct || tag``.

    For writers that marshal the rest of the EncryptedObject once (its other fields are the
    same for every object of a seed); :func:`encrypt` is the whole object.

    Raises:
        ValueError: a seed shorter than 32 bytes.
    """
    if len(seed) < MIN_SEED_SIZE:
        raise ValueError(f"KMS v2 seed must be at least 32 bytes, got {len(seed)}")
    info = os.urandom(INFO_SIZE)
    nonce = os.urandom(GCM_NONCE_SIZE)
    return info + nonce + AESGCM(derive_dek(seed, info)).encrypt(nonce, plaintext, aad)


def _encrypt_from_parts(
    source: bytes,
    plaintext: bytes,
    aad: bytes,
    *,
    nonce: bytes,
    info: bytes | None,
    encrypted_dek_source: bytes,
    key_id: str,
    annotations: Mapping[str, bytes] | None,
    dek_source_type: int = HKDF_SHA256_XNONCE_AES_GCM_SEED,
) -> bytes:
    """Deterministic core of :func:`encrypt`; type 0 (``info=None``) exists for the vectors."""
    if dek_source_type == HKDF_SHA256_XNONCE_AES_GCM_SEED:
        if len(source) < MIN_SEED_SIZE:
            raise ValueError(f"KMS v2 seed must be at least 32 bytes, got {len(source)}")
        if info is None:
            raise ValueError("seed mode needs a 32-byte info")
        check_size(info, INFO_SIZE, "HKDF info")
        data = info + seal_gcm(AESGCM(derive_dek(source, info)), nonce, plaintext, aad)
    elif dek_source_type == AES_GCM_KEY:
        if len(source) not in AES_KEY_SIZES:
            raise ValueError(f"KMS v2 DEK must be 16, 24 or 32 bytes, got {len(source)}")
        data = seal_gcm(aead(source, "KMS v2 DEK"), nonce, plaintext, aad)
    else:
        raise ValueError(f"unknown encryptedDEKSourceType: {dek_source_type}")
    return serialize(
        EncryptedObject(
            encrypted_data=data,
            key_id=key_id,
            encrypted_dek_source=encrypted_dek_source,
            annotations=dict(annotations or {}),
            dek_source_type=dek_source_type,
        )
    )

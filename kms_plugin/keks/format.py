"""Our wrapped-key format: a short versioned header, then AES-256-GCM with the header as AAD.

Layout (all lengths in bytes)::

    magic "kp" (2) | format version 0x01 (1) | len(kek_id) (1) | kek_id (ASCII)
    | nonce (12) | AES-256-GCM ciphertext | tag (16)

The header names the KEK, so Decrypt (and an offline reader such as ``snapshot-tools check
--keyring``) routes without guessing; binding it as AAD means a ciphertext cannot be moved to
another KEK id or format version. The magic cannot start aws-encryption-provider's format (a
``'1'`` byte), so both can be told apart.

References: aws-encryption-provider ``pkg/plugin`` (its ``'1'`` prefix); STYLE.md items 4 and 5.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag

from kms_plugin.errors import InvalidCiphertext

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"kp"
FORMAT_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
MAX_KEK_ID_LEN = 64
# KEK ids are printable and filename/label safe; they appear in headers, logs and listings.
# Always use .fullmatch: with .match, "$" also accepts a trailing newline.
KEK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# kube-apiserver refuses an encryptedDEKSource over 1 KiB (ValidateEncryptedObject).
MAX_CIPHERTEXT = 1024


def header_for(kek_id: str) -> bytes:
    """The header (and AAD) for ``kek_id``."""
    if not KEK_ID_RE.fullmatch(kek_id):
        raise ValueError(f"KEK id {kek_id!r} must match {KEK_ID_RE.pattern}")
    raw = kek_id.encode("ascii")
    return MAGIC + bytes((FORMAT_VERSION, len(raw))) + raw


def overhead(kek_id: str) -> int:
    """Bytes a wrap adds to the plaintext under ``kek_id``."""
    return len(header_for(kek_id)) + NONCE_SIZE + TAG_SIZE


def max_plaintext(kek_id: str) -> int:
    """The largest plaintext whose ciphertext still fits the apiserver's 1 KiB limit."""
    return MAX_CIPHERTEXT - overhead(kek_id)


@dataclass(frozen=True)
class Parsed:
    """A ciphertext split at the header; nothing authenticated yet."""

    kek_id: str
    header: bytes
    nonce: bytes
    sealed: bytes


def parse(ciphertext: bytes) -> Parsed:
    """Split ``ciphertext`` into header fields; structural problems raise InvalidCiphertext."""
    data = bytes(ciphertext)
    if len(data) < len(MAGIC) + 2:
        raise InvalidCiphertext("ciphertext is truncated (shorter than the kms-plugin header)")
    if data[:2] != MAGIC:
        raise InvalidCiphertext("ciphertext is not in the kms-plugin wrapped format (bad magic)")
    if data[2] != FORMAT_VERSION:
        raise InvalidCiphertext(f"ciphertext has unsupported kms-plugin format version {data[2]}")
    id_len = data[3]
    end = 4 + id_len
    if id_len == 0 or id_len > MAX_KEK_ID_LEN:
        raise InvalidCiphertext(f"ciphertext header has an invalid KEK id length {id_len}")
    if len(data) < end + NONCE_SIZE + TAG_SIZE:
        raise InvalidCiphertext("ciphertext is truncated")
    try:
        kek_id = data[4:end].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidCiphertext("ciphertext header has a non-ASCII KEK id") from None
    if not KEK_ID_RE.fullmatch(kek_id):
        raise InvalidCiphertext("ciphertext header has an invalid KEK id")
    return Parsed(kek_id, data[:end], data[end : end + NONCE_SIZE], data[end + NONCE_SIZE :])


def seal(aead: AESGCM, kek_id: str, plaintext: bytes, nonce: bytes | None = None) -> bytes:
    """Wrap ``plaintext`` under the KEK behind ``aead``; ``nonce`` is for vector tests only."""
    header = header_for(kek_id)
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    return header + nonce + aead.encrypt(nonce, plaintext, header)


def seal_with_header(aead: AESGCM, header: bytes, plaintext: bytes) -> bytes:
    """:func:`seal` with a precomputed :func:`header_for` (the per-call fast path)."""
    nonce = os.urandom(NONCE_SIZE)
    return header + nonce + aead.encrypt(nonce, plaintext, header)


def open_parsed(aead: AESGCM, parsed: Parsed) -> bytes:
    """Authenticate and decrypt; any failure is the same opaque InvalidCiphertext."""
    try:
        return aead.decrypt(parsed.nonce, parsed.sealed, parsed.header)
    except InvalidTag:
        raise InvalidCiphertext(
            f"ciphertext failed authentication under KEK {parsed.kek_id} (tampered or wrong key)"
        ) from None

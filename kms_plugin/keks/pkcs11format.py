"""PKCS#11 key naming, key_id and wire format: pure functions, shared by the plugin and offline tools.

Key objects (``kms-plugin pkcs11 init-key`` / ``rotate-key`` make them)::

    CKA_LABEL  "<K>-<n>"        K = --pkcs11-key-label, n = 1, 2, 3 ... (decimal, no leading zero)
    CKA_ID     16 random bytes   drawn at creation, so a deleted and re-made label is a new key
    AES-256, CKA_TOKEN, CKA_SENSITIVE, not CKA_EXTRACTABLE, CKA_ENCRYPT/CKA_DECRYPT only

The *current* key is the one with the highest n: rotation adds ``K-<n+1>`` and never changes an
existing object, so there is no flag to keep consistent, a crash mid-rotation leaves either the
old or the new key current, and every older generation stays usable for Decrypt until someone
deletes its object. Two objects with the same label are refused (which one is meant is unknown).

key_id = ``"sha256:" + hex(SHA-256("kms-plugin-pkcs11-kek:" serial 0x00 hex(CKA_ID) 0x00 label))``
with the token's serial number: it never shows material, changes on every rotation and differs
between tokens holding a key of the same label.

Ciphertext written without the local-KEK hierarchy (AAD = the 11-byte header; CKM_AES_GCM in the
token, 128-bit tag)::

    "kx" | 0x01 | key ref (8) | nonce (12) | AES-256-GCM ciphertext | tag (16)

key ref = SHA-256(key_id)[:8]: routes the value to its key object offline and for KMS v1 (no
key_id), and binds it to that key (it is authenticated as AAD).

References: PKCS#11 v2.40 section 2.12 (CKM_AES_GCM, ``CK_GCM_PARAMS``).
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from kms_plugin.errors import ConfigError, InvalidCiphertext

MAGIC = b"kx"
FORMAT_VERSION = 1
REF_SIZE = 8
HEADER_SIZE = len(MAGIC) + 1 + REF_SIZE
NONCE_SIZE = 12
TAG_SIZE = 16
TAG_BITS = TAG_SIZE * 8
MAX_CIPHERTEXT = 1024
MAX_PLAINTEXT = MAX_CIPHERTEXT - HEADER_SIZE - NONCE_SIZE - TAG_SIZE
KEY_ID_PREFIX = "sha256:"
CKA_ID_SIZE = 16
# PKCS#11 labels are UTF-8 of any length; ours stay short and printable so logs and errors may show them.
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,95}$")


class KeyRef(NamedTuple):
    """One generation of a key family in the token: what identifies it, never its material."""

    label: str
    generation: int
    cka_id: bytes
    key_id: str

    @property
    def ref(self) -> bytes:
        return key_ref(self.key_id)


def check_base_label(label: str) -> str:
    """``--pkcs11-key-label``: the family name the generations are numbered under.

    Raises:
        ConfigError: empty, too long, odd characters, or ending in ``-<digits>`` (ambiguous).
    """
    if not _LABEL.match(label) or re.search(r"-\d+$", label):
        raise ConfigError(
            f"--pkcs11-key-label {label[:100]!r}: use 1-96 characters A-Z a-z 0-9 _ . : / -, "
            "not ending in -<digits> (the generations are numbered <label>-1, <label>-2, ...)"
        )
    return label


def generation_label(base: str, generation: int) -> str:
    return f"{base}-{generation}"


def generation_of(base: str, label: str) -> int | None:
    """n for a label ``<base>-<n>``, else None (another family, or a malformed number)."""
    prefix = base + "-"
    if not label.startswith(prefix):
        return None
    digits = label[len(prefix) :]
    if not digits.isdigit() or not digits.isascii() or digits.startswith("0"):
        return None
    return int(digits)


def key_id_for(serial: str, cka_id: bytes, label: str) -> str:
    digest = hashlib.sha256(
        b"kms-plugin-pkcs11-kek:" + serial.encode() + b"\x00" + cka_id.hex().encode() + b"\x00" + label.encode()
    )
    return KEY_ID_PREFIX + digest.hexdigest()


def key_ref(key_id: str) -> bytes:
    return hashlib.sha256(key_id.encode()).digest()[:REF_SIZE]


def header(ref: bytes) -> bytes:
    return MAGIC + bytes((FORMAT_VERSION,)) + ref


class Sealed(NamedTuple):
    """A parsed ``kx`` ciphertext."""

    header: bytes
    ref: bytes
    nonce: bytes
    body: bytes  # ciphertext | tag, as CKM_AES_GCM takes it


def parse(ciphertext: bytes) -> Sealed:
    """Split a ``kx`` ciphertext; anything else is :class:`InvalidCiphertext` (exact, not an oracle)."""
    data = bytes(ciphertext)
    if data[:2] != MAGIC:
        raise InvalidCiphertext("ciphertext is not in the kms-plugin PKCS#11 format")
    if data[2:3] != bytes((FORMAT_VERSION,)):
        raise InvalidCiphertext(f"ciphertext has unsupported kms-plugin PKCS#11 format version {data[2:3]!r}")
    if len(data) < HEADER_SIZE + NONCE_SIZE + TAG_SIZE + 1:
        raise InvalidCiphertext("kms-plugin PKCS#11 ciphertext is truncated")
    return Sealed(
        data[:HEADER_SIZE],
        data[3:HEADER_SIZE],
        data[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE],
        data[HEADER_SIZE + NONCE_SIZE :],
    )


def pick_current(refs: list[KeyRef]) -> KeyRef | None:
    """The generation with the highest n (None when the family has no key)."""
    return max(refs, key=lambda r: r.generation, default=None)


# -- retired keys (kms-plugin pkcs11 retire-key / restore-key / purge-key) -------------------------
#
# A retired generation keeps its key object (non-extractable keys cannot be archived elsewhere):
# ``retire-key`` relabels ``K-<n>`` to ``K-<n>.retired`` and clears CKA_ENCRYPT and CKA_DECRYPT.
# The family scan ignores that label, so neither the plugin nor the offline tools offer the key;
# its key_id (a hash over the original label) is unchanged, so ``restore-key`` gives it back whole.

RETIRED_SUFFIX = ".retired"


def retired_label(base: str, generation: int) -> str:
    return f"{base}-{generation}{RETIRED_SUFFIX}"


def retired_generation_of(base: str, label: str) -> int | None:
    """n for a label ``<base>-<n>.retired``, else None."""
    if not label.endswith(RETIRED_SUFFIX):
        return None
    return generation_of(base, label[: -len(RETIRED_SUFFIX)])


def wrapping_ref(ciphertext: bytes, annotations: dict[str, bytes]) -> bytes | None:
    """The key ref of the HSM key that wrapped a value the PKCS#11 plugin wrote, else None.

    Both formats: ``"kx"`` (the seed wrapped by the HSM key) and the local-KEK hierarchy
    (``"kh"`` with one ``encrypted-local-kek.*`` annotation holding a ``"kx"`` local KEK). Not
    authenticated: a reader that relies on the answer for another key must unwrap the value.
    """
    from kms_plugin.keks.hierarchy import ANNOTATION_PREFIX
    from kms_plugin.keks.hierarchy import MAGIC as LOCAL_MAGIC

    data = bytes(ciphertext)
    if not annotations:
        inner = data
    else:
        ours = [n for n in annotations if n.startswith(ANNOTATION_PREFIX)]
        if len(ours) != 1 or len(annotations) != 1 or data[:2] != LOCAL_MAGIC:
            return None
        inner = bytes(annotations[ours[0]])
    try:
        return parse(inner).ref
    except InvalidCiphertext:
        return None

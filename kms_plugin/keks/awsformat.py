"""AWS KMS wire formats and the AWS key_id: pure functions, shared by the plugin and offline tools.

Ciphertexts the AWS backend reads (the first byte routes; none can be mistaken for another)::

    ours    "ka" | 0x01 | CiphertextBlob          (written by kms-plugin --aws-key-id, no local KEK)
    legacy  "1"  | CiphertextBlob                 (aws-encryption-provider; read only)

``CiphertextBlob`` is exactly what AWS KMS ``Encrypt`` returned under the configured static
encryption context; it names its KMS key, so ``Decrypt`` needs no KeyId and answers with the key
ARN it used. The hierarchy format (``"kh"``, local KEK in an annotation) lives in
:mod:`kms_plugin.keks.hierarchy`; the local keyring's (``"kp"``) in :mod:`kms_plugin.keks.format`.

key_id = ``"sha256:" + hex(SHA-256("kms-plugin-aws-kek:" ARN 0x00 rotation))`` where *rotation*
names the key's latest completed rotation as ``ListKeyRotations`` reports it (automatic and
on-demand alike; its ``KeyMaterialId`` when AWS gives one, else its ``RotationDate``), or is empty
for a key never rotated. So it changes when AWS rotates the material and when an alias is moved
to another key, it never shows the ARN, and every key_id a key ever had can be recomputed from
its rotation list (how Decrypt checks old key_ids after a restart).

References: aws-encryption-provider ``pkg/plugin/plugin.go`` (the ``'1'`` prefix, static
encryption context); AWS KMS API ``ListKeyRotations``/``Decrypt`` (``KeyId`` in the answer).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kms_plugin.errors import ConfigError, InvalidCiphertext

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

OURS = "ours"
LEGACY = "legacy"
MAGIC = b"ka"
FORMAT_VERSION = 1
HEADER = MAGIC + bytes((FORMAT_VERSION,))
LEGACY_PREFIX = b"1"
KEY_ID_PREFIX = "sha256:"
# An AWS CiphertextBlob for a 32-byte plaintext is about 184 bytes; the apiserver allows 1 KiB.
MAX_PLAINTEXT = 512
_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):\d{12}:(key|alias)/.+$")
_CONTEXT_ITEM = re.compile(r"^[^=,\s][^=,]*=[^,]*$")


def seal(blob: bytes) -> bytes:
    """Our ciphertext around an AWS ``CiphertextBlob``."""
    return HEADER + blob


def legacy(blob: bytes) -> bytes:
    """aws-encryption-provider's ciphertext around a ``CiphertextBlob`` (tests, migration)."""
    return LEGACY_PREFIX + blob


def parse(ciphertext: bytes) -> tuple[str, bytes]:
    """Route a ciphertext: ``(OURS | LEGACY, CiphertextBlob)``; anything else is InvalidCiphertext."""
    data = bytes(ciphertext)
    if data[:3] == HEADER and len(data) > 3:
        return OURS, data[3:]
    if data[:2] == MAGIC:
        raise InvalidCiphertext(f"ciphertext has unsupported kms-plugin AWS format version {data[2:3]!r}")
    if data[:1] == LEGACY_PREFIX and len(data) > 1:
        return LEGACY, data[1:]
    raise InvalidCiphertext("ciphertext is not in a format the AWS KMS backend reads")


def rotation_marker(entry: Mapping[str, Any]) -> str:
    """The identity of one ``ListKeyRotations`` entry (stable across calls)."""
    material = entry.get("KeyMaterialId")
    if material:
        return f"m:{material}"
    when = entry.get("RotationDate")
    if isinstance(when, datetime):
        when = when.astimezone(UTC).isoformat(timespec="milliseconds")
    return f"d:{when}"


def rotation_markers(rotations: Iterable[Mapping[str, Any]]) -> list[str]:
    """Markers of every state the key has had, oldest first; ``""`` is the original material."""
    def when(entry: Mapping[str, Any]) -> float:
        value = entry.get("RotationDate")
        return value.timestamp() if isinstance(value, datetime) else float(value or 0)

    return ["", *(rotation_marker(e) for e in sorted(rotations, key=when))]


def key_id_for(arn: str, marker: str) -> str:
    """The public key_id of AWS key ``arn`` in rotation state ``marker``."""
    digest = hashlib.sha256(b"kms-plugin-aws-kek:" + arn.encode() + b"\x00" + marker.encode())
    return KEY_ID_PREFIX + digest.hexdigest()


def region_of(key: str) -> str | None:
    """The region named by a key or alias ARN, else None."""
    match = _ARN_RE.match(key)
    return match.group(1) if match else None


def names_key(name: str, arn: str) -> bool:
    """Whether ``name`` is ``arn`` itself or its bare key id (aliases need a lookup)."""
    return name == arn or (arn.rsplit("/", 1)[-1] == name and "/" not in name)


def is_alias(name: str) -> bool:
    return name.startswith("alias/") or ":alias/" in name


def parse_encryption_context(text: str, flag: str = "--aws-encryption-context") -> dict[str, str]:
    """``"k=v,k2=v2"`` -> dict; empty text -> {}. Keys must be unique and non-empty."""
    context: dict[str, str] = {}
    if not text.strip():
        return context
    for item in text.split(","):
        if not _CONTEXT_ITEM.match(item):
            raise ConfigError(f"{flag} takes k=v[,k=v...], got item {item!r}")
        key, _, value = item.partition("=")
        if key in context:
            raise ConfigError(f"{flag} names key {key!r} twice")
        context[key] = value
    return context

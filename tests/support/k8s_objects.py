"""Stored Kubernetes objects built by hand, independently of the reader's decoder.

Protobuf values are ``k8s\\x00`` + ``runtime.Unknown{typeMeta, raw}`` (spec 9.1): the object's
message in ``raw``, ObjectMeta in its field 1 (spec 9.3). The wire helpers write plain protobuf,
optionally with non-minimal varints (still valid protobuf, not what Go writes).
JSON values are what the apiserver stores for JSON-encoded resources.
"""

from __future__ import annotations

import json
from typing import Any

# -- protobuf wire ------------------------------------------------------------------------------


def uvarint(n: int, pad: int = 0) -> bytes:
    """Base-128 varint of ``n`` (as uint64), with up to ``pad`` redundant bytes (max 10 in all)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    pad = min(pad, 10 - len(out))
    if pad > 0:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


def field(number: int, value: int | bytes, pad: int = 0) -> bytes:
    """One field: LEN for bytes, VARINT for an int (``pad`` pads the length or the value)."""
    if isinstance(value, bytes):
        return uvarint(number << 3 | 2) + uvarint(len(value), pad) + value
    return uvarint(number << 3) + uvarint(value, pad)


def entry(number: int, key: str | bytes, value: bytes) -> bytes:
    """One entry of a ``map<string, ...>`` field: a message of key (1) and value (2)."""
    raw_key = key.encode() if isinstance(key, str) else key
    return field(number, field(1, raw_key) + field(2, value))


# -- Kubernetes protobuf --------------------------------------------------------------------------


def object_meta(
    name: str,
    namespace: str,
    *,
    uid: str | None = None,
    created: int | None = None,
    labels: dict[str, str] | None = None,
    fields_v1: bytes | None = None,
) -> bytes:
    """ObjectMeta: name (1), namespace (3), uid (5), creationTimestamp seconds (8), labels (11),
    and one managedFields entry (17) by ``kubectl`` whose FieldsV1 raw JSON is ``fields_v1``."""
    meta = field(1, name.encode()) + field(3, namespace.encode())
    if uid is not None:
        meta += field(5, uid.encode())
    if created is not None:
        meta += field(8, field(1, created))
    for key, value in (labels or {}).items():
        meta += entry(11, key, value.encode())
    if fields_v1 is not None:
        meta += field(17, field(1, b"kubectl") + field(7, field(1, fields_v1)))
    return meta


def stored(kind: str, raw: bytes, api_version: str = "v1") -> bytes:
    """The stored value of an object whose message is ``raw``: ``k8s\\x00`` + runtime.Unknown."""
    type_meta = field(1, api_version.encode()) + field(2, kind.encode())
    return b"k8s\x00" + field(1, type_meta) + field(2, raw) + b"\x1a\x00\x22\x00"


def secret(meta: bytes, data: dict[str, bytes], secret_type: str = "Opaque") -> bytes:
    """A stored Secret: metadata (1), data (2), type (3)."""
    raw = field(1, meta) + b"".join(entry(2, k, v) for k, v in data.items())
    return stored("Secret", raw + field(3, secret_type.encode()))


def config_map(meta: bytes, data: dict[str, bytes], binary_data: dict[str, bytes] | None = None) -> bytes:
    """A stored ConfigMap: metadata (1), data (2), binaryData (3)."""
    raw = field(1, meta) + b"".join(entry(2, k, v) for k, v in data.items())
    raw += b"".join(entry(3, k, v) for k, v in (binary_data or {}).items())
    return stored("ConfigMap", raw)


# -- JSON ---------------------------------------------------------------------------------------------


def json_object(
    name: str,
    kind: str = "Secret",
    *,
    namespace: str | None = None,
    data: dict[str, Any] | None = None,
    newline: bool = False,
) -> bytes:
    """A JSON-encoded ``v1`` object as the apiserver stores it (``newline``: with its trailing
    newline, as ``json.Encoder`` in the apiserver writes it)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    body: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": metadata}
    if data is not None:
        body["data"] = data
    return (json.dumps(body) + ("\n" if newline else "")).encode()

"""Kubernetes plaintext: sniff whether bytes are a stored object, and decode Secrets/ConfigMaps.

Stored objects are either protobuf (``k8s\\x00`` + ``runtime.Unknown{typeMeta, raw, ...}``; the
default for built-in types) or JSON (custom resources, ``--storage-media-type=application/json``).
:func:`is_kubernetes_object` is what makes an aescbc result (no MAC) count as readable, so it
parses strictly: the bounds-checked :mod:`snapshot_tools.protowire` reader, not a lenient
generated parser.
:func:`decode_object` returns plain Python data (secret values as ``bytes``); it prints nothing.

References: ``staging/src/k8s.io/apimachinery/pkg/runtime/serializer/protobuf/protobuf.go``,
``.../runtime/generated.proto`` (``Unknown``), ``staging/src/k8s.io/api/core/v1/generated.proto``
(``Secret``, ``ConfigMap``), ``.../apis/meta/v1/generated.proto`` (``ObjectMeta``), spec section 9.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from snapshot_tools.errors import MalformedValue
from snapshot_tools.protowire import (
    LEN,
    VARINT,
    WireError,
    fields,
    int64,
    read_field,
    read_len_field,
)

PROTOBUF_MAGIC = b"k8s\x00"
_JSON_WS = b" \t\r\n"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Malformed protobuf raises protowire's WireError, turned here into MalformedValue (decode_object)
# or None (sniff, decode_metadata).


def _expect(number: int, wire: int, want: int) -> None:
    if wire != want:
        raise WireError(f"field {number} has wire type {wire}, expected {want}")


def _text(buf: bytes, start: int, stop: int) -> str:
    return buf[start:stop].decode("utf-8", "replace")


def _set_text(out: dict[str, Any], name: str, buf: bytes, start: int, stop: int) -> None:
    """``out[name]``: the string, left out when empty (proto3 does not tell empty from unset)."""
    text = _text(buf, start, stop)
    if text:
        out[name] = text


def _strict_text(buf: bytes, start: int, stop: int) -> str:
    try:
        return buf[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("string is not valid UTF-8") from None


# -- runtime.Unknown ----------------------------------------------------------------------------


# One-byte tags of the LEN fields of runtime.Unknown / TypeMeta (field << 3 | 2).
_LEN_TAGS = frozenset({0x0A, 0x12, 0x1A, 0x22})


def _parse_unknown(buf: bytes) -> tuple[str, str, int, int]:
    """``(apiVersion, kind, raw start, raw stop)`` of a ``k8s\\x00`` value, or ``WireError``.

    Fields 1-4 must be LEN; unknown fields are stepped over; the message must end exactly at
    the end of the value. Hand-inlined for the common tags: this runs on every aescbc value.
    """
    if not buf.startswith(PROTOBUF_MAGIC):
        raise WireError("no k8s protobuf magic")
    end = len(buf)
    pos = len(PROTOBUF_MAGIC)
    type_meta: tuple[int, int] | None = None
    raw: tuple[int, int] | None = None
    while pos < end:
        if buf[pos] in _LEN_TAGS:
            tag, start, pos = read_len_field(buf, pos, end)
            number = tag >> 3
        else:
            number, wire, start, _b, pos = read_field(buf, pos, end)
            if number <= 4:
                raise WireError(f"field {number} has wire type {wire}, expected {LEN}")
            continue
        if number == 1:
            type_meta = (start, pos)
        elif number == 2:
            raw = (start, pos)
        else:
            _strict_text(buf, start, pos)  # contentEncoding / contentType
    if type_meta is None or raw is None:
        raise WireError("runtime.Unknown without typeMeta or raw")
    api_version = kind = ""
    pos, end = type_meta
    while pos < end:  # runtime.TypeMeta: 1 apiVersion, 2 kind
        if buf[pos] == 0x0A or buf[pos] == 0x12:
            tag, start, pos = read_len_field(buf, pos, end)
            if tag == 0x0A:
                api_version = _strict_text(buf, start, pos)
            else:
                kind = _strict_text(buf, start, pos)
        else:
            number, wire, _a, _b, pos = read_field(buf, pos, end)
            if number <= 2:
                raise WireError(f"field {number} has wire type {wire}, expected {LEN}")
    if not api_version or not kind:
        raise WireError("runtime.Unknown without apiVersion and kind")
    return api_version, kind, raw[0], raw[1]


def _json_object(plaintext: bytes) -> dict[str, Any] | None:
    """The parsed JSON object if ``plaintext`` is a JSON Kubernetes object, else ``None``."""
    if not plaintext.lstrip(_JSON_WS).startswith(b"{"):
        return None
    try:
        obj = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return None
    if not isinstance(kind, str) or not kind:
        return None
    return obj


def sniff(plaintext: bytes) -> str | None:
    """``"protobuf"``, ``"json"`` or ``None``: which Kubernetes storage encoding this is."""
    if plaintext.startswith(PROTOBUF_MAGIC):
        try:
            _parse_unknown(plaintext)
        except WireError:
            return None
        return "protobuf"
    return "json" if _json_object(plaintext) is not None else None


def is_kubernetes_object(plaintext: bytes) -> bool:
    """True when the bytes are a stored Kubernetes object (protobuf envelope or JSON).

    Protobuf: ``k8s\\x00`` + a well-formed ``runtime.Unknown`` with typeMeta (non-empty
    apiVersion and kind) and raw, consumed exactly. JSON: ``{`` after optional whitespace, a JSON
    object with non-empty string ``apiVersion`` and ``kind``.
    """
    return sniff(plaintext) is not None


# -- decoding -----------------------------------------------------------------------------------


def _time(buf: bytes, start: int, stop: int) -> str:
    seconds = 0
    for number, wire, a, _b in fields(buf, start, stop):
        if number == 1:
            _expect(number, wire, VARINT)
            seconds = int64(a)
    # Stored times have second precision (nanos = 0); RFC 3339 UTC as kubectl prints them.
    try:
        return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OverflowError:
        raise WireError("timestamp out of range") from None


def _map_entry(buf: bytes, start: int, stop: int) -> tuple[str, tuple[int, int]]:
    key, value = "", (start, start)
    for number, wire, a, b in fields(buf, start, stop):
        if number in (1, 2):
            _expect(number, wire, LEN)
            if number == 1:
                key = _text(buf, a, b)
            else:
                value = (a, b)
    return key, value


def _owner_reference(buf: bytes, start: int, stop: int) -> dict[str, Any]:
    names = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}
    flags = {6: "controller", 7: "blockOwnerDeletion"}
    ref: dict[str, Any] = {}
    for number, wire, a, b in fields(buf, start, stop):
        if number in names:
            _expect(number, wire, LEN)
            ref[names[number]] = _text(buf, a, b)
        elif number in flags:
            _expect(number, wire, VARINT)
            ref[flags[number]] = bool(a)
    return ref


def _managed_fields_entry(buf: bytes, start: int, stop: int) -> dict[str, Any]:
    names = {1: "manager", 2: "operation", 3: "apiVersion", 6: "fieldsType", 8: "subresource"}
    entry: dict[str, Any] = {}
    for number, wire, a, b in fields(buf, start, stop):
        if number in names:
            _expect(number, wire, LEN)
            _set_text(entry, names[number], buf, a, b)
        elif number == 4:
            _expect(number, wire, LEN)
            entry["time"] = _time(buf, a, b)
        elif number == 7:
            _expect(number, wire, LEN)
            raw = b""
            for n2, w2, a2, b2 in fields(buf, a, b):
                if n2 == 1:
                    _expect(n2, w2, LEN)
                    raw = buf[a2:b2]
            try:
                entry["fieldsV1"] = json.loads(raw) if raw else {}
            except (ValueError, RecursionError):  # damaged or hostile: keep the bytes
                entry["fieldsV1"] = raw
    return entry


_META_STRINGS = {1: "name", 2: "generateName", 3: "namespace", 4: "selfLink", 5: "uid",
                 6: "resourceVersion", 15: "clusterName"}  # fmt: skip


def _object_meta(buf: bytes, start: int, stop: int) -> dict[str, Any]:
    """ObjectMeta with empty strings and zeros dropped (spec 9.4); times as RFC 3339 UTC."""
    meta: dict[str, Any] = {}
    for number, wire, a, b in fields(buf, start, stop):
        if number in _META_STRINGS:
            _expect(number, wire, LEN)
            _set_text(meta, _META_STRINGS[number], buf, a, b)
        elif number == 7:
            _expect(number, wire, VARINT)
            if a:
                meta["generation"] = int64(a)
        elif number in (8, 9):
            _expect(number, wire, LEN)
            meta["creationTimestamp" if number == 8 else "deletionTimestamp"] = _time(buf, a, b)
        elif number == 10:
            _expect(number, wire, VARINT)
            meta["deletionGracePeriodSeconds"] = int64(a)
        elif number in (11, 12):
            _expect(number, wire, LEN)
            key, (v0, v1) = _map_entry(buf, a, b)
            meta.setdefault("labels" if number == 11 else "annotations", {})[key] = _text(
                buf, v0, v1
            )
        elif number == 13:
            _expect(number, wire, LEN)
            meta.setdefault("ownerReferences", []).append(_owner_reference(buf, a, b))
        elif number == 14:
            _expect(number, wire, LEN)
            meta.setdefault("finalizers", []).append(_text(buf, a, b))
        elif number == 17:
            _expect(number, wire, LEN)
            meta.setdefault("managedFields", []).append(_managed_fields_entry(buf, a, b))
    return meta


class _Form(enum.Enum):
    """How a top-level field of a v1 Secret or ConfigMap is read."""

    META = enum.auto()  # ObjectMeta
    TEXT = enum.auto()  # a string, left out when empty
    BOOL = enum.auto()  # a varint
    TEXT_MAP = enum.auto()  # map<string, string>
    BYTES_MAP = enum.auto()  # map<string, bytes>


# Field number -> (JSON name, form), from core/v1 generated.proto.
_SECRET = {
    1: ("metadata", _Form.META),
    2: ("data", _Form.BYTES_MAP),
    3: ("type", _Form.TEXT),
    4: ("stringData", _Form.TEXT_MAP),
    5: ("immutable", _Form.BOOL),
}
_CONFIG_MAP = {
    1: ("metadata", _Form.META),
    2: ("data", _Form.TEXT_MAP),
    3: ("binaryData", _Form.BYTES_MAP),
    4: ("immutable", _Form.BOOL),
}


def _v1_object(kind: str, layout: dict[int, tuple[str, _Form]], buf: bytes, start: int, stop: int) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {}}
    for number, wire, a, b in fields(buf, start, stop):
        spec = layout.get(number)
        if spec is None:
            continue
        name, form = spec
        if form is _Form.BOOL:
            _expect(number, wire, VARINT)
            obj[name] = bool(a)
            continue
        _expect(number, wire, LEN)
        if form is _Form.META:
            obj[name] = _object_meta(buf, a, b)
        elif form is _Form.TEXT:
            _set_text(obj, name, buf, a, b)
        else:
            key, (v0, v1) = _map_entry(buf, a, b)
            obj.setdefault(name, {})[key] = buf[v0:v1] if form is _Form.BYTES_MAP else _text(buf, v0, v1)
    return obj


def _b64_values(values: Any, what: str) -> dict[str, bytes]:
    if not isinstance(values, dict):
        raise MalformedValue(f"JSON {what} is not an object")
    out = {}
    for key, value in values.items():
        try:
            out[key] = base64.b64decode(value or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise MalformedValue(f"JSON {what}[{key!r}] is not base64") from None
    return out


def _decode_json(obj: dict[str, Any]) -> dict[str, Any]:
    # JSON carries []byte fields as base64 text; turn them into bytes like the protobuf path.
    if obj["apiVersion"] != "v1":
        return obj
    if obj["kind"] == "Secret" and obj.get("data") is not None:
        obj["data"] = _b64_values(obj["data"], "Secret data")
    if obj["kind"] == "ConfigMap" and obj.get("binaryData") is not None:
        obj["binaryData"] = _b64_values(obj["binaryData"], "ConfigMap binaryData")
    return obj


def decode_object(plaintext: bytes) -> dict[str, Any]:
    """Decode a stored object into plain Python data.

    v1 Secret: ``{"apiVersion", "kind", "metadata", "data": {key: bytes}, "type",
    "immutable"}``; v1 ConfigMap: ``{..., "data": {key: str}, "binaryData": {key: bytes},
    "immutable"}``. Keys that are empty or unset are left out (``data`` of an empty Secret,
    ``immutable`` when not set). ``metadata`` holds name, namespace, uid, labels, annotations,
    creationTimestamp (RFC 3339 UTC), ... with empty values dropped; resourceVersion is not
    stored (take it from the etcd mod_revision). Other protobuf kinds:
    ``{"apiVersion", "kind", "raw": bytes}``. JSON objects come back as parsed, with Secret
    ``data`` and ConfigMap ``binaryData`` base64-decoded to bytes.

    Raises:
        MalformedValue: the bytes are not a Kubernetes object, or its protobuf is damaged.
    """
    if plaintext.startswith(PROTOBUF_MAGIC):
        try:
            api_version, kind, start, stop = _parse_unknown(plaintext)
            if api_version == "v1" and kind == "Secret":
                return _v1_object(kind, _SECRET, plaintext, start, stop)
            if api_version == "v1" and kind == "ConfigMap":
                return _v1_object(kind, _CONFIG_MAP, plaintext, start, stop)
        except WireError as exc:
            raise MalformedValue(f"damaged Kubernetes protobuf object: {exc}") from None
        return {"apiVersion": api_version, "kind": kind, "raw": plaintext[start:stop]}
    obj = _json_object(plaintext)
    if obj is None:
        raise MalformedValue(
            "not a Kubernetes object (neither k8s protobuf nor JSON with apiVersion and kind)"
        )
    return _decode_json(obj)


def decode_metadata(raw: bytes) -> dict[str, Any] | None:
    """``metadata`` of a typed object's protobuf (``raw`` from :func:`decode_object`).

    Every top-level Kubernetes kind carries ``ObjectMeta`` as field 1, so this works for kinds
    we have no schema for (Deployments, Namespaces, ...). ``None`` when it cannot be parsed.
    """
    try:
        for number, wire, a, b in fields(raw, 0, len(raw)):
            if number == 1 and wire == LEN:
                return _object_meta(raw, a, b)
    except WireError:
        return None
    return None

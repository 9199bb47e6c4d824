"""Plaintext sniffing and decoding (snapshot_tools.objects): strict, bounded, never crashes.

Inputs: the upstream ``oldSecret`` plaintext (spec 11.E, tests/vectors), the apiserver-written
ConfigMaps of the a-identity fixture, and hand-built JSON objects.
"""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot_tools import objects
from snapshot_tools.errors import MalformedValue
from tests.support.fixtures import FIXTURES, OLD_SECRET
from tests.support.k8s_objects import field, uvarint


def _fixture_plaintexts() -> list[bytes]:
    raw = json.loads((FIXTURES / "a-identity" / "etcd-raw-values.json").read_text())
    return [base64.b64decode(v["value_b64"]) for v in raw["values"]]


def test_fixture_plaintexts_sniff_as_protobuf() -> None:
    values = _fixture_plaintexts()
    assert len(values) == 17
    kinds = set()
    for value in values:
        assert objects.sniff(value) == "protobuf"
        kinds.add(objects.decode_object(value)["kind"])
    assert kinds == {"Secret", "ConfigMap"}


@pytest.mark.parametrize(
    "text",
    [
        b'{"apiVersion":"v1","kind":"Secret"}\n',
        b' \n\t{"apiVersion":"stable.example.com/v1","kind":"CronTab","spec":{}}',
    ],
)
def test_json_objects(text: bytes) -> None:
    assert objects.sniff(text) == "json"
    assert objects.is_kubernetes_object(text)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{",
        b"[]",
        b'{"kind":"Secret"}',
        b'{"apiVersion":"v1","kind":""}',
        b'{"apiVersion":1,"kind":"Secret"}',
        b'x{"apiVersion":"v1","kind":"Secret"}',
        b'{"apiVersion":"v1","kind":"Secret"}\xff',
        b"k8s\x00",
        b"k8s\x01" + OLD_SECRET[4:],
        OLD_SECRET[:-1],  # truncated: the last field runs past the end
        OLD_SECRET + b"\x0a",  # a tag with no length
        OLD_SECRET[:4] + b"\x08\x01" + OLD_SECRET[4:],  # typeMeta (field 1) as a varint
        OLD_SECRET[:4] + b"\x0a\x00\x12\x00",  # empty typeMeta: no apiVersion/kind
        OLD_SECRET[:4] + b"\x0a\x0c\x0a\x02v1\x12\x06Secret",  # no raw
        OLD_SECRET[:4] + b"\x0b" + OLD_SECRET[4:],  # a group (wire type 3)
    ],
)
def test_not_kubernetes_objects(text: bytes) -> None:
    assert not objects.is_kubernetes_object(text)
    with pytest.raises(MalformedValue):
        objects.decode_object(text)


def test_unknown_fields_are_skipped() -> None:
    extended = OLD_SECRET + b"\x28\x05" + b"\x31" + b"\x00" * 8  # fields 5 (varint), 6 (i64)
    assert objects.is_kubernetes_object(extended)
    assert objects.decode_object(extended)["metadata"]["name"] == "test-secret"


def test_other_protobuf_kinds_come_back_raw() -> None:
    raw = field(1, field(1, b"x"))
    value = b"k8s\x00" + field(1, field(1, b"apps/v1") + field(2, b"Deployment")) + field(2, raw)
    want = {"apiVersion": "apps/v1", "kind": "Deployment", "raw": raw}
    assert objects.decode_object(value) == want


def test_json_secret_and_configmap_values_become_bytes() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "data": {"k": "aGk="}}
    assert objects.decode_object(json.dumps(secret).encode())["data"] == {"k": b"hi"}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}, "binaryData": {"x": "AAE="}}
    decoded = objects.decode_object(json.dumps(cm).encode())
    assert decoded["data"] == {"a": "b"} and decoded["binaryData"] == {"x": b"\x00\x01"}
    secret["data"] = {"k": "not base64!"}
    with pytest.raises(MalformedValue, match="is not base64"):
        objects.decode_object(json.dumps(secret).encode())


def test_secret_fields_and_metadata() -> None:
    """A Secret built field by field: every decoded field, and empty/zero values dropped."""

    def entry(k: bytes, v: bytes) -> bytes:  # a map entry's message (its field number is outside)
        return field(1, k) + field(2, v)

    meta = (
        field(1, b"n")
        + field(2, b"")
        + field(3, b"ns")
        + field(5, b"u-1")
        + field(6, b"")
        + b"\x38\x00"  # generation 0: dropped
        + field(8, b"\x08" + uvarint(1693583360))  # -> 2023-09-01T15:49:20Z
        + b"\x50\x1e"  # deletionGracePeriodSeconds 30
        + field(11, entry(b"app", b"x"))
        + field(12, entry(b"note.io/a", "☃".encode()))
        + field(13, field(1, b"ReplicaSet") + field(3, b"rs") + field(4, b"u-2") + field(5, b"v") + b"\x30\x01")
        + field(14, b"f.io/x")
    )
    secret = field(1, meta) + field(2, entry(b"k", b"\x00\xff")) + field(3, b"Opaque") + b"\x28\x01"
    type_meta = field(1, field(1, b"v1") + field(2, b"Secret"))
    value = b"k8s\x00" + type_meta + field(2, secret) + field(3, b"") + field(4, b"")
    assert objects.decode_object(value) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "n",
            "namespace": "ns",
            "uid": "u-1",
            "creationTimestamp": "2023-09-01T15:49:20Z",
            "deletionGracePeriodSeconds": 30,
            "labels": {"app": "x"},
            "annotations": {"note.io/a": "☃"},
            "ownerReferences": [
                {
                    "kind": "ReplicaSet",
                    "name": "rs",
                    "uid": "u-2",
                    "apiVersion": "v",
                    "controller": True,
                }
            ],
            "finalizers": ["f.io/x"],
        },
        "data": {"k": b"\x00\xff"},
        "type": "Opaque",
        "immutable": True,
    }


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    for candidate in (data, b"k8s\x00" + data):
        readable = objects.is_kubernetes_object(candidate)
        try:
            decoded = objects.decode_object(candidate)
        except MalformedValue:
            continue  # a readable envelope may still hold a damaged Secret/ConfigMap
        assert readable
        assert isinstance(decoded["apiVersion"], str) and isinstance(decoded["kind"], str)


def test_every_truncation_and_bit_flip_is_handled() -> None:
    for cut in range(len(OLD_SECRET)):
        prefix = OLD_SECRET[:cut]
        if objects.is_kubernetes_object(prefix):
            objects.decode_object(prefix)
        else:
            with pytest.raises(MalformedValue):
                objects.decode_object(prefix)
    for i in range(len(OLD_SECRET) * 8):
        flipped = bytearray(OLD_SECRET)
        flipped[i // 8] ^= 1 << (i % 8)
        with contextlib.suppress(MalformedValue):
            objects.decode_object(bytes(flipped))

"""The KMS v2 ``EncryptedObject`` writer that marshals the shared fields once
(:class:`snapshot_tools.providers.kmsv2.ObjectTemplate`, what ``reencrypt`` writes with).

Oracles: the parser and :func:`kmsv2.serialize` (the protobuf runtime's deterministic marshal,
byte-identical to Go's), and the golden vectors 11.C/11.D (values a kube-apiserver v1.27.0 wrote,
tests/vectors/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot_tools.providers import kms_prefix, kmsv2

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "k8s_encryption_formats.json").read_text()
)
ANNOTATIONS = st.dictionaries(
    st.from_regex(r"[a-z0-9]{1,10}\.[a-z]{2,8}", fullmatch=True), st.binary(max_size=40), max_size=3
)


@settings(max_examples=150, deadline=None)
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=300), st.sampled_from([b"d" * 127, b"d" * 128, b"d" * 20000])
    ),
    source=st.binary(min_size=1, max_size=1024),
    key_id=st.text(min_size=1, max_size=40),
    annotations=ANNOTATIONS,
    dek_source_type=st.sampled_from(kmsv2.DEK_SOURCE_TYPES),
    prefix=st.sampled_from([b"", kms_prefix("v2", "kms")]),
)
def test_template_round_trip(
    data: bytes,
    source: bytes,
    key_id: str,
    annotations: dict[str, bytes],
    dek_source_type: int,
    prefix: bytes,
) -> None:
    template = kmsv2.ObjectTemplate(key_id, source, annotations, dek_source_type)
    value = template.encode(data, prefix)
    obj = kmsv2.EncryptedObject(data, key_id, source, annotations, dek_source_type)
    assert value == prefix + kmsv2.serialize(obj)  # Go's marshal of the whole object
    assert kmsv2.parse(value[len(prefix) :]) == obj
    assert template.encrypted_data(value, len(prefix)) == data
    # Only values of this template, whole, come back.
    assert template.encrypted_data(value + b"\x00", len(prefix)) is None
    assert template.encrypted_data(value[:-1], len(prefix)) is None
    assert (
        template.encrypted_data(
            value[: len(prefix)] + b"\x12" + value[len(prefix) + 1 :], len(prefix)
        )
        is None
    )
    other = kmsv2.ObjectTemplate(key_id + "x", source, annotations, dek_source_type)
    assert other.encrypted_data(value, len(prefix)) is None


def test_template_validates_like_serialize() -> None:
    with pytest.raises(ValueError, match="keyID is empty"):
        kmsv2.ObjectTemplate("", b"w")
    with pytest.raises(ValueError, match="encrypted data is empty"):
        kmsv2.ObjectTemplate("k", b"w").encode(b"")


@pytest.mark.parametrize("case", ["C", "D"])
def test_template_writes_the_recorded_values(case: str) -> None:
    v = VECTORS[case]
    stored = bytes.fromhex(v["stored_value"]["hex"])
    prefix = kms_prefix("v2", "kms-provider")
    obj = kmsv2.parse(stored[len(prefix) :])
    template = kmsv2.ObjectTemplate(
        obj.key_id, obj.encrypted_dek_source, obj.annotations, obj.dek_source_type
    )
    assert template.encode(obj.encrypted_data, prefix) == stored
    assert template.encrypted_data(stored, len(prefix)) == obj.encrypted_data
    assert template.encrypted_data(stored[len(prefix) :]) == obj.encrypted_data

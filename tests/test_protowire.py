"""The one protobuf wire codec: varints, fields and length-delimited data, and its one error.

Oracles: Go's ``protowire`` rules (a varint is at most 10 bytes and its 10th byte carries only
bit 63; ``AppendVarint`` writes the minimal form) and the protobuf runtime (upb) parsing the
same bytes as ``mvccpb.KeyValue``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapshot_tools import protowire
from snapshot_tools.proto.etcd_kv_pb2 import KeyValue
from snapshot_tools.protowire import WireError

U64 = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from(
        [0, 1, 127, 128, 255, 16383, 16384, 2**21 - 1, 2**21, 2**35, 2**56, 2**63, 2**64 - 1]
    ),
)


def _padded(n: int, pad: int) -> bytes:
    """``n`` as a varint with ``pad`` redundant continuation bytes (still valid up to 10 bytes)."""
    out = bytearray(protowire.encode_varint(n))
    if pad:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


@st.composite
def _field(draw: st.DrawFn) -> tuple[int, int, int | bytes]:
    number = draw(st.one_of(st.integers(1, 15), st.integers(16, 2**29 - 1)))
    wire = draw(st.sampled_from([protowire.VARINT, protowire.I64, protowire.LEN, protowire.I32]))
    if wire == protowire.LEN:
        return number, wire, draw(st.binary(max_size=300))
    if wire == protowire.VARINT:
        return number, wire, draw(U64)
    return number, wire, draw(st.integers(0, 2 ** (64 if wire == protowire.I64 else 32) - 1))


def _encode(number: int, wire: int, value: int | bytes) -> bytes:
    head = protowire.encode_varint(protowire.tag(number, wire))
    if isinstance(value, bytes):
        return protowire.encode_len(number, value)
    if wire == protowire.VARINT:
        return head + protowire.encode_varint(value)
    return head + value.to_bytes(8 if wire == protowire.I64 else 4, "little")


# -- varints -------------------------------------------------------------------------------------


@given(n=U64, pad=st.integers(0, 9))
def test_varint_round_trip(n: int, pad: int) -> None:
    minimal = protowire.encode_varint(n)
    assert len(minimal) == max(1, -(-n.bit_length() // 7))  # minimal, as AppendVarint writes
    data = b"\xaa" + _padded(n, min(pad, 10 - len(minimal))) + b"\xbb"
    value, end = protowire.decode_varint(data, 1, len(data))
    assert (value, data[end:]) == (n, b"\xbb")
    assert protowire.skip_varint(data, 1, len(data)) == end


@given(n=U64)
def test_varint_cut_short_is_the_one_error(n: int) -> None:
    data = protowire.encode_varint(n)
    for cut in range(len(data)):
        with pytest.raises(WireError, match="truncated varint"):
            protowire.decode_varint(data, 0, cut)
        with pytest.raises(WireError, match="truncated varint"):
            protowire.skip_varint(data + b"\x00", 0, cut)  # ``end`` bounds it, not the buffer


def test_overlong_varints() -> None:
    eleven = b"\xff" * 10 + b"\x01"
    with pytest.raises(WireError, match="longer than 10 bytes"):
        protowire.decode_varint(eleven, 0, len(eleven))
    with pytest.raises(WireError, match="longer than 10 bytes"):
        protowire.skip_varint(eleven, 0, len(eleven))
    top = b"\xff" * 9 + b"\x01"  # 2**64 - 1: the 10th byte may carry bit 63 only
    assert protowire.decode_varint(top, 0, 10) == (2**64 - 1, 10)
    over = b"\xff" * 9 + b"\x02"
    with pytest.raises(WireError, match="overflows 64 bits"):
        protowire.decode_varint(over, 0, 10)
    # Boundaries only: like upb (and etcd's generated decoders) skip_varint takes it.
    assert protowire.skip_varint(over, 0, 10) == 10
    assert issubclass(WireError, ValueError)


@pytest.mark.parametrize("n", [-1, 2**64])
def test_encode_varint_range(n: int) -> None:
    with pytest.raises(ValueError, match="varint must be in"):
        protowire.encode_varint(n)


def test_int64() -> None:
    assert (
        protowire.int64(protowire.decode_varint(protowire.encode_varint(2**64 - 1), 0, 10)[0]) == -1
    )
    assert protowire.int64(2**63 - 1) == 2**63 - 1
    assert protowire.int64(2**63) == -(2**63)


# -- fields ----------------------------------------------------------------------------------------


@given(fields=st.lists(_field(), max_size=8))
def test_fields_round_trip(fields: list[tuple[int, int, int | bytes]]) -> None:
    parts = [_encode(*f) for f in fields]
    msg = b"".join(parts)
    framed = b"\xee" + msg + b"\xee"  # a message inside a larger buffer
    got = protowire.fields(framed, 1, 1 + len(msg))
    assert [(n, w) for n, w, _a, _b in got] == [(n, w) for n, w, _v in fields]
    for (_n, wire, value), (_n2, _w2, a, b) in zip(fields, got, strict=True):
        assert (framed[a:b] if wire == protowire.LEN else a) == value
    spans = protowire.field_spans(framed, 1, 1 + len(msg))
    assert [framed[s:e] for _n, s, e in spans] == parts
    assert [n for n, _s, _e in spans] == [n for n, _w, _v in fields]


@given(fields=st.lists(_field(), min_size=1, max_size=5), data=st.data())
def test_cut_inside_a_field_is_the_one_error(
    fields: list[tuple[int, int, int | bytes]], data: st.DataObject
) -> None:
    parts = [_encode(*f) for f in fields]
    msg = b"".join(parts)
    boundaries = {sum(map(len, parts[:i])) for i in range(len(parts) + 1)}
    cut = data.draw(st.integers(1, len(msg)).filter(lambda c: c not in boundaries), label="cut")
    with pytest.raises(WireError):
        protowire.fields(msg, 0, cut)
    with pytest.raises(WireError):
        protowire.field_spans(msg, 0, cut)


@given(payload=st.binary(max_size=400), number=st.integers(1, 15))
def test_read_len_field_is_read_field(payload: bytes, number: int) -> None:
    raw = protowire.encode_len(number, payload) + b"\x08\x01"
    tag, start, stop = protowire.read_len_field(raw, 0, len(raw))
    assert (tag, start, stop) == (
        protowire.tag(number, protowire.LEN),
        *protowire.read_field(raw, 0, len(raw))[2:4],
    )
    if payload:
        with pytest.raises(WireError, match="length runs past"):
            protowire.read_len_field(raw, 0, stop - 1)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00", "field number 0"),
        (b"\x0b", "unsupported wire type 3"),  # groups are not read
        (b"\x0c", "unsupported wire type 4"),
        (b"\x0e", "unsupported wire type 6"),
        (b"\x0a\x05ab", "length runs past the end of the message"),
        (b"\x09\x00\x00", "truncated fixed-width field"),
        (b"\x08", "truncated varint"),
        (b"\x0a", "truncated varint"),
    ],
)
def test_malformed_fields(raw: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        protowire.fields(raw, 0, len(raw))
    with pytest.raises(WireError, match=reason):
        protowire.field_spans(raw, 0, len(raw))


@given(
    key=st.binary(max_size=300),
    ints=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=4, max_size=4),
    value=st.binary(max_size=300),
)
def test_agrees_with_the_protobuf_runtime(key: bytes, ints: list[int], value: bytes) -> None:
    kv = KeyValue(
        key=key,
        create_revision=ints[0],
        mod_revision=ints[1],
        version=ints[2],
        lease=ints[3],
        value=value,
    )
    raw = kv.SerializeToString()
    got = {
        n: (raw[a:b] if w == protowire.LEN else protowire.int64(a))
        for n, w, a, b in protowire.fields(raw, 0, len(raw))
    }
    want = {1: key, 2: ints[0], 3: ints[1], 4: ints[2], 5: value, 6: ints[3]}
    assert got == {n: v for n, v in want.items() if v}  # proto3 leaves zeros out

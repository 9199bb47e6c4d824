"""etcd MVCC: revision keys, ``mvccpb.KeyValue`` decode and value splice, the compaction mark,
and the snapshot scan's fast read of a record's etcd key.

Provenance: the shared fixtures (real kube-apiserver + etcd 3.5.1 snapshots, see
../shared/fixtures/apiserver-v1.36/README.md) for the records Go wrote; records built with the
protobuf runtime (``tests/support/snapshots.py``) and by hand for shapes Go does not write. The
oracles are the protobuf runtime (upb) and the plain :mod:`snapshot_tools.protowire` decode.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot_tools import mvcc, protowire
from snapshot_tools.errors import MalformedValue, SnapshotError
from snapshot_tools.mvcc import Record, decode_entry, decode_record, replace_kv_value
from snapshot_tools.proto.etcd_kv_pb2 import KeyValue
from snapshot_tools.snapshot import Snapshot
from tests.support.fixtures import FIXTURE_CASES, snapshot_path
from tests.support.snapshots import build_db, kv_bytes, revision_key

# -- revision keys -------------------------------------------------------------------------------


@given(main=st.integers(0, 2**64 - 2), sub=st.integers(0, 2**64 - 1), tombstone=st.booleans())
def test_revision_key_round_trip(main: int, sub: int, tombstone: bool) -> None:
    key = mvcc.revision_key(main, sub, tombstone=tombstone)
    assert key == revision_key(main, sub, tombstone)  # the test builder's independent encoding
    raw = kv_bytes(b"/a", 3, 4, 1, b"v")
    assert (
        decode_record(key, raw)[1:3] == (main, sub)
        and decode_record(key, raw).tombstone is tombstone
    )
    assert mvcc.check_revision_key(key, 0, 0, len(key)) is tombstone
    assert sorted([mvcc.revision_key(main, sub), mvcc.revision_key(main + 1, 0)]) == [
        mvcc.revision_key(main, sub),
        mvcc.revision_key(main + 1, 0),
    ]  # byte order is revision order


@pytest.mark.parametrize(
    ("key", "reason", "at"),
    [
        (revision_key(5)[:16], "revision key of 16 bytes, expected 17 or 18", 0),
        (revision_key(5) + b"tt", "revision key of 19 bytes, expected 17 or 18", 0),
        (revision_key(5)[:8] + b"-" + revision_key(5)[9:], "revision key has no '_' at byte 8", 8),
        (revision_key(5) + b"x", "18-byte revision key does not end in 't'", 17),
    ],
)
def test_bad_revision_keys(key: bytes, reason: str, at: int) -> None:
    framed = b"\x00" * 3 + key
    with pytest.raises(SnapshotError, match=reason) as info:
        mvcc.check_revision_key(framed, 0, 3, len(framed))
    assert info.value.offset == 3 + at
    with pytest.raises(MalformedValue, match="not a revision key"):
        decode_record(key, kv_bytes(b"/a"))


def test_a_nested_bucket_in_the_key_bucket_is_damage() -> None:
    with pytest.raises(SnapshotError, match="nested bucket"):
        mvcc.check_revision_key(revision_key(5), 1, 0, 17)


# -- mvccpb.KeyValue -----------------------------------------------------------------------------


def test_kv_reencoding_is_byte_identical_on_every_fixture_record() -> None:
    checked = 0
    for case in FIXTURE_CASES:
        with Snapshot.open(snapshot_path(case)) as snap:
            for key, raw in snap.items(mvcc.KEY_BUCKET):
                kv = KeyValue.FromString(raw)
                # Go's marshal (field order 1..6, zeros omitted) equals protobuf's; we keep both.
                assert kv.SerializeToString() == raw
                assert raw[0] == mvcc.KV_KEY_TAG  # the etcd key first: what the scan relies on
                assert replace_kv_value(raw, kv.value) == raw
                rec = decode_record(key, raw)
                assert (rec.key, rec.value, rec.tombstone) == (kv.key, kv.value, len(key) == 18)
                checked += 1
    assert checked > 500


def test_decode_record() -> None:
    raw = kv_bytes(b"/r/a", 5, 9, 2, b"v", 77)
    assert decode_record(revision_key(9, 1), raw) == Record(b"/r/a", 9, 1, 5, 9, 2, 77, b"v", False)
    tomb = decode_record(revision_key(10, 0, True), kv_bytes(b"/r/a"))
    assert tomb == Record(b"/r/a", 10, 0, 0, 0, 0, 0, b"", True)
    with pytest.raises(MalformedValue, match="not a revision key"):
        decode_record(b"short", raw)
    with pytest.raises(MalformedValue, match="KeyValue does not decode"):
        decode_record(revision_key(9), b"\x0a\x05ab")
    with pytest.raises(MalformedValue, match="not a revision key"):  # the key is checked first
        decode_record(b"short", b"\x0a\x05ab")
    rec, kv = decode_entry(revision_key(9, 1), raw)
    assert rec == decode_record(revision_key(9, 1), raw) and kv == KeyValue.FromString(raw)


@pytest.mark.parametrize(
    "fields",
    [
        {
            "key": b"/a",
            "create_revision": 5,
            "mod_revision": 9,
            "version": 2,
            "value": b"v",
            "lease": 77,
        },
        {
            "key": b"/a",
            "create_revision": 5,
            "mod_revision": 9,
            "version": 2,
            "lease": 77,
        },  # empty value
        {"key": b"/tomb"},
        {
            "key": b"/neg",
            "create_revision": -1,
            "mod_revision": 3,
            "version": 1,
            "value": b"x" * 300,
        },
    ],
)
@pytest.mark.parametrize("new", [b"", b"new", b"N" * 200])
def test_replace_kv_value_changes_only_the_value(fields: dict[str, Any], new: bytes) -> None:
    raw = KeyValue(**fields).SerializeToString()
    out = replace_kv_value(raw, new)
    want = KeyValue(**{**fields, "value": new})
    assert KeyValue.FromString(out) == want
    assert out == want.SerializeToString()  # canonical: what Go's marshal writes
    assert replace_kv_value(raw, new, KeyValue.FromString(raw)) == out  # with the record decoded


def test_replace_kv_value_keeps_non_canonical_bytes() -> None:
    raw = KeyValue(
        key=b"/a", create_revision=5, mod_revision=9, version=3, value=b"old", lease=7
    ).SerializeToString()
    odd = raw.replace(
        b"\x20\x03", b"\x20\x83\x00"
    )  # version as an overlong varint: valid, not canonical
    assert KeyValue.FromString(odd) == KeyValue.FromString(raw)
    assert replace_kv_value(odd, b"new") == odd.replace(b"*\x03old", b"*\x03new")
    assert replace_kv_value(odd, b"") == odd.replace(b"*\x03old", b"")
    no_value = odd.replace(b"*\x03old", b"")
    assert replace_kv_value(no_value, b"v") == odd.replace(
        b"*\x03old", b"*\x01v"
    )  # before lease (6)


def test_replace_kv_value_splices_what_the_runtime_accepts() -> None:
    # A lease varint whose 10th byte overflows 64 bits: upb (and etcd's Go decoder) take it, so
    # the splice steps over it rather than refusing the record.
    raw = kv_bytes(b"/a", 5, 9, 3, b"old") + b"\x30" + b"\xff" * 9 + b"\x7f"
    KeyValue.FromString(raw)
    assert replace_kv_value(raw, b"new") == raw.replace(b"*\x03old", b"*\x03new")


def test_replace_kv_value_refuses_garbage() -> None:
    with pytest.raises(MalformedValue):
        replace_kv_value(b"\x0a\x05ab", b"x")  # length runs past the record
    with pytest.raises(MalformedValue):
        replace_kv_value(b"\x0b", b"x")  # wire type 3 (group)


# -- the compaction mark ---------------------------------------------------------------------------


class _Buckets:
    def __init__(self, meta: dict[bytes, bytes]) -> None:
        self.meta = meta

    def items(self, bucket: bytes) -> list[tuple[bytes, bytes]]:
        assert bucket == mvcc.META_BUCKET
        return sorted(self.meta.items())


@pytest.mark.parametrize(
    ("meta", "want"),
    [
        ({}, 0),
        ({b"consistent_index": bytes(8)}, 0),
        ({mvcc.FINISHED_COMPACT_REV: revision_key(1234)}, 1234),
        ({mvcc.FINISHED_COMPACT_REV: (77).to_bytes(8, "big")}, 77),
        ({mvcc.FINISHED_COMPACT_REV: b"\x01"}, 0),  # too short to hold a revision
    ],
)
def test_compacted_revision(meta: dict[bytes, bytes], want: int) -> None:
    assert mvcc.compacted_revision(_Buckets(meta)) == want


def test_compacted_revision_of_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    meta = {b"consistent_index": bytes(8), b"finishedCompactRev": revision_key(41)}
    path.write_bytes(
        build_db({b"key": {revision_key(42): kv_bytes(b"/a", 42, 42, 1, b"v")}, b"meta": meta})
    )
    with Snapshot.open(path) as snap:
        assert mvcc.compacted_revision(snap) == 41


# -- the scan's fast path against the plain protowire decode ------------------------------------


def _plain_key(raw: bytes) -> bytes:
    """The etcd key of a record by the plain protowire decode (the last field 1, as upb)."""
    key = b""
    for number, wire, a, b in protowire.fields(raw, 0, len(raw)):
        if number == mvcc.KV_KEY and wire == protowire.LEN:
            key = raw[a:b]
    return key


@st.composite
def _record(draw: st.DrawFn) -> bytes:
    key = draw(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([b"k" * 127, b"k" * 128, b"k" * 16383, b"k" * 16384, b"k" * 20000]),
        )
    )
    shape = draw(st.sampled_from(["go", "key-last", "padded-length", "unknown-first"]))
    rest = kv_bytes(b"", 3, 4, 1, draw(st.binary(max_size=64)), draw(st.integers(0, 2**40)))
    if shape == "go":
        return kv_bytes(key, 3, 4, 1, rest[-8:])
    field = protowire.encode_len(mvcc.KV_KEY, key)
    if shape == "key-last":
        return rest + field
    if shape == "padded-length":  # valid protobuf, not what Go writes: 0x80 0x00 for length 0
        n = protowire.encode_varint(len(key))
        return bytes([mvcc.KV_KEY_TAG]) + n[:-1] + bytes([n[-1] | 0x80, 0]) + key + rest
    return b"\x38\x01" + field + rest  # field 7 (unknown) before the key


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(_record(), min_size=1, max_size=8))
def test_scan_fast_path_matches_the_plain_decode(records: list[bytes]) -> None:
    stored = {revision_key(i + 2): raw for i, raw in enumerate(records)}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "snap.db"
        path.write_bytes(build_db({b"key": stored, b"meta": {}}))
        with Snapshot.open(path) as snap:
            scanned = [ekey for ekey, _loc in snap._scan(b"")]  # the fast path, where it applies
            read = [r.key for r in snap.records()]  # the protobuf runtime
    plain = [_plain_key(raw) for raw in records]
    assert scanned == plain == read

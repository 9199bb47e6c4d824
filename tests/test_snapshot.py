"""The snapshot views (snapshot_tools/snapshot.py) decode ``mvccpb.KeyValue`` exactly as the
protobuf runtime does.

The scan reads each record's etcd key in place when Go's field order allows it and decodes the
record otherwise; these tests build key buckets from canonical and non-canonical encodings
(fields reordered or repeated, unknown fields, padded, negative and 10-byte varints, long keys,
leases, empty values, tombstones) and compare every view with ``KeyValue.FromString`` on the
same bytes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot_tools.errors import SnapshotError
from snapshot_tools.proto.etcd_kv_pb2 import KeyValue
from snapshot_tools.snapshot import Record, Snapshot
from tests.support.k8s_objects import field
from tests.support.snapshots import build_db, kv_bytes, revision_key

_INT64 = st.one_of(
    st.integers(0, 300),
    st.integers(0, 2**63 - 1),
    st.integers(-(2**63), -1),
    st.sampled_from([0, 127, 128, 16383, 16384, 2**21, 2**35, 2**56, 2**63 - 1]),
)
_KEYS = st.one_of(
    st.sampled_from([b"/r/a", b"/r/b", b"/r/c", b"/s/a"]),
    # 2-byte key lengths, one key a prefix of another: grouping must use the whole key
    st.sampled_from([b"/r/" + b"k" * 200, b"/r/" + b"k" * 200 + b"2", b"/r/" + b"k" * 127]),
    st.binary(min_size=0, max_size=40),
    st.binary(min_size=100, max_size=300),  # longer than the head the scan copies
)
_VALUES = st.one_of(st.just(b""), st.binary(max_size=64), st.binary(min_size=3000, max_size=9000))


@st.composite
def _odd_kv(draw: st.DrawFn, key: bytes) -> bytes:
    """The message in a shape Go does not write: reordered, repeated, padded, unknown fields."""
    fields: list[tuple[int, int | bytes]] = [(1, key)]
    fields.extend((num, draw(_INT64)) for num in (2, 3, 4, 6) if draw(st.booleans()))
    if draw(st.booleans()):
        fields.append((5, draw(_VALUES)))
    if draw(st.booleans()):
        repeated = draw(st.sampled_from([2, 3, 4, 5, 6]))
        fields.append((repeated, draw(st.one_of(_INT64, _VALUES))))
    if draw(st.booleans()):
        unknown = draw(st.integers(7, 40))
        fields.append((unknown, draw(st.one_of(st.integers(0, 2**40), _VALUES))))
    head, rest = fields[0], draw(st.permutations(fields[1:]))
    pad = draw(st.integers(0, 2))  # non-minimal varints (still valid protobuf)
    return b"".join(field(n, v, pad) for n, v in [head, *rest])


@st.composite
def _records(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    out = []
    for main in range(2, 2 + draw(st.integers(1, 12))):
        key = draw(_KEYS)
        tomb = draw(st.integers(0, 5)) == 0
        if tomb:
            raw = kv_bytes(key)
        elif draw(st.booleans()):
            ints = [draw(_INT64) for _ in range(4)]
            raw = kv_bytes(key, ints[0], ints[1], ints[2], draw(_VALUES), ints[3])
        else:
            raw = draw(_odd_kv(key))
        out.append((revision_key(main, draw(st.integers(0, 3)), tomb), raw))
    return out


def _expected(rkey: bytes, raw: bytes) -> Record:
    kv = KeyValue.FromString(raw)
    main, sub = int.from_bytes(rkey[:8], "big"), int.from_bytes(rkey[9:17], "big")
    return Record(
        kv.key, main, sub, kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.value,
        len(rkey) == 18,
    )  # fmt: skip


def _open(records: list[tuple[bytes, bytes]], directory: str) -> Snapshot:
    path = Path(directory) / "snap.db"
    meta = {b"consistent_index": b"\0" * 8}
    path.write_bytes(build_db({b"key": dict(records), b"meta": meta}))
    return Snapshot.open(path)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_records())
def test_views_match_the_protobuf_runtime(records: list[tuple[bytes, bytes]]) -> None:
    want = [_expected(rkey, raw) for rkey, raw in records]
    with tempfile.TemporaryDirectory() as d, _open(records, d) as snap:
        assert list(snap.records()) == want
        by_key = sorted(want, key=lambda r: r.key)  # stable: revision order within a key
        assert list(snap.all_revisions()) == by_key
        newest: dict[bytes, Record] = {}
        for r in want:
            newest[r.key] = r
        live = [newest[k] for k in sorted(newest) if not newest[k].tombstone]
        assert list(snap.latest()) == live
        assert list(snap.latest(b"/r/")) == [r for r in live if r.key.startswith(b"/r/")]
        assert all(type(r) is Record for r in snap.latest())


@pytest.mark.parametrize(
    "raw",
    [
        kv_bytes(b"/r/a", 5, 6, 1, b"v" * 50)[:-10],  # value runs past the record
        kv_bytes(b"/r/a", 5, 6, 1, b"v") + b"\x30",  # lease varint cut short
        kv_bytes(b"/r/a", 5, 6, 1, b"v") + b"\x30" + b"\xff" * 11,  # varint longer than 10 bytes
        kv_bytes(b"/r/a", 5, 6, 1, b"v") + b"\x07",  # a tag with an invalid wire type
    ],
)
def test_damaged_record_is_a_snapshot_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        KeyValue.FromString(raw)  # the oracle agrees the bytes are damaged
    with tempfile.TemporaryDirectory() as d, _open([(revision_key(2), raw)], d) as snap:
        for view in (snap.latest, snap.all_revisions, snap.records):
            with pytest.raises(SnapshotError, match="KeyValue does not decode"):
                list(view())

"""The page-level bbolt reader on files shaped by tests/support/snapshots.py and on the fixtures.

The builder writes what etcd on Linux never does (a persisted freelist in both count forms,
nested buckets, page sizes other than 4096), so those reader paths are exercised here.
"""

from __future__ import annotations

import mmap
import struct

import pytest

from snapshot_tools.bbolt import DB, fnv64a
from snapshot_tools.bbolt.layout import META_OFFSET, NO_FREELIST
from snapshot_tools.errors import SnapshotError
from tests.support.fixtures import FIXTURES
from tests.support.snapshots import build_db, kv_bytes, revision_key


def _content() -> dict[bytes, dict[bytes, object]]:
    return {
        b"small": {b"a": b"1", b"b": b""},
        b"empty": {},
        b"big": {f"k{i:04d}".encode(): bytes([i % 251]) * (i * 13 % 9000) for i in range(400)},
        b"outer": {
            b"leaf": b"value",
            b"inner": {b"x": b"1", b"deeper": {b"z": b"zz" * 3000}},
            b"zzz": b"last",
        },
    }


def _flatten(db: DB) -> dict[bytes, object]:
    def walk(bucket) -> dict[bytes, object]:  # type: ignore[no-untyped-def]
        out: dict[bytes, object] = {}
        for key, value in bucket.items():
            out[key] = walk(bucket.bucket(key)) if value is None else value
        return out

    return {name: walk(db.bucket(name)) for name in db.buckets()}


@pytest.mark.parametrize("page_size", [1024, 4096, 16384, 65536])
@pytest.mark.parametrize("freelist", ["none", "count", "extended"])
def test_round_trip_any_page_size_and_freelist_form(page_size: int, freelist: str) -> None:
    data = build_db(_content(), page_size=page_size, freelist=freelist, free_pages=3)
    db = DB(data)
    assert db.page_size == page_size
    assert _flatten(db) == _content()
    assert db.buckets() == sorted(_content())
    pm = db.page_map()
    assert len(pm.free) == 3
    assert pm.unreachable == []
    assert pm.persisted_freelist is (freelist != "none")
    assert (db.meta.freelist == NO_FREELIST) is (freelist == "none")
    # every page below the HWM is accounted for exactly once
    assert pm.reachable + len(pm.free) == db.hwm


def test_extended_freelist_count_is_read() -> None:
    data = build_db({b"a": {b"k": b"v"}}, freelist="extended", free_pages=5)
    db = DB(data)
    fl = db.freelist()
    assert fl is not None and len(fl) == 5
    count = struct.unpack_from("<H", data, db.meta.freelist * 4096 + 10)[0]
    assert count == 0xFFFF  # the extended form really was on disk


def test_inline_and_paged_buckets() -> None:
    db = DB(build_db(_content()))
    assert db.bucket(b"small").inline is not None
    assert db.bucket(b"empty").inline is not None
    assert db.bucket(b"big").inline is None
    assert db.bucket(b"outer").inline is None  # has a sub-bucket, so never inline
    assert db.bucket(b"missing") is None
    assert list(db.bucket(b"empty").items()) == []


def test_items_value_none_for_nested_bucket_like_foreach() -> None:
    db = DB(build_db(_content()))
    assert list(db.bucket(b"outer").items()) == [(b"inner", None), (b"leaf", b"value"), (b"zzz", b"last")]


def test_unreachable_unfreed_pages_listed_when_freelist_persisted() -> None:
    data = bytearray(build_db({b"a": {b"k": b"v"}}, freelist="count", free_pages=4))
    db = DB(bytes(data))
    fl_page = db.meta.freelist
    # drop the last id from the freelist: that page becomes "unreachable unfreed" (tx.Check's term)
    struct.pack_into("<H", data, fl_page * 4096 + 10, 3)
    pm = DB(bytes(data)).page_map()
    assert len(pm.free) == 3
    assert len(pm.unreachable) == 1


def test_last_entry_in_multi_level_tree() -> None:
    records = {revision_key(i): kv_bytes(b"/k", i, i, 1, b"x" * 500) for i in range(2, 3000)}
    db = DB(build_db({b"key": records}))
    bucket = db.bucket(b"key")
    assert sum(1 for n in bucket.nodes() if n.flags == 0x01) > 1  # really has branch levels
    _, kstart, kend, _ = bucket.last()
    assert data_slice(db, kstart, kend) == revision_key(2999)


def data_slice(db: DB, start: int, end: int) -> bytes:
    return bytes(db.buf[start:end])


def test_fnv64a_vectors() -> None:
    # Go: fnv.New64a() of "" and "a"
    assert fnv64a(b"") == 0xCBF29CE484222325
    assert fnv64a(b"a") == 0xAF63DC4C8601EC8C


def _corrupt_meta(data: bytearray, offset: int) -> None:
    data[offset + META_OFFSET + 48] ^= 0xFF  # txid byte: checksum no longer matches


@pytest.mark.parametrize("page_size", [4096, 16384])
def test_damaged_meta0_falls_back_to_meta1_with_page_size_probe(page_size: int) -> None:
    data = bytearray(build_db(_content(), page_size=page_size))
    good = DB(bytes(data))
    assert good.meta.offset == 0 and good.meta.txid == 10
    _corrupt_meta(data, 0)
    db = DB(bytes(data))
    assert db.meta.offset == page_size and db.meta.txid == 9
    assert db.page_size == page_size
    assert _flatten(db) == _content()


def test_damaged_meta1_uses_meta0() -> None:
    data = bytearray(build_db(_content()))
    _corrupt_meta(data, 4096)
    assert DB(bytes(data)).meta.txid == 10


def test_both_metas_damaged_is_refused() -> None:
    data = bytearray(build_db(_content()))
    _corrupt_meta(data, 0)
    _corrupt_meta(data, 4096)
    with pytest.raises(SnapshotError, match="meta"):
        DB(bytes(data))


def test_zero_checksum_is_not_checked_like_bbolt() -> None:
    data = bytearray(build_db(_content()))
    struct.pack_into("<Q", data, META_OFFSET + 56, 0)
    assert DB(bytes(data)).meta.offset == 0


def test_higher_txid_meta_wins() -> None:
    data = bytearray(build_db(_content()))
    # make meta1 the newer one, with a valid checksum
    off = 4096 + META_OFFSET
    struct.pack_into("<Q", data, off + 48, 11)
    struct.pack_into("<Q", data, off + 56, fnv64a(bytes(data[off : off + 56])))
    assert DB(bytes(data)).meta.txid == 11


def test_reads_fixture_over_mmap() -> None:
    path = FIXTURES / "a-identity" / "etcd-snapshot.db"
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        db = DB(mm)
        assert b"key" in db.buckets() and b"meta" in db.buckets()
        pm = db.page_map()
        assert not pm.persisted_freelist  # etcd on Linux: NoFreelistSync
        assert pm.reachable + len(pm.free) == db.hwm
        assert pm.free  # etcd snapshots carry free pages (stale data)

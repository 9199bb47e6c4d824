"""Damaged, truncated and non-snapshot inputs: exit 3, one stderr line, never a traceback.

Every damaged file is a copy of a real fixture (``a-identity``: key bucket = branch page 22
over leaf pages) edited in ``tmp_path``; the shared fixture itself is never touched.
"""

from __future__ import annotations

import contextlib
import struct
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot_tools.bbolt import DB
from snapshot_tools.errors import InputError, SnapshotError
from snapshot_tools.snapshot import Snapshot
from snapshot_tools.status import snapshot_status
from tests.support.fixtures import FIXTURES

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.support.cli import Cli

SOURCE = FIXTURES / "a-identity" / "etcd-snapshot.db"
PS = 4096


def _layout() -> tuple[int, list[int], int]:
    """(branch pgid, leaf pgids, hwm) of the fixture's key bucket, read before damaging it."""
    db = DB(SOURCE.read_bytes())
    nodes = list(db.bucket(b"key").nodes())
    branch = next(n.pgid for n in nodes if n.flags == 0x01)
    leaves = [n.pgid for n in nodes if n.flags == 0x02 and n.count]
    return branch, leaves, db.hwm


BRANCH, LEAVES, HWM = _layout()


def _branch_child_offset(i: int) -> int:
    return BRANCH * PS + 16 + 16 * i + 8


def _leaf_elem(pgid: int, i: int) -> int:
    return pgid * PS + 16 + 16 * i


def _set(fmt: str, offset: int, value: int) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        struct.pack_into(fmt, data, offset, value)

    return edit


def _flip(offset: int) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        data[offset] ^= 0xFF

    return edit


def _both(*edits: Callable[[bytearray], None]) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        for e in edits:
            e(data)

    return edit


def _truncate(size: int) -> Callable[[bytearray], None]:
    def edit(data: bytearray) -> None:
        del data[size:]

    return edit


def _rev_key_offset(pgid: int) -> int:
    _flags, pos, _ksize, _vsize = struct.unpack_from("<IIII", SOURCE.read_bytes(), _leaf_elem(pgid, 0))
    return _leaf_elem(pgid, 0) + pos


DAMAGE = {
    "both-metas-bad-magic": _both(_flip(16), _flip(PS + 16)),
    "both-metas-bad-checksum": _both(_flip(16 + 56), _flip(PS + 16 + 56)),
    "meta-root-past-hwm": _both(_set("<Q", 16 + 16, HWM + 5), _flip(PS + 16)),
    "branch-child-past-end": _set("<Q", _branch_child_offset(3), 10**9),
    "branch-child-is-meta": _set("<Q", _branch_child_offset(0), 1),
    "branch-loop-to-itself": _set("<Q", _branch_child_offset(2), BRANCH),
    "branch-page-id-wrong": _set("<Q", BRANCH * PS, BRANCH + 1),
    "branch-two-type-flags": _set("<H", BRANCH * PS + 8, 0x03),
    "branch-count-huge": _set("<H", BRANCH * PS + 10, 0xFFFF),
    "branch-key-past-page": _set("<I", BRANCH * PS + 16 + 4, 10**6),
    "branch-overflow-past-hwm": _set("<I", BRANCH * PS + 12, 10**6),
    "leaf-ksize-huge": _set("<I", _leaf_elem(LEAVES[0], 0) + 8, 0x7FFFFFFF),
    "leaf-vsize-huge": _set("<I", _leaf_elem(LEAVES[1], 0) + 12, 0xFFFFFFFF),
    "leaf-pos-huge": _set("<I", _leaf_elem(LEAVES[2], 0) + 4, 0xFFFFFF00),
    "leaf-ksize-16": _set("<I", _leaf_elem(LEAVES[3], 0) + 8, 16),
    "leaf-bucket-flag-in-key-bucket": _set("<I", _leaf_elem(LEAVES[4], 0), 1),
    "leaf-page-type-freelist": _set("<H", LEAVES[5] * PS + 8, 0x10),
    "revision-key-no-underscore": _set("<B", _rev_key_offset(LEAVES[6]) + 8, ord("x")),
    "keyvalue-garbage": _set("<Q", _rev_key_offset(LEAVES[7]) + 17, 0xFFFFFFFFFFFFFFFF),
    "root-bucket-page-zeroed": lambda d: d.__setitem__(
        slice(DB(bytes(d)).meta.root * PS, DB(bytes(d)).meta.root * PS + 64), bytes(64)
    ),
    "truncated-to-1": _truncate(1),
    "truncated-to-79": _truncate(79),
    "truncated-after-meta0": _truncate(PS + 40),
    "truncated-after-metas": _truncate(2 * PS),
    "truncated-mid-branch": _truncate(BRANCH * PS + 100),
    "truncated-half": _truncate(HWM * PS // 2),
    "truncated-last-page": _truncate(HWM * PS - 1),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_copy_exit_3_one_line(name: str, tmp_path: Path, cli: Cli) -> None:
    data = bytearray(SOURCE.read_bytes())
    DAMAGE[name](data)
    path = tmp_path / "damaged.db"
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError):
        _open_and_read_everything(path)
    rc, out, err = cli("status", str(path))
    assert rc == 3
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("snapshot-tools: error: damaged snapshot:")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.db", "no such file"),
        (lambda p: p, "directory"),
        (lambda p: (p / "empty.db", (p / "empty.db").write_bytes(b""))[0], "empty"),
        (lambda p: (p / "text.db", (p / "text.db").write_bytes(b"hello world\n" * 2000))[0], "not a bbolt"),
        (lambda p: (p / "zeros.db", (p / "zeros.db").write_bytes(bytes(3 * PS + 32)))[0], "not a bbolt"),
    ],
    ids=["missing", "directory", "empty", "text", "zeros"],
)
def test_not_a_snapshot_exit_3(make, message: str, tmp_path: Path, cli: Cli) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(InputError):
        Snapshot.open(path)
    rc, out, err = cli("status", str(path))
    assert rc == 3 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_one_damaged_meta_is_read(tmp_path: Path, cli: Cli) -> None:
    data = bytearray(SOURCE.read_bytes())
    data[16 + 48] ^= 0x01  # meta 0's txid: checksum fails, meta 1 (txid - 1) is used
    path = tmp_path / "meta0.db"
    path.write_bytes(bytes(data))
    with Snapshot.open(path) as snap:
        assert snap.db.meta.offset == PS
        assert snap.trailer == "mismatch"  # the file changed after etcd hashed it
    rc, out, err = cli("status", str(path), "-o", "json")
    assert rc == 0
    assert '"trailer": "mismatch"' in out
    assert len(err.strip().splitlines()) == 1 and "warning" in err


def test_truncated_trailer_only_reads_as_missing(tmp_path: Path) -> None:
    full = SOURCE.read_bytes()
    for cut in (32, 31, 1):
        path = tmp_path / f"cut{cut}.db"
        path.write_bytes(full[:-cut])
        assert snapshot_status(path).trailer == "missing"


def _open_and_read_everything(path: Path) -> None:
    with Snapshot.open(path) as snap:
        snapshot_status(path)
        for _ in snap.latest():
            pass
        for _ in snap.all_revisions():
            pass
        snap.db.page_map()


_SIZE = SOURCE.stat().st_size
_STRUCTURAL = [BRANCH, *LEAVES, 0, 1, DB(SOURCE.read_bytes()).meta.root]
_offsets = st.one_of(
    st.integers(0, _SIZE - 1),
    # page headers and element arrays of the pages the reader walks
    st.builds(lambda p, o: p * PS + o, st.sampled_from(_STRUCTURAL), st.integers(0, 255)),
)
_edits = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), _offsets, st.integers(1, 255)),
        st.tuples(st.just("write"), _offsets, st.binary(min_size=1, max_size=24)),
        st.tuples(st.just("truncate"), st.integers(0, _SIZE), st.just(0)),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_edits)
def test_mutated_snapshot_only_snapshot_error(edits: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    data = bytearray(SOURCE.read_bytes())
    for kind, offset, arg in edits:
        if kind == "flip" and offset < len(data):
            data[offset] ^= arg
        elif kind == "write" and offset < len(data):
            data[offset : offset + len(arg)] = arg[: len(data) - offset]
        elif kind == "truncate":
            del data[offset:]
    path = tmp_path / "mutated.db"
    path.write_bytes(bytes(data))
    with contextlib.suppress(SnapshotError):
        _open_and_read_everything(path)

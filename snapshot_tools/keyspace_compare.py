"""Compare a served etcd keyspace with a snapshot file, key by key and byte for byte.

The drill's proof that a restore gives back what the snapshot holds: every key of the latest
revision is read from etcd in pages (``Range`` with a limit, every page at the revision of the
first, so the pages form one consistent view) and walked side by side with the snapshot's own
latest view (:meth:`Snapshot.latest`, also in key order). Key, value, create/mod revision,
version and lease must be equal; the revision and the key count as well. Mismatches name the
etcd key and the fields that differ, never a value.

References: etcd ``api/etcdserverpb/rpc.proto`` (``RangeRequest``: ``key``/``range_end`` ``\\0``
for every key, ``limit``, ``revision``, ``more``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from queue import Full, Queue
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from snapshot_tools.errors import RestoreFailed
from snapshot_tools.snapshot import Snapshot

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from snapshot_tools.snapshot import Record

__all__ = ["PAGE_KEYS", "Comparison", "compare_keyspace"]

PAGE_KEYS = 1000  # keys per Range page: a few MB of Secrets, a hundred round trips per 100k keys
PAGE_BYTES = 64 << 20  # pages of big objects get fewer keys: a page stays near this size
MAX_LISTED = 20  # mismatching keys named in the result (the rest are counted)
_ALL = b"\x00"  # key and range_end both "\0": every key
_GRPC_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
_FIELDS = ("value", "create_revision", "mod_revision", "version", "lease")


@dataclass
class Comparison:
    """What the read-back found; :attr:`ok` when the restored keyspace is the snapshot's."""

    keys_compared: int = 0  # keys present on both sides and compared field by field
    mismatches: int = 0  # compared keys whose value or metadata differ
    missing: int = 0  # in the snapshot, not served by etcd
    extra: int = 0  # served by etcd, not in the snapshot
    snapshot_keys: int = 0
    etcd_keys: int = 0
    snapshot_revision: int = 0
    etcd_revision: int = 0
    pages: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_LISTED differences

    @property
    def ok(self) -> bool:
        return (
            not (self.mismatches or self.missing or self.extra)
            and self.snapshot_keys == self.etcd_keys
            and self.snapshot_revision == self.etcd_revision
        )

    def problem(self) -> str | None:
        """One line saying what differs, or ``None``."""
        if self.ok:
            return None
        parts = []
        if self.mismatches:
            parts.append(f"{self.mismatches} key(s) differ")
        if self.missing:
            parts.append(f"{self.missing} key(s) of the snapshot missing in etcd")
        if self.extra:
            parts.append(f"{self.extra} key(s) in etcd not in the snapshot")
        if self.snapshot_keys != self.etcd_keys:
            parts.append(f"key count {self.etcd_keys} in etcd, {self.snapshot_keys} in the snapshot")
        if self.snapshot_revision != self.etcd_revision:
            parts.append(f"revision {self.etcd_revision} in etcd, {self.snapshot_revision} in the snapshot")
        shown = ", ".join(e["key"] for e in self.examples[:3])
        return "restored keyspace differs: " + "; ".join(parts) + (f" (e.g. {shown})" if shown else "")

    def _note(self, key: bytes, what: str, fields: list[str] | None = None) -> None:
        if len(self.examples) < MAX_LISTED:
            entry: dict[str, Any] = {"key": key.decode("utf-8", "backslashreplace"), "problem": what}
            if fields:
                entry["fields"] = fields
            self.examples.append(entry)


def compare_keyspace(
    snapshot: str, client_port: int, *, page_keys: int = PAGE_KEYS, timeout: float = 300.0
) -> Comparison:
    """Compare etcd at 127.0.0.1:``client_port`` with the latest view of ``snapshot``.

    Raises:
        RestoreFailed: etcd did not answer a range request.
        SnapshotError: the snapshot is damaged (the earlier stages would have said so).
    """
    from pyetcd import etcdrpc  # type: ignore[import-untyped]  # etcd's generated gRPC stubs

    result = Comparison()
    with grpc.insecure_channel(f"127.0.0.1:{client_port}", options=_GRPC_OPTIONS) as channel:
        pages = _prefetched(_pages(etcdrpc, etcdrpc.KVStub(channel), page_keys, timeout, result))
        try:
            with Snapshot.open(snapshot) as snap:
                result.snapshot_revision = snap.revision
                _walk(snap.latest(), (kv for page in pages for kv in page), result)
        finally:
            pages.close()  # stops the reader thread, whatever happened
    return result


def _pages(rpc: Any, kv: Any, page_keys: int, timeout: float, result: Comparison) -> Iterator[Any]:
    """Every KeyValue etcd serves, in key order, a page (list) at a time, at one revision."""
    start, revision, limit = _ALL, 0, page_keys
    while True:
        request = rpc.RangeRequest(key=start, range_end=_ALL, limit=limit, revision=revision)
        try:
            page = kv.Range(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise RestoreFailed(f"the restored etcd did not answer a range read: {exc.code().name}") from None
        result.pages += 1
        if revision == 0:  # the first page fixes the revision, and counts every key
            revision = result.etcd_revision = page.header.revision
            result.etcd_keys = page.count
        if not page.kvs:
            return
        # Keys per page from this page's bytes per key: memory stays near PAGE_BYTES per page.
        per_key = page.ByteSize() // len(page.kvs) + 1
        limit = max(1, min(page_keys, PAGE_BYTES // per_key))
        yield page.kvs
        if not page.more:
            return
        start = page.kvs[-1].key + b"\x00"


class _Failed(NamedTuple):
    error: BaseException


_END = object()


def _prefetched(pages: Iterator[Any], depth: int = 2) -> Generator[Any, None, None]:
    """``pages`` read by a thread, at most ``depth`` ahead: etcd's answer and its decoding (gRPC
    and upb, mostly outside the GIL) overlap the snapshot's decoding in the caller's thread.
    An error in the thread is raised here; closing this generator stops the thread."""
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def run() -> None:
        try:
            for page in pages:
                if not put(page):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            put(_Failed(exc))

    reader = threading.Thread(target=run, name="etcd-read-back", daemon=True)
    reader.start()
    try:
        while True:
            item = queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)  # the channel closes next, which ends a call still in flight


def _walk(expected: Iterator[Record], served: Iterator[Any], result: Comparison) -> None:
    """Merge the two key-ordered streams, counting what matches and what does not."""
    want = next(expected, None)
    for kv in served:
        key = kv.key
        while want is not None and want.key < key:
            result.snapshot_keys += 1
            result.missing += 1
            result._note(want.key, "missing in etcd")
            want = next(expected, None)
        if want is None or want.key != key:
            result.extra += 1
            result._note(key, "not in the snapshot")
            continue
        result.snapshot_keys += 1
        result.keys_compared += 1
        # One tuple comparison per key (Record: create, mod, version, lease at 3:7); the field
        # names only for a key that differs.
        if kv.value != want.value or (kv.create_revision, kv.mod_revision, kv.version, kv.lease) != want[3:7]:
            result.mismatches += 1
            result._note(key, "differs", [f for f in _FIELDS if getattr(kv, f) != getattr(want, f)])
        want = next(expected, None)
    while want is not None:
        result.snapshot_keys += 1
        result.missing += 1
        result._note(want.key, "missing in etcd")
        want = next(expected, None)

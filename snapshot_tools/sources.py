"""Record sources: where ``check`` and ``extract`` read etcd records from.

Verdict and manifest code asks a :class:`RecordSource` for records (the latest view, every
revision, or the keyspace as of a revision) and never learns where they come from. Today the one
source is a snapshot file (:class:`SnapshotSource`); an unpacked archive, an S3 object or a live
etcd plug in behind the same protocol.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import TYPE_CHECKING, NamedTuple, Protocol

from snapshot_tools import mvcc
from snapshot_tools.inputs import SnapshotInput, opened
from snapshot_tools.snapshot import Snapshot

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType
    from typing import Self

    from snapshot_tools.inputs import S3Options
    from snapshot_tools.live_etcd import EtcdTarget
    from snapshot_tools.snapshot import Record

__all__ = [
    "RecordSource",
    "SnapshotSource",
    "Versioned",
    "as_of",
    "judged_records",
    "open_record_source",
    "open_source",
]


class RecordSource(Protocol):
    """A readable etcd keyspace at one revision, with its history."""

    name: str  # how reports name it: a path or a URL
    revision: int  # the newest revision it holds

    def latest(self, prefix: bytes = b"") -> Iterator[Record]:
        """The newest record of every live key under ``prefix``, in key order."""
        ...

    def all_revisions(self, prefix: bytes = b"") -> Iterator[Record]:
        """Every stored record under ``prefix`` (tombstones flagged), by key then revision."""
        ...

    def compacted_revision(self) -> int:
        """The revision history is complete from (0: never compacted)."""
        ...

    def start_integrity(self) -> None:
        """Begin the integrity check (it may run beside the reads)."""
        ...

    def integrity(self) -> str:
        """``valid``, ``mismatch`` or ``missing`` (a snapshot's SHA-256 trailer)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Versioned(NamedTuple):
    """A record to judge, whether it is its key's live latest, and whether its key is deleted
    (its newest revision a tombstone); both ``None`` in the latest view."""

    record: Record
    latest: bool | None
    deleted: bool | None = None


class _Integrity(threading.Thread):
    """The SHA-256 trailer check on the second core while the main thread judges values.

    hashlib releases the GIL on large buffers, so hashing the whole file costs the check
    (almost) no wall time on a machine with a free core.
    """

    def __init__(self, snap: Snapshot) -> None:
        super().__init__(name="snapshot-trailer", daemon=True)
        self.snap = snap
        self.result: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.snap.trailer
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc

    def get(self) -> str:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class SnapshotSource:
    """An etcd snapshot file (``etcdctl snapshot save`` output, or a raw ``member/snap/db``),
    local, zipped, gzipped or in S3 (:mod:`snapshot_tools.inputs`); named as the user named it."""

    def __init__(self, snapshot: str | SnapshotInput, s3: S3Options | None = None, *, progress: bool = False) -> None:
        self._stack = ExitStack()  # the unpacked or downloaded copy, when this source made one
        try:
            self.input = self._stack.enter_context(opened(snapshot, s3, progress=progress))
            self.name = self.input.spec
            self.snapshot = Snapshot.open(self.input.path)
            if self.input.trailer is not None:  # hashed while unpacked: no second pass
                self.snapshot.adopt_trailer(self.input.trailer)
        except BaseException:
            self._stack.close()
            raise
        self.revision = self.snapshot.revision
        self._integrity: _Integrity | None = None

    def latest(self, prefix: bytes = b"") -> Iterator[Record]:
        return self.snapshot.latest(prefix)

    def all_revisions(self, prefix: bytes = b"") -> Iterator[Record]:
        return self.snapshot.all_revisions(prefix)

    def compacted_revision(self) -> int:
        return mvcc.compacted_revision(self.snapshot)

    def start_integrity(self) -> None:
        if self._integrity is None and not self.snapshot.trailer_known:
            self._integrity = _Integrity(self.snapshot)
            self._integrity.start()

    def integrity(self) -> str:
        if self._integrity is None:
            return self.snapshot.trailer
        return self._integrity.get()

    def close(self) -> None:
        # Never close the map under the hashing thread; a signal inside Thread.start() can leave
        # one that never started (join() would raise).
        if self._integrity is not None and self._integrity.ident is not None:
            self._integrity.join()
        self.snapshot.close()
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_source(spec: str | SnapshotInput, s3: S3Options | None = None, *, progress: bool = False) -> RecordSource:
    """The source ``spec`` names: a snapshot file, ``.zip``, ``.gz`` or ``s3://`` object, or a
    :class:`~snapshot_tools.inputs.SnapshotInput` the caller has opened already.

    Raises:
        InputError/SnapshotError: a missing, unreadable or damaged snapshot.
        S3Unreachable: the S3 endpoint did not answer.
    """
    return SnapshotSource(spec, s3, progress=progress)


def judged_records(source: RecordSource, *, all_revisions: bool, prefix: bytes = b"") -> Iterator[Versioned]:
    """The records ``check`` judges: the latest view, or every live revision of every key with
    ``latest`` and ``deleted`` flags (tombstones are not objects)."""
    new = tuple.__new__  # a Versioned per record: skip NamedTuple's Python-level __new__
    if not all_revisions:
        for rec in source.latest(prefix):
            yield new(Versioned, (rec, None, None))
        return
    group: list[Record] = []
    for rec in source.all_revisions(prefix):
        if group and group[0].key != rec.key:
            yield from _flagged(group)
            group = []
        group.append(rec)
    yield from _flagged(group)


def _flagged(group: list[Record]) -> Iterator[Versioned]:
    if not group:
        return
    last = len(group) - 1
    live_last = not group[last].tombstone
    for i, rec in enumerate(group):
        if not rec.tombstone:
            yield Versioned(rec, live_last and i == last, not live_last)


def as_of(source: RecordSource, prefix: bytes, revision: int) -> Iterator[Record]:
    """Per key under ``prefix``, the newest record with ``main <= revision``; keys deleted by
    then are absent (etcd's Range at a past revision)."""
    own = getattr(source, "as_of", None)
    if own is not None:  # a live etcd answers this with a Range at the revision itself
        yield from own(prefix, revision)
        return
    key: bytes | None = None
    chosen: Record | None = None
    for rec in source.all_revisions(prefix):  # by key, then revision ascending
        if rec.key != key:
            if chosen is not None and not chosen.tombstone:
                yield chosen
            key, chosen = rec.key, None
        if rec.main <= revision:
            chosen = rec
    if chosen is not None and not chosen.tombstone:
        yield chosen


def open_record_source(
    spec: str | SnapshotInput,
    etcd: EtcdTarget | None = None,
    s3: S3Options | None = None,
    *,
    progress: bool = False,
) -> RecordSource:
    """The live etcd ``etcd`` names when given (``--etcd-endpoint``), else :func:`open_source`.

    Raises:
        EtcdUnreachable: the endpoint cannot be read (exit 4).
        InputError/SnapshotError: a missing, unreadable or damaged snapshot.
        S3Unreachable: the S3 endpoint did not answer.
    """
    if etcd is not None:
        from snapshot_tools.live_etcd import EtcdSource  # grpc and pyetcd only when needed

        return EtcdSource(etcd)
    return open_source(spec, s3, progress=progress)

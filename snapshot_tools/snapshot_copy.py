"""Copy an etcd snapshot into a new, compact file with a value transform, then verify it.

:func:`copy_snapshot` streams the logical contents of an open :class:`Snapshot` (names, nesting,
sequences, keys and values byte for byte) through a caller's ``transform`` into
:func:`snapshot_tools.bbolt.write_db`, so free pages of the input (old values, see the spec's
"Stale data in free pages") never reach the output. The output is written beside the target
under a temporary name (mode 0600), synced, re-opened with our own reader and verified, then
renamed into place (:class:`snapshot_tools.atomic_file.AtomicFile`).

For the etcd ``key`` bucket, :func:`kv_transform` hands the caller decoded records and splices
only the ``value`` field of the stored ``mvccpb.KeyValue`` (:func:`mvcc.replace_kv_value`), so every
other byte of a record, and every record left alone, stays as stored.

References: etcd ``api/mvccpb/kv.proto`` (field order 1..6, proto3 zero omission, as Go's
marshal writes it), ``server/storage/mvcc/revision.go``, bbolt ``tx_check.go`` (what the
verification mirrors); spec/etcd-snapshot-format.md 1.5, 1.7.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapshot_tools.atomic_file import AtomicFile
from snapshot_tools.bbolt import BucketContents, write_db
from snapshot_tools.bbolt.layout import BUCKET_HEADER, BUCKET_LEAF_FLAG
from snapshot_tools.bbolt.writer import check_page_size
from snapshot_tools.errors import InputError, OutputError, SnapshotError
from snapshot_tools.mvcc import (
    KEY_BUCKET,
    TOMBSTONE_KEY_SIZE,
    Record,
    decode_entry,
    decode_record,
    replace_kv_value,
)
from snapshot_tools.snapshot import Snapshot

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from snapshot_tools.bbolt import Bucket
    from snapshot_tools.bbolt.page import Buffer

BucketPath = tuple[bytes, ...]


class _Drop:
    """The type of :data:`DROP`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"


# A transform result that leaves the entry out of the output (``quarantine --all-revisions``).
DROP = _Drop()
# transform(bucket_path, key, stored_value) -> replacement value, None to keep it, DROP to omit it.
Transform = Callable[[BucketPath, bytes, bytes], "bytes | bytearray | memoryview | _Drop | None"]
# append(bucket_path) -> entries written after the bucket's last one (keys sorting after it):
# called once the bucket's stored entries are through, so it may depend on what the transform saw.
Append = Callable[[BucketPath], "Iterable[tuple[bytes, bytes]]"]
# verify(bucket_path, key, value_as_written) -> truthy when the rewritten value is right.
Verify = Callable[[BucketPath, bytes, bytes], object]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A written and verified snapshot.

    ``buckets`` maps each bucket path to its number of entries (nested bucket entries
    included); ``records`` is the number of plain values written, ``rewritten`` how many of
    them the transform replaced.
    """

    path: Path
    page_size: int
    pages: int
    size: int  # bytes, trailer included
    sha256: str  # hex of the trailer
    revision: int
    records: int
    rewritten: int
    input_size: int
    seconds: float
    buckets: dict[BucketPath, int] = field(default_factory=dict)


def copy_snapshot(
    src: Snapshot,
    dst_path: str | os.PathLike[str],
    transform: Transform | None = None,
    *,
    page_size: int | None = None,
    force: bool = False,
    verify: Verify | None = None,
    before_commit: Callable[[], None] | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
    append: Append | None = None,
    check_output: Callable[[Path], None] | None = None,
    abort: Callable[[], None] | None = None,
) -> WriteResult:
    """Rebuild ``src`` at ``dst_path`` with the values ``transform`` replaces; verify; publish.

    ``transform(bucket_path, key, value)`` is called for every plain value (not for nested
    bucket entries) in stored order and returns the new value or ``None``. After writing, the
    file is re-read with our reader: every page must be reachable exactly once (``tx.Check``),
    keys in order, entry counts per bucket as written, the ``key`` bucket's last revision as in
    the input, and ``verify(bucket_path, key, value)`` truthy for every rewritten value.
    ``page_size`` defaults to the input's. The input is only read. ``before_commit()`` runs after
    verification and before the file is published; raising there leaves nothing at ``dst_path``
    (a caller that finds problems only once every record was seen aborts this way).
    ``inputs`` names every other file the caller read to make the output (configs, key files):
    ``dst_path`` may be none of them, nor the snapshot.

    A transform may return :data:`DROP` to leave an entry out; ``append(bucket_path)`` gives
    entries to write after a bucket's stored ones (etcd: a transaction at a new revision). When
    the ``key`` bucket got appended entries, the output's revision must be the last one's main.
    ``check_output(temp_path)`` runs on the written, verified file before ``before_commit``
    (a caller's own comparison with the input); raising there leaves nothing at ``dst_path``.
    ``abort()`` runs when anything (a signal too) stops the run once ``before_commit`` has begun
    and the output was not published: a caller undoes what ``before_commit`` wrote elsewhere.

    Raises:
        OutputError: ``dst_path`` is the snapshot or one of ``inputs``, is not a regular file,
            exists without ``force``, cannot be written, or the written file fails verification
            (nothing is then left at ``dst_path``).
        SnapshotError: the input is damaged.
        ValueError: a bad page size, or a transform result that is not bytes.
        Any exception from ``transform`` or ``verify``, after the temporary file is removed.
    """
    started = time.monotonic()
    ps = check_page_size(src.page_size if page_size is None else page_size)
    state = _CopyState(transform, append)
    meta = src.db.meta
    with AtomicFile(dst_path, force=force, inputs=[src.path, *inputs]) as out:
        assert out.file is not None
        try:
            stats = write_db(
                out.file,
                _top_buckets(src, state),
                page_size=ps,
                txid=max(meta.txid, 1),
                root_sequence=meta.sequence,
                sync=True,
            )
        except OSError as exc:
            raise OutputError(f"{out.target}: cannot write the output: {exc.strerror or exc}") from None
        out.sync()
        expected = src.revision
        last_appended = state.appended.get((KEY_BUCKET,))
        if last_appended is not None:
            expected = int.from_bytes(last_appended[:8], "big")
        revision = _verify_output(out.temp_path, stats.counts, state.marks, verify, expected)
        if check_output is not None:
            check_output(out.temp_path)
        try:
            if before_commit is not None:
                before_commit()
            out.commit()
        except BaseException:
            if abort is not None and not out.published:
                abort()
            raise
    assert stats.sha256 is not None
    return WriteResult(
        path=out.target,
        page_size=ps,
        pages=stats.pages,
        size=stats.size,
        sha256=stats.sha256.hex(),
        revision=revision,
        records=state.records,
        rewritten=state.rewritten,
        input_size=src.size,
        seconds=time.monotonic() - started,
        buckets=stats.counts,
    )


class _CopyState:
    __slots__ = ("append", "appended", "dropped", "marks", "records", "rewritten", "transform")

    def __init__(self, transform: Transform | None, append: Append | None = None) -> None:
        self.transform = transform
        self.append = append
        self.records = 0
        self.rewritten = 0
        self.dropped = 0
        self.appended: dict[BucketPath, bytes] = {}  # bucket path -> last key appended
        # Per bucket path, one byte per entry in key order: 1 = rewritten (checked by verify).
        self.marks: dict[BucketPath, bytearray] = {}


def _top_buckets(src: Snapshot, state: _CopyState) -> Iterator[tuple[bytes, BucketContents]]:
    root = src.db.root()
    buf = src.db.buf
    for flags, kstart, kend, vend in root.spans():
        name = buf[kstart:kend]
        if not flags & BUCKET_LEAF_FLAG:
            raise SnapshotError(f"the root bucket holds a plain value {name[:64]!r}", offset=kstart)
        yield name, _contents(root.child(name, kend, vend), (name,), buf, kend, state)


def _contents(bucket: Bucket, path: BucketPath, buf: Buffer, header_at: int, state: _CopyState) -> BucketContents:
    _root, sequence = BUCKET_HEADER.unpack_from(buf, header_at)
    return BucketContents(_items(bucket, path, state), sequence)


def _items(bucket: Bucket, path: BucketPath, state: _CopyState) -> Iterator[tuple[bytes, bytes | BucketContents]]:
    """The entries of ``bucket`` in key order, values transformed: the copy's hot path."""
    buf = bucket.db.buf
    transform = state.transform
    marks = None
    if transform is not None:
        marks = state.marks.setdefault(path, bytearray())
    records = 0
    rewritten = 0
    try:
        for batch in bucket.leaf_batches():
            for flags, kstart, kend, vend in batch:
                key = buf[kstart:kend]
                if flags & BUCKET_LEAF_FLAG:
                    if marks is not None:
                        marks.append(0)
                    yield key, _contents(bucket.child(key, kend, vend), (*path, key), buf, kend, state)
                    continue
                value = buf[kend:vend]
                records += 1
                if transform is not None and marks is not None:  # set together
                    new = transform(path, key, value)
                    if new is None:
                        marks.append(0)
                    elif isinstance(new, _Drop):
                        records -= 1
                        state.dropped += 1
                        continue
                    else:
                        if type(new) is not bytes:
                            if not isinstance(new, (bytearray, memoryview)):
                                raise ValueError(f"transform returned {type(new).__name__}, expected bytes or None")
                            new = bytes(new)
                        value = new
                        rewritten += 1
                        marks.append(1)
                yield key, value
        if state.append is not None:
            for key, value in state.append(path):
                records += 1
                if marks is not None:
                    marks.append(0)
                state.appended[path] = key
                yield key, value
    finally:
        state.records += records
        state.rewritten += rewritten


def _verify_output(
    path: Path,
    counts: dict[BucketPath, int],
    marks: dict[BucketPath, bytearray],
    verify: Verify | None,
    revision: int,
) -> int:
    """Re-read the written file with our reader; return its revision.

    The page accounting is the reader's ``tx.Check`` (:class:`snapshot_tools.bbolt.PageWalk`):
    metas, the freelist and every tree page referenced exactly once, and nothing else below the
    high-water mark (the freelist is empty).

    Raises:
        OutputError: any difference.
    """

    def fail(why: str) -> OutputError:
        return OutputError(f"the written snapshot failed verification: {why}")

    try:
        with Snapshot.open(path) as snap:
            buf = snap.db.buf
            walk = snap.db.walk()
            if walk.freelist is None or walk.freelist:
                raise fail("expected an empty persisted freelist")
            found: dict[BucketPath, int] = {}
            failures = 0
            first_failure = b""
            bpath = None
            for leaf_path, spans in walk:
                if leaf_path != bpath:  # a bucket's leaves come together
                    bpath = leaf_path
                    flagged = marks.get(bpath) if verify is not None else None
                    n = 0
                    prev = None
                for flags, kstart, kend, vend in spans:
                    key = buf[kstart:kend]
                    if prev is not None and key <= prev:
                        raise fail(f"keys out of order in bucket {bpath!r}")
                    prev = key
                    if (
                        not flags & BUCKET_LEAF_FLAG
                        and flagged is not None
                        and n < len(flagged)
                        and flagged[n]
                        and verify is not None  # always, when flagged is set
                        and not verify(bpath, key, buf[kend:vend])
                    ):
                        failures += 1
                        first_failure = first_failure or key
                    n += 1
                found[bpath] = n
            pages = walk.page_map()
            if found != counts:
                diff = sorted(p for p in set(found) | set(counts) if found.get(p) != counts.get(p))
                raise fail(f"entry counts differ from what was written in buckets {diff[:5]!r}")
            if pages.unreachable:
                raise fail(f"{len(pages.unreachable)} pages below the high-water mark are unreachable")
            if snap.revision != revision:
                raise fail(f"revision {snap.revision}, the input has {revision}")
            if failures:
                raise fail(f"{failures} rewritten values did not verify (first key {first_failure[:64]!r})")
            return snap.revision
    except SnapshotError as exc:
        raise fail(exc.reason) from None
    except InputError as exc:
        raise fail(str(exc)) from None


# -- hooks over etcd records -----------------------------------------------------------------


def kv_transform(replace: Callable[[Record], bytes | None], *, bucket: bytes = KEY_BUCKET) -> Transform:
    """A :func:`copy_snapshot` transform over decoded etcd records.

    ``replace(record)`` is called for every live record of the top-level ``bucket`` (not for
    tombstones, which carry no value) and returns the new inner value or ``None``; the stored
    KeyValue then changes in its ``value`` field only (:func:`mvcc.replace_kv_value`). Other
    buckets are copied unchanged.

    Raises (from the transform):
        MalformedValue: a key that is not a revision key, or a KeyValue that does not decode.
    """
    path = (bucket,)

    def transform(bpath: BucketPath, key: bytes, raw: bytes) -> bytes | None:
        if bpath != path or len(key) == TOMBSTONE_KEY_SIZE:
            return None
        rec, kv = decode_entry(key, raw)
        new = replace(rec)
        return None if new is None else replace_kv_value(raw, new, kv)

    return transform


def kv_verify(check: Callable[[Record], object], *, bucket: bytes = KEY_BUCKET) -> Verify:
    """A :func:`copy_snapshot` ``verify`` hook over decoded etcd records (as written)."""
    path = (bucket,)

    def verify(bpath: BucketPath, key: bytes, raw: bytes) -> object:
        if bpath != path:
            return True
        return check(decode_record(key, raw))

    return verify


__all__ = [
    "DROP",
    "Append",
    "BucketPath",
    "Transform",
    "Verify",
    "WriteResult",
    "copy_snapshot",
    "kv_transform",
    "kv_verify",
]

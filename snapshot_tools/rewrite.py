"""Rewrite an etcd snapshot: copy every bucket into a new, compact file, replacing chosen values.

:func:`copy_snapshot` streams the logical contents of an open :class:`Snapshot` (names, nesting,
sequences, keys and values byte for byte) through a caller's ``transform`` into
:func:`snapshot_tools.bbolt.write_db`, so free pages of the input (old values, see the spec's
"Stale data in free pages") never reach the output. The output is written beside the target
under a temporary name (mode 0600), synced, re-opened with our own reader and verified, then
renamed into place (:class:`snapshot_tools.atomic_file.AtomicFile`).

For the etcd ``key`` bucket, :func:`kv_transform` hands the caller decoded records and splices
only the ``value`` field of the stored ``mvccpb.KeyValue`` (:func:`replace_kv_value`), so every
other byte of a record, and every record left alone, stays as stored.

References: etcd ``api/mvccpb/kv.proto`` (field order 1..6, proto3 zero omission, as Go's
marshal writes it), ``server/storage/mvcc/revision.go``, bbolt ``tx_check.go`` (what the
verification mirrors); spec/etcd-snapshot-format.md 1.5, 1.7.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from snapshot_tools.atomic_file import AtomicFile
from snapshot_tools.bbolt import BucketContents, write_db
from snapshot_tools.bbolt.layout import BUCKET_HEADER, BUCKET_LEAF_FLAG, LEAF
from snapshot_tools.bbolt.page import leaf_spans
from snapshot_tools.bbolt.writer import check_page_size
from snapshot_tools.errors import InputError, MalformedValue, OutputError, SnapshotError
from snapshot_tools.proto.etcd_kv_pb2 import KeyValue
from snapshot_tools.snapshot import KEY_BUCKET, Record, Snapshot

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from snapshot_tools.bbolt import Bucket
    from snapshot_tools.bbolt.page import Node

BucketPath = tuple[bytes, ...]
# transform(bucket_path, key, stored_value) -> replacement value, or None to keep it.
Transform = Callable[[BucketPath, bytes, bytes], "bytes | None"]
# verify(bucket_path, key, value_as_written) -> truthy when the rewritten value is right.
Verify = Callable[[BucketPath, bytes, bytes], object]

_REV_KEY = struct.Struct(">QxQ")
_KV_VALUE_FIELD = 5


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
    state = _CopyState(transform)
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
        revision = _verify_output(out.temp_path, stats.counts, state.marks, verify, src.revision)
        if before_commit is not None:
            before_commit()
        out.commit()
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
    __slots__ = ("marks", "records", "rewritten", "transform")

    def __init__(self, transform: Transform | None) -> None:
        self.transform = transform
        self.records = 0
        self.rewritten = 0
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


def _contents(bucket: Bucket, path: BucketPath, buf: object, header_at: int, state: _CopyState) -> BucketContents:
    _root, sequence = BUCKET_HEADER.unpack_from(buf, header_at)  # type: ignore[call-overload]
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
                if transform is not None:
                    new = transform(path, key, value)
                    if new is None:
                        marks.append(0)  # type: ignore[union-attr]
                    else:
                        if type(new) is not bytes:
                            if not isinstance(new, (bytearray, memoryview)):
                                raise ValueError(f"transform returned {type(new).__name__}, expected bytes or None")
                            new = bytes(new)
                        value = new
                        rewritten += 1
                        marks.append(1)  # type: ignore[union-attr]
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

    The page accounting is ``tx.Check``'s: metas, the freelist and every tree page referenced
    exactly once, and nothing else below the high-water mark (the freelist is empty).

    Raises:
        OutputError: any difference.
    """

    def fail(why: str) -> OutputError:
        return OutputError(f"the written snapshot failed verification: {why}")

    try:
        with Snapshot.open(path) as snap:
            db = snap.db
            buf = db.buf
            free = db.freelist()
            if free is None or free:
                raise fail("expected an empty persisted freelist")
            pages = bytearray(db.hwm)
            pages[0] = pages[1] = pages[db.meta.freelist] = 1

            def mark(seen: bytearray, node: Node) -> None:
                assert node.pgid is not None
                for pgid in range(node.pgid, node.pgid + node.overflow + 1):
                    if seen[pgid]:
                        raise fail(f"page {pgid} is referenced twice")
                    seen[pgid] = 1

            found: dict[BucketPath, int] = {}
            failures = 0
            first_failure = b""
            pending: list[tuple[BucketPath, Bucket]] = [((), db.root())]
            while pending:
                bpath, bucket = pending.pop()
                flagged = marks.get(bpath) if verify is not None else None
                n = 0
                prev = None
                for node in bucket.nodes(marks=pages, mark=mark):
                    db.touch(node.end - node.offset)
                    if node.flags != LEAF:
                        continue
                    for flags, kstart, kend, vend in leaf_spans(buf, node):
                        key = buf[kstart:kend]
                        if prev is not None and key <= prev:
                            raise fail(f"keys out of order in bucket {bpath!r}")
                        prev = key
                        if flags & BUCKET_LEAF_FLAG:
                            pending.append(((*bpath, key), bucket.child(key, kend, vend)))
                        elif (
                            flagged is not None
                            and n < len(flagged)
                            and flagged[n]
                            and not verify(bpath, key, buf[kend:vend])  # type: ignore[misc]
                        ):
                            failures += 1
                            first_failure = first_failure or key
                        n += 1
                found[bpath] = n
            if found != counts:
                diff = sorted(p for p in set(found) | set(counts) if found.get(p) != counts.get(p))
                raise fail(f"entry counts differ from what was written in buckets {diff[:5]!r}")
            if pages.count(0):
                raise fail(f"{pages.count(0)} pages below the high-water mark are unreachable")
            if snap.revision != revision:
                raise fail(f"revision {snap.revision}, the input has {revision}")
            if failures:
                raise fail(f"{failures} rewritten values did not verify (first key {first_failure[:64]!r})")
            return snap.revision
    except SnapshotError as exc:
        raise fail(exc.reason) from None
    except InputError as exc:
        raise fail(str(exc)) from None


# -- mvccpb.KeyValue -----------------------------------------------------------------------


def replace_kv_value(raw: bytes, value: bytes) -> bytes:
    """The stored ``mvccpb.KeyValue`` ``raw`` with its ``value`` (field 5) set to ``value``.

    Every other field keeps its bytes and order; field 5 goes where it was, or where Go's
    marshal puts it (after fields 1-4), and is omitted when empty (proto3). A record re-encoded
    with its own value is therefore identical to the stored bytes.

    Raises:
        MalformedValue: ``raw`` is not a KeyValue.
    """
    return _replace_value(_parse_kv(raw), raw, value)


def _parse_kv(raw: bytes) -> KeyValue:
    try:
        return KeyValue.FromString(raw)
    except DecodeError:
        raise MalformedValue("KeyValue does not decode") from None


def _replace_value(kv: KeyValue, raw: bytes, value: bytes) -> bytes:
    # Fast path: a record in canonical form (what Go writes; every fixture record is) re-encodes
    # to the same bytes, so setting the field and encoding changes nothing else. Otherwise splice.
    if kv.SerializeToString() == raw:
        kv.value = value
        return kv.SerializeToString()
    return _splice_value(raw, value)


def _splice_value(raw: bytes, value: bytes) -> bytes:
    spans = _fields(raw)
    kept = [(f, s, e) for f, s, e in spans if f != _KV_VALUE_FIELD]
    at = None
    for i, (f, _s, _e) in enumerate(spans):
        if f == _KV_VALUE_FIELD:
            at = i - sum(1 for g, _, _ in spans[:i] if g == _KV_VALUE_FIELD)  # index among kept
    if at is None:
        at = next((i for i, (f, _s, _e) in enumerate(kept) if f > _KV_VALUE_FIELD), len(kept))
    parts = [raw[s:e] for _f, s, e in kept]
    if value:
        parts.insert(at, b"\x2a" + _varint(len(value)) + value)
    return b"".join(parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(raw)
    while pos < end and shift < 70:
        b = raw[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise MalformedValue("KeyValue does not decode: truncated or overlong varint")


def _fields(raw: bytes) -> list[tuple[int, int, int]]:
    """``(field_number, start, end)`` of every field of a protobuf message, tag included."""
    spans = []
    pos = 0
    end = len(raw)
    while pos < end:
        start = pos
        tag, pos = _read_varint(raw, pos)
        wire = tag & 7
        if tag >> 3 == 0:
            raise MalformedValue("KeyValue does not decode: field number 0")
        if wire == 0:
            _, pos = _read_varint(raw, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(raw, pos)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise MalformedValue(f"KeyValue does not decode: unsupported wire type {wire}")
        if pos > end:
            raise MalformedValue("KeyValue does not decode: a field runs past the record")
        spans.append((tag >> 3, start, pos))
    return spans


def decode_record(revision_key: bytes, raw: bytes) -> Record:
    """A ``key`` bucket entry as a :class:`Record` (revision from the key, rest from ``raw``).

    Raises:
        MalformedValue: the revision key or the KeyValue does not decode.
    """
    if len(revision_key) not in (17, 18) or revision_key[8] != 0x5F:
        raise MalformedValue(f"not a revision key ({len(revision_key)} bytes)")
    return _record(revision_key, _parse_kv(raw))


def _record(revision_key: bytes, kv: KeyValue) -> Record:
    main, sub = _REV_KEY.unpack_from(revision_key)
    tomb = len(revision_key) == 18
    return Record(kv.key, main, sub, kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.value, tomb)


def kv_transform(replace: Callable[[Record], bytes | None], *, bucket: bytes = KEY_BUCKET) -> Transform:
    """A :func:`copy_snapshot` transform over decoded etcd records.

    ``replace(record)`` is called for every live record of the top-level ``bucket`` (not for
    tombstones, which carry no value) and returns the new inner value or ``None``; the stored
    KeyValue then changes in its ``value`` field only. Other buckets are copied unchanged.
    """
    path = (bucket,)

    def transform(bpath: BucketPath, key: bytes, raw: bytes) -> bytes | None:
        if bpath != path or len(key) == 18:
            return None
        if len(key) != 17 or key[8] != 0x5F:
            raise MalformedValue(f"not a revision key ({len(key)} bytes)")
        kv = _parse_kv(raw)
        new = replace(_record(key, kv))
        return None if new is None else _replace_value(kv, raw, new)

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
    "BucketPath",
    "Transform",
    "Verify",
    "WriteResult",
    "copy_snapshot",
    "decode_record",
    "kv_transform",
    "kv_verify",
    "replace_kv_value",
]

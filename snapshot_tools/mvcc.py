"""etcd MVCC as stored in bbolt: revision keys, ``mvccpb.KeyValue`` records, the compaction mark.

The ``key`` bucket maps a *revision key* to a marshalled ``mvccpb.KeyValue``. A revision key is
``main`` (u64 big-endian), ``'_'``, ``sub`` (u64 big-endian): 17 bytes, so bbolt's byte order is
revision order. A deletion (*tombstone*) appends ``'t'`` (18 bytes) and stores a KeyValue with
only the etcd key. The ``meta`` bucket's ``finishedCompactRev`` holds the revision key of the
last finished compaction: history before it may be gone.

Go marshals KeyValue fields in number order with proto3 zeros left out, so a record's first
bytes are field 1, the etcd key (:data:`KV_KEY_TAG`): the snapshot scan reads it in place.
:func:`replace_kv_value` changes only the value (field 5) and keeps every other byte.

References: etcd ``server/storage/mvcc/revision.go`` (``RevToBytes``, ``BytesToRev``,
``appendMarkTombstone``, ``isTombstone``), ``api/mvccpb/kv.proto`` (field order 1..6),
``server/storage/mvcc/kvstore.go`` (``finishedCompactKeyName``), ``server/storage/schema/bucket.go``;
spec/etcd-snapshot-format.md 1.3, 1.5.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple, Protocol

from google.protobuf.message import DecodeError

from snapshot_tools import protowire
from snapshot_tools.bbolt.layout import BUCKET_LEAF_FLAG
from snapshot_tools.errors import MalformedValue, SnapshotError
from snapshot_tools.proto.etcd_kv_pb2 import KeyValue

if TYPE_CHECKING:
    from collections.abc import Iterable
    from mmap import mmap

KEY_BUCKET = b"key"
META_BUCKET = b"meta"
FINISHED_COMPACT_REV = b"finishedCompactRev"  # in META_BUCKET: the revision key of the compaction

REVISION_KEY = struct.Struct(">QxQ")  # main, '_', sub
REVISION_KEY_SIZE = 17
TOMBSTONE_KEY_SIZE = 18
_KEY_SIZES = (REVISION_KEY_SIZE, TOMBSTONE_KEY_SIZE)
_unpack_revision = REVISION_KEY.unpack_from
REVISION_SEP = 0x5F  # '_' between main and sub (byte 8)
TOMBSTONE_MARK = 0x74  # 't', byte 17 of a deletion's revision key

# mvccpb.KeyValue field numbers.
KV_KEY = 1
KV_CREATE_REVISION = 2
KV_MOD_REVISION = 3
KV_VERSION = 4
KV_VALUE = 5
KV_LEASE = 6
KV_KEY_TAG = protowire.tag(KV_KEY, protowire.LEN)  # 0x0A: the first byte of a record Go wrote


class Record(NamedTuple):
    """One stored MVCC record (immutable).

    ``main``/``sub`` come from the revision key; the other fields from ``mvccpb.KeyValue``. A
    tombstone (deletion) stores only the key, so its revisions, version, lease and value are 0/empty.
    A ``NamedTuple`` because the views build one per record: tuple construction is several times
    cheaper than a frozen dataclass's ``__init__``.
    """

    key: bytes
    main: int
    sub: int
    create_revision: int
    mod_revision: int
    version: int
    lease: int
    value: bytes
    tombstone: bool


# -- revision keys ------------------------------------------------------------------------------


def revision_key(main: int, sub: int = 0, *, tombstone: bool = False) -> bytes:
    """The ``key`` bucket key of revision ``main.sub`` (``'t'``-marked for a deletion)."""
    key = main.to_bytes(8, "big") + b"_" + sub.to_bytes(8, "big")
    return key + b"t" if tombstone else key


def check_revision_key(buf: mmap | bytes, flags: int, start: int, end: int) -> bool:
    """Validate the ``key`` bucket entry whose key is ``buf[start:end]``; return whether it is a
    tombstone.

    Raises:
        SnapshotError: a nested bucket, or not a revision key (at the offending byte).
    """
    if flags & BUCKET_LEAF_FLAG:
        raise SnapshotError("the key bucket holds a nested bucket", offset=start)
    size = end - start
    if size not in _KEY_SIZES:
        raise SnapshotError(f"revision key of {size} bytes, expected 17 or 18", offset=start)
    if buf[start + 8] != REVISION_SEP:
        raise SnapshotError("revision key has no '_' at byte 8", offset=start + 8)
    if size == TOMBSTONE_KEY_SIZE:
        if buf[start + 17] != TOMBSTONE_MARK:
            raise SnapshotError("18-byte revision key does not end in 't'", offset=start + 17)
        return True
    return False


# -- mvccpb.KeyValue ----------------------------------------------------------------------------


def decode_kv(raw: bytes) -> KeyValue:
    """``raw`` parsed by the protobuf runtime (upb).

    Raises:
        MalformedValue: ``raw`` is not a KeyValue.
    """
    try:
        return KeyValue.FromString(raw)
    except DecodeError:
        raise MalformedValue("KeyValue does not decode") from None


def decode_entry(revision_key: bytes, raw: bytes) -> tuple[Record, KeyValue]:
    """A ``key`` bucket entry as its :class:`Record`, and ``raw`` decoded (for
    :func:`replace_kv_value`, which then need not decode it again).

    Raises:
        MalformedValue: not a revision key (checked first), or the KeyValue does not decode.
    """
    size = len(revision_key)
    if (
        (size != REVISION_KEY_SIZE and size != TOMBSTONE_KEY_SIZE)
        or revision_key[8] != REVISION_SEP
        or (size == TOMBSTONE_KEY_SIZE and revision_key[17] != TOMBSTONE_MARK)
    ):
        raise MalformedValue(f"not a revision key ({size} bytes)")
    kv = decode_kv(raw)
    main, sub = _unpack_revision(revision_key)
    tomb = size == TOMBSTONE_KEY_SIZE
    rec = Record(
        kv.key, main, sub, kv.create_revision, kv.mod_revision, kv.version, kv.lease, kv.value, tomb
    )
    return rec, kv


def decode_record(revision_key: bytes, raw: bytes) -> Record:
    """A ``key`` bucket entry as a :class:`Record` (revision from the key, the rest from ``raw``).

    Raises:
        MalformedValue: the revision key or the KeyValue does not decode.
    """
    return decode_entry(revision_key, raw)[0]


def replace_kv_value(raw: bytes, value: bytes, kv: KeyValue | None = None) -> bytes:
    """The stored ``mvccpb.KeyValue`` ``raw`` with its ``value`` (field 5) set to ``value``.

    Every other field keeps its bytes and order; field 5 goes where it was, or where Go's
    marshal puts it (after fields 1-4), and is omitted when empty (proto3). A record re-encoded
    with its own value is therefore identical to the stored bytes. ``kv`` is ``raw`` already
    decoded, when the caller has it.

    Raises:
        MalformedValue: ``raw`` is not a KeyValue.
    """
    if kv is None:
        kv = decode_kv(raw)
    # Fast path: a record in canonical form (what Go writes; every fixture record is) re-encodes
    # to the same bytes, so setting the field and encoding changes nothing else. Otherwise splice.
    if kv.SerializeToString() == raw:
        kv.value = value
        out: bytes = kv.SerializeToString()
        return out
    return _splice_value(raw, value)


def _splice_value(raw: bytes, value: bytes) -> bytes:
    try:
        spans = protowire.field_spans(raw, 0, len(raw))
    except protowire.WireError as exc:
        raise MalformedValue(f"KeyValue does not decode: {exc}") from None
    kept = [(f, s, e) for f, s, e in spans if f != KV_VALUE]
    at = None
    for i, (f, _s, _e) in enumerate(spans):
        if f == KV_VALUE:
            at = i - sum(1 for g, _, _ in spans[:i] if g == KV_VALUE)  # index among kept
    if at is None:
        at = next((i for i, (f, _s, _e) in enumerate(kept) if f > KV_VALUE), len(kept))
    parts = [raw[s:e] for _f, s, e in kept]
    if value:
        parts.insert(at, protowire.encode_len(KV_VALUE, value))
    return b"".join(parts)


# -- the compaction mark ------------------------------------------------------------------------


class _Buckets(Protocol):
    def items(self, bucket: bytes) -> Iterable[tuple[bytes, bytes]]: ...


def compacted_revision(snap: _Buckets) -> int:
    """The revision of the last finished compaction (0 if none): older history may be gone.

    Raises:
        SnapshotError: from ``snap.items`` (for a snapshot: damage, or no ``meta`` bucket).
    """
    for key, value in snap.items(META_BUCKET):
        if key == FINISHED_COMPACT_REV and len(value) >= 8:
            return int.from_bytes(value[:8], "big")  # main of the stored revision key
    return 0


__all__ = [
    "FINISHED_COMPACT_REV",
    "KEY_BUCKET",
    "KV_CREATE_REVISION",
    "KV_KEY",
    "KV_KEY_TAG",
    "KV_LEASE",
    "KV_MOD_REVISION",
    "KV_VALUE",
    "KV_VERSION",
    "META_BUCKET",
    "REVISION_KEY",
    "REVISION_KEY_SIZE",
    "REVISION_SEP",
    "TOMBSTONE_KEY_SIZE",
    "TOMBSTONE_MARK",
    "Record",
    "check_revision_key",
    "compacted_revision",
    "decode_entry",
    "decode_kv",
    "decode_record",
    "replace_kv_value",
    "revision_key",
]

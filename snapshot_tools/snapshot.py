"""An etcd v3 snapshot: SHA-256 trailer, bbolt meta, and the MVCC records of the ``key`` bucket.

Files are opened read-only and mapped, never read whole. The two record views stream in etcd
key order although the ``key`` bucket is stored in revision order: a first pass remembers, per
etcd key, only where its record lies (an int), then the chosen records are decoded in key order.
What a revision key and a record are is :mod:`snapshot_tools.mvcc`'s; this module reads them fast.

References: etcd ``server/storage/mvcc/revision.go`` (revision keys), ``api/mvccpb/kv.proto``,
``client/v3/snapshot/v3_snapshot.go`` (``hasChecksum``), ``etcdutl/snapshot/v3_snapshot.go``
(``copyAndVerifyDB``), auger ``pkg/data/data.go``; spec sections 1.1, 1.3.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Self

from google.protobuf.message import DecodeError

from snapshot_tools.bbolt import DB
from snapshot_tools.errors import InputError, SnapshotError
from snapshot_tools.mvcc import (
    KEY_BUCKET,
    KV_KEY_TAG,
    REVISION_KEY,
    REVISION_KEY_SIZE,
    REVISION_SEP,
    TOMBSTONE_KEY_SIZE,
    Record,
    check_revision_key,
)
from snapshot_tools.proto.etcd_kv_pb2 import KeyValue

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import TracebackType

    from snapshot_tools.bbolt import Bucket
    from snapshot_tools.stream_trailer import Trailer

# Record and KEY_BUCKET are mvcc's, re-exported: the views return Records.
__all__ = ["KEY_BUCKET", "MAX_ETCD_KEY", "TRAILER_SIZE", "Record", "Snapshot"]

TRAILER_SIZE = 32
_HASH_WINDOW = 16 << 20
_parse_kv = KeyValue.FromString
_SIZE_MASK = (1 << 48) - 1  # record size bits in a ``loc``: a record lies inside the file

# The longest etcd key (``KeyValue.key``) read. Kubernetes writes /registry/<group>/<resource>/
# <namespace>/<name> with names of at most 253 bytes: well under 1 KiB. etcd bounds a key only by
# its request (--max-request-bytes, 1.5 MiB by default), so a longer key was not written by the
# API server; 64 KiB leaves 64x headroom for custom prefixes. A longer key is reported as damage
# (SnapshotError with the record's offset, exit 3), as every other unexpected structure is: no
# view skips records, because a gate that silently drops some would judge less than it claims.
# The reader's memory is bounded by the file anyway (elements and pages may not overlap); the
# cap keeps each key small. The common 1-2 byte length in ``_scan`` is below it and costs nothing.
MAX_ETCD_KEY = 64 << 10


class Snapshot:
    """A read-only etcd snapshot (``etcdctl snapshot save`` output, or a raw ``member/snap/db``)."""

    def __init__(self, path: Path, fd: int, mm: mmap.mmap, size: int) -> None:
        self.path = path
        self.size = size
        self._fd = fd
        self._mm = mm
        self._trailer: str | None = None
        self.db = DB(mm, size)
        self.page_size = self.db.page_size
        self._key_bucket: Bucket | None = self.db.bucket(KEY_BUCKET)
        self.revision = self._last_revision()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Snapshot:
        """Map ``path`` read-only and check its meta pages.

        Raises:
            InputError: the path is missing, a directory, not a regular file or not readable.
            SnapshotError: the file is empty, not bbolt, truncated or damaged.
        """
        p = Path(path)
        fd, mm, size = _open_readonly(p)
        try:
            return cls(p, fd, mm, size)
        except BaseException:
            mm.close()
            os.close(fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            self._mm.close()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Snapshot {str(self.path)!r} size={self.size} page_size={self.page_size} revision={self.revision}>"

    @property
    def total_size(self) -> int:
        """High-water mark x page size (``etcdutl snapshot status`` TOTAL SIZE)."""
        return self.db.total_size

    @property
    def trailer(self) -> str:
        """``valid``, ``mismatch`` or ``missing``: the SHA-256 trailer state, computed on first use.

        Like ``etcdutl snapshot restore``: a trailer exists when ``size % 512 == 32`` and covers
        everything before it. Hashing reads the whole file, so it is deferred until asked for.
        """
        if self._trailer is None:
            self._trailer = self._check_trailer()
        return self._trailer

    @property
    def trailer_known(self) -> bool:
        """Whether :attr:`trailer` is decided already (computed, or adopted from the unpack)."""
        return self._trailer is not None

    def adopt_trailer(self, known: Trailer) -> bool:
        """Take a trailer verdict computed while this file was written (its bytes streamed
        through :class:`~snapshot_tools.stream_trailer.TrailerHasher`), so :attr:`trailer` needs
        no second pass; only for a file of exactly that size. Whether it was taken."""
        if known.size != self.size:
            return False
        self._trailer = known.state
        return True

    def buckets(self) -> list[bytes]:
        """Names of the top-level buckets, in key order."""
        return self.db.buckets()

    def items(self, bucket: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Raw ``(key, value)`` pairs of a top-level bucket in key order (nested buckets skipped).

        Raises:
            SnapshotError: damage, or no such bucket.
        """
        b = self.db.bucket(bucket)
        if b is None:
            raise SnapshotError(f"no bucket {bucket!r} in the snapshot")
        for key, value in b.items():
            if value is not None:
                yield key, value

    def latest(self, prefix: bytes = b"") -> Iterator[Record]:
        """The newest record of every live etcd key under ``prefix``, in etcd key order."""
        newest: dict[bytes, int] = {}
        for ekey, loc in self._scan(prefix):
            if loc & 1:
                newest.pop(ekey, None)
            else:
                newest[ekey] = loc
        yield from self._read(map(newest.__getitem__, sorted(newest)))

    def all_revisions(self, prefix: bytes = b"") -> Iterator[Record]:
        """Every stored record under ``prefix`` (tombstones flagged), by etcd key then revision."""
        found = list(self._scan(prefix))
        # Stable sort: records of one key keep their stored (revision) order.
        found.sort(key=itemgetter(0))
        yield from self._read(map(itemgetter(1), found))

    def records(self) -> Iterator[Record]:
        """Every record in stored (revision) order, as ``mvcc`` replays them at start-up."""
        yield from self._read(self._locations())

    # -- internals -------------------------------------------------------------------------
    #
    # A record's place is one int, ``loc`` = revision key offset << 49 | record size << 1 |
    # tombstone: all the first pass of ``latest`` keeps per etcd key.

    def _locations(self) -> Iterator[int]:
        """``loc`` of every record in stored (revision) order, revision keys checked."""
        if self._key_bucket is None:
            return
        mm = self._mm
        for batch in self._key_bucket.leaf_batches():
            for flags, kstart, kend, vend in batch:
                tomb = check_revision_key(mm, flags, kstart, kend)
                yield kstart << 49 | (vend - kstart) << 1 | tomb

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, int]]:
        """``(etcd_key, loc)`` per record under ``prefix``, in stored (revision) order."""
        if self._key_bucket is None:
            return
        mm = self._mm
        key_tag, rev_size, rev_sep = KV_KEY_TAG, REVISION_KEY_SIZE, REVISION_SEP  # locals: hot loop
        for batch in self._key_bucket.leaf_batches():
            for flags, kstart, kend, vend in batch:
                # Inline of check_revision_key for the common 17-byte case: this loop is the hot path.
                if flags or kend - kstart != rev_size or mm[kstart + 8] != rev_sep:
                    tomb = check_revision_key(mm, flags, kstart, kend)
                else:
                    tomb = False
                # Fast path of the etcd key (tests/test_mvcc.py compares it with protowire): Go
                # marshals field 1 (key) first, so read it in place when its length varint has 1
                # or 2 bytes, and decode the whole record (upb) for any other shape.
                start = 0
                if vend - kend > 3 and mm[kend] == key_tag:
                    n = mm[kend + 1]
                    if n < 0x80:
                        start = kend + 2
                    elif mm[kend + 2] < 0x80:
                        n = (n & 0x7F) | (mm[kend + 2] << 7)
                        start = kend + 3
                if start:
                    if start + n > vend:
                        raise _bad(kstart, kend + 1, f"key length {n} runs past the record")
                    ekey = mm[start : start + n]
                else:
                    ekey = _decode_kv(mm, kstart, kend, vend).key
                    if len(ekey) > MAX_ETCD_KEY:
                        raise _long_key(kstart, kend, len(ekey))
                if not prefix or ekey.startswith(prefix):
                    yield ekey, kstart << 49 | (vend - kstart) << 1 | tomb

    def _read(self, locs: Iterable[int]) -> Iterator[Record]:
        """The records at ``locs``, in the order given.

        pread, not the map: records come in key order, which is random in the file, and
        faulting then releasing mapped pages costs more than copying from the page cache.
        upb decodes a 1-20 KB record, value copy included, in ~1 us; a hand-written decoder
        that preads only the value measured no faster in Python and needed a per-key header.
        """
        fd = self._fd
        pread = os.pread
        parse = _parse_kv
        unpack_rev = REVISION_KEY.unpack_from
        new = Record
        tomb_size, rev_size = TOMBSTONE_KEY_SIZE, REVISION_KEY_SIZE
        for loc in locs:
            kstart = loc >> 49
            size = (loc >> 1) & _SIZE_MASK
            tomb = loc & 1
            raw = pread(fd, size, kstart)
            if len(raw) != size:
                raise SnapshotError(
                    "the file changed while it was read (short read)", offset=kstart
                )
            main, sub = unpack_rev(raw)
            ks = tomb_size if tomb else rev_size
            try:
                kv = parse(raw[ks:])
            except DecodeError as exc:
                raise _bad(kstart, kstart + ks, str(exc) or "invalid protobuf") from None
            if size > MAX_ETCD_KEY and len(kv.key) > MAX_ETCD_KEY:
                raise _long_key(kstart, kstart + ks, len(kv.key))
            rec = new(
                kv.key, main, sub, kv.create_revision, kv.mod_revision, kv.version, kv.lease,
                kv.value, tomb == 1,
            )  # fmt: skip
            yield rec

    def _last_revision(self) -> int:
        if self._key_bucket is None:
            return 0
        last = self._key_bucket.last()
        if last is None:
            return 0
        flags, kstart, kend, _ = last
        check_revision_key(self._mm, flags, kstart, kend)
        return int.from_bytes(self._mm[kstart : kstart + 8], "big")

    def _check_trailer(self) -> str:
        size = self.size
        if size % 512 != TRAILER_SIZE or size < TRAILER_SIZE:
            return "missing"
        body = size - TRAILER_SIZE
        digest = hashlib.sha256()
        with memoryview(self._mm) as view:
            for start in range(0, body, _HASH_WINDOW):
                with view[start : min(start + _HASH_WINDOW, body)] as chunk:
                    digest.update(chunk)
                self.db.touch(_HASH_WINDOW)
        return "valid" if digest.digest() == self._mm[body:size] else "mismatch"


def _open_readonly(path: Path) -> tuple[int, mmap.mmap, int]:
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{path}: is a directory, not a snapshot file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise SnapshotError("the file is empty", offset=0)
        return fd, mmap.mmap(fd, 0, access=mmap.ACCESS_READ), size
    except OSError as exc:
        os.close(fd)
        raise InputError(f"{path}: cannot map: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise


def _bad(kstart: int, at: int, why: str) -> SnapshotError:
    return SnapshotError(f"record at revision key offset {kstart}: KeyValue does not decode: {why}", offset=at)


def _long_key(kstart: int, at: int, size: int) -> SnapshotError:
    return SnapshotError(
        f"record at revision key offset {kstart}: etcd key of {size} bytes, longer than the "
        f"{MAX_ETCD_KEY} bytes a Kubernetes snapshot can hold",
        offset=at,
    )


def _decode_kv(buf: mmap.mmap | bytes, kstart: int, kend: int, vend: int) -> KeyValue:
    """Decode ``mvccpb.KeyValue`` at ``buf[kend:vend]`` with the protobuf runtime (upb).

    Measured against a hand-written varint decoder on 10 KB values: upb 1.5 us/record, the
    hand-written one 2.2 us (python -m bench.scan --view records), so the generated module is used.
    """
    try:
        return _parse_kv(buf[kend:vend])
    except DecodeError as exc:
        raise _bad(kstart, kend, str(exc) or "invalid protobuf") from None

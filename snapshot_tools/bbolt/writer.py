"""A streaming bulk writer for bbolt files: rebuild a compact database from logical contents.

The input is the logical contents only (buckets, keys, values, bucket sequences), so nothing of
an input file's free pages can reach the output. Layout of the written file:

* pages 0 and 1: metas with txid T and T-1 (like ``Tx.WriteTo``), written last;
* page 2: an empty, persisted freelist, so every other page below the high-water mark must be
  reachable (``tx.Check`` reports "unreachable unfreed" otherwise);
* then bucket pages in the order they fill: leaves packed greedily, one pending branch node per
  tree level above them, each bucket's tree finished before its parent's entry is added, and
  the root bucket's pages last;
* an optional SHA-256 trailer over the body (``etcdctl snapshot save`` format).

Leaf packing: a leaf node may span several contiguous pages (bbolt's overflow), up to
``node_span`` bytes (default 64 KiB, never less than a page), and a single bigger element gets a
node of its own whose last page later elements may fill. Cutting leaves at exactly one page, as
bbolt's split does for small values, pads every node: with etcd's values of a few KB that
wasted about a quarter of the file. bbolt reads nodes of any size and splits a node into
page-sized ones when it next writes it, and ``tx.Check`` checks references, not fill. Branch
nodes are packed up to one page.

Memory is bounded by one pending node per tree level plus the write buffer: leaves go to the
output as they fill; branch levels keep only a node's worth of (first key, pgid) pairs.

A bucket is inlined into its parent's value exactly when bbolt would keep it inline
(``Bucket.inlineable``): a single leaf with no nested bucket whose page image fits in a quarter
page. The root bucket is never inline (the meta only holds a page id).

References: bbolt ``node.go`` (``node.write``: u16 element count), ``bucket.go`` (``inlineable``,
``maxInlineBucketSize``, ``Bucket.write``), ``tx.go`` (``WriteTo``, ``Commit``),
``internal/common/meta.go`` (``Sum64``), ``internal/freelist/shared.go`` (``Write``),
``db.go`` (``MaxKeySize``, ``MaxValueSize``); spec/etcd-snapshot-format.md 1.1, 1.2, 1.7.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate
from typing import TYPE_CHECKING

from snapshot_tools.bbolt.layout import (
    BRANCH,
    BRANCH_ELEMENT,
    BUCKET_HEADER,
    BUCKET_LEAF_FLAG,
    ELEMENT_SIZE,
    FREELIST,
    LEAF,
    LEAF_ELEMENT,
    MAGIC,
    MAX_KEY_SIZE,
    MAX_PAGE_SIZE,
    MAX_VALUE_SIZE,
    META,
    META_CHECKSUMMED,
    META_STRUCT,
    MIN_PAGE_SIZE,
    PAGE_HEADER,
    PAGE_HEADER_SIZE,
    VERSION,
    fnv64a,
)

if TYPE_CHECKING:
    import io
    from collections.abc import Iterable

    # A binary file write_db can also read back (it hashes the body): a raw file (what
    # AtomicFile opens), a buffered one, or BytesIO. ``typing.BinaryIO`` has no ``readinto``.
    Output = io.RawIOBase | io.BufferedIOBase

# node.write panics at 0xFFFF elements: the page header count is a u16.
_MAX_ELEMENTS = 0xFFFE
# Past this size a multi-page node takes no more elements into its last page's tail, so the
# u16 element count can never overflow (each element needs at least 17 bytes).
_TAIL_FILL_LIMIT = 1 << 20
NODE_SPAN = 64 << 10  # default largest multi-element leaf node, bytes
_FLUSH_AT = 4 << 20  # write buffered pages out in chunks of about this size
_QUEUED = 2  # full buffers waiting for the I/O thread
_HASH_CHUNK = 8 << 20
_FREELIST_PGID = 2  # where this writer puts the (empty) freelist


@dataclass(frozen=True, slots=True)
class BucketContents:
    """A bucket to write.

    ``items`` yields ``(key, value)`` pairs in strictly increasing key order (unsigned byte
    order, as ``bytes.Compare``). A value that is itself a :class:`BucketContents` is a nested
    bucket. ``items`` is consumed once, lazily, so it may stream from a file.
    """

    items: Iterable[tuple[bytes, bytes | BucketContents]]
    sequence: int = 0  # the bucket's NextSequence counter, stored in its header


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What :func:`write_db` wrote.

    ``counts`` maps each bucket path (``()`` = the root bucket, ``(b"key",)`` = a top-level
    bucket, nested buckets as longer tuples) to its number of entries, nested bucket entries
    included, i.e. what a reader's ``Bucket.items()`` yields.
    """

    page_size: int
    pages: int  # high-water mark: pages in the body
    txid: int
    root: int  # page id of the root bucket's root node
    body_size: int  # pages * page_size
    size: int  # body plus trailer
    sha256: bytes | None  # the trailer, None when not written
    counts: dict[tuple[bytes, ...], int] = field(default_factory=dict)
    inline_buckets: int = 0


def check_page_size(page_size: int) -> int:
    """``page_size`` if bbolt (and our reader) can use it: a power of two in [512, 16 MiB].

    Raises:
        ValueError: any other value.
    """
    if (
        not isinstance(page_size, int)
        or page_size < MIN_PAGE_SIZE
        or page_size > MAX_PAGE_SIZE
        or page_size & (page_size - 1)
    ):
        raise ValueError(f"page size must be a power of two in [{MIN_PAGE_SIZE}, {MAX_PAGE_SIZE}], got {page_size!r}")
    return page_size


def write_db(
    out: Output,
    buckets: Iterable[tuple[bytes, BucketContents | Iterable[tuple[bytes, bytes | BucketContents]]]],
    *,
    page_size: int = 4096,
    txid: int = 2,
    root_sequence: int = 0,
    trailer: bool = True,
    node_span: int = NODE_SPAN,
    sync: bool = False,
) -> WriteStats:
    """Write a complete bbolt file to ``out`` (empty, positioned at 0, readable and seekable).

    ``buckets`` yields the top-level buckets in strictly increasing name order; each is a
    :class:`BucketContents` or a plain iterable of pairs. ``txid`` goes to meta 0 and
    ``txid - 1`` to meta 1. The trailer is ``sha256(body)``, computed by reading the body back
    from ``out``. ``out`` is flushed and left open; ``sync=True`` also fsyncs it (its
    ``fileno()``; the body while the trailer is being hashed). ``node_span`` caps a
    multi-element leaf node (bytes, rounded up to whole pages; one page when <= ``page_size``).

    Raises:
        ValueError: bad page size or txid; keys not strictly increasing, empty or longer than
            32768 bytes; a value over bbolt's maximum; a top-level entry that is not a bucket.
        OSError: from ``out``.
    """
    check_page_size(page_size)
    if txid < 1:
        raise ValueError(f"txid must be >= 1 (meta 1 gets txid - 1), got {txid}")
    w = _Writer(out, page_size, node_span)
    try:
        w.start()
        tops = ((name, _as_bucket(name, b)) for name, b in buckets)
        root = w.bucket(BucketContents(tops, root_sequence), (), is_root=True)
        hwm = w.finish()
    finally:
        w.close()  # never leave the I/O thread writing to a file the caller may close
    root_pgid = BUCKET_HEADER.unpack_from(root)[0]
    for pgid, tx in ((0, txid), (1, txid - 1)):
        out.seek(pgid * page_size)
        _write_all(out, _meta_page(pgid, page_size, root_pgid, root_sequence, hwm, tx))
    out.flush()
    body = hwm * page_size
    digest = None
    syncer = _Syncer(out.fileno()) if sync else None
    try:
        if trailer:
            digest = _hash_body(out, body)
            out.seek(body)
            _write_all(out, digest)
            out.flush()
        else:
            out.seek(body)
    finally:
        if syncer is not None:
            syncer.join()
    if sync:
        os.fsync(out.fileno())  # the trailer; the body is already on disk
    return WriteStats(
        page_size=page_size,
        pages=hwm,
        txid=txid,
        root=root_pgid,
        body_size=body,
        size=body + (len(digest) if digest else 0),
        sha256=digest,
        counts=w.counts,
        inline_buckets=w.inline_buckets,
    )


def _as_bucket(name: bytes, b: BucketContents | Iterable[tuple[bytes, bytes | BucketContents]]) -> BucketContents:
    if isinstance(b, BucketContents):
        return b
    if isinstance(b, (bytes, bytearray, memoryview, str)):
        # ValueError, the writer's one error for bad contents (a callers' and tests' contract).
        raise ValueError(
            f"top-level entry {bytes(name)[:64]!r} is not a bucket (the root bucket holds only buckets)"
        )
    return BucketContents(b)


def _meta_page(pgid: int, page_size: int, root: int, sequence: int, hwm: int, txid: int) -> bytes:
    packed = META_STRUCT.pack(MAGIC, VERSION, page_size, 0, root, sequence, _FREELIST_PGID, hwm, txid, 0)
    fields = packed[:META_CHECKSUMMED]
    return PAGE_HEADER.pack(pgid, META, 0, 0) + fields + fnv64a(fields).to_bytes(8, "little")


def _write_all(out: Output, data: bytes | bytearray | memoryview) -> None:
    # Raw files may write part of a buffer; BufferedWriter and BytesIO always write it all.
    view = memoryview(data)
    while view:
        n = out.write(view)
        if n is None:  # non-blocking raw stream with nothing written: not for regular files
            raise OSError("output stream refused the write")
        view = view[n:]


class _Syncer(threading.Thread):
    """fsync a file descriptor in the background; ``join`` re-raises its error."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="bbolt-fsync", daemon=True)
        self.fd = fd
        self.error: OSError | None = None
        self.start()

    def run(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def _hash_body(out: Output, body: int) -> bytes:
    digest = hashlib.sha256()
    out.seek(0)
    chunk = bytearray(min(_HASH_CHUNK, max(body, 1)))
    view = memoryview(chunk)
    left = body
    while left:
        n = out.readinto(view[: min(left, len(chunk))])
        if not n:
            raise OSError(f"output ended {left} bytes early while hashing it")
        digest.update(view[:n])
        left -= n
    return digest.digest()


@lru_cache(maxsize=512)
def _leaf_elements(n: int) -> struct.Struct:
    """``n`` leaf elements in one format, packed from one flat list of their fields."""
    return struct.Struct(LEAF_ELEMENT.format[:1] + LEAF_ELEMENT.format[1:] * n)


class _Writer:
    """Sequential page allocation over ``out``.

    Full buffers go to ``out`` from one I/O thread (the write syscall releases the GIL, so
    building the next pages overlaps the kernel's copy); at most ``_QUEUED`` buffers wait.
    """

    def __init__(self, out: Output, page_size: int, node_span: int = NODE_SPAN) -> None:
        self.out = out
        self.ps = page_size
        self.span = max(page_size, -(-node_span // page_size) * page_size)
        self.zeros = bytes(page_size)
        self.next_pgid = 0
        self.buf = bytearray()
        self.counts: dict[tuple[bytes, ...], int] = {}
        self.inline_buckets = 0
        self._queue: queue.Queue[bytearray | None] = queue.Queue(maxsize=_QUEUED)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _io(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self._error is None:
                try:
                    _write_all(self.out, chunk)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the writing thread
                    self._error = exc

    def close(self) -> None:
        """Wait for queued writes; raise the I/O thread's error, if any."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def start(self) -> None:
        ps = self.ps
        # Metas are written last (they need the root page and the high-water mark).
        self.buf += bytes(2 * ps)
        self.buf += PAGE_HEADER.pack(_FREELIST_PGID, FREELIST, 0, 0)
        self.buf += self.zeros[: ps - PAGE_HEADER_SIZE]
        self.next_pgid = 3

    def finish(self) -> int:
        self._flush()
        self.close()
        return self.next_pgid

    def _flush(self) -> None:
        if not self.buf:
            return
        if self._error is not None:
            self.close()
        if self._thread is None:
            self._thread = threading.Thread(target=self._io, name="bbolt-writer", daemon=True)
            self._thread.start()
        self._queue.put(self.buf)
        self.buf = bytearray()

    # -- nodes -----------------------------------------------------------------------------

    def leaf(self, kv: list[bytes], flags: list[int]) -> int:
        """Write a leaf node of the pairs in ``kv`` (key, value, key, value, ...); its pgid."""
        n = len(flags)
        lens = [len(x) for x in kv]
        sizes = [a + b for a, b in zip(lens[0::2], lens[1::2], strict=True)]
        # pos is relative to the element's own address: the elements after it + data before it.
        offsets = list(accumulate(sizes, initial=0))
        elems = [0] * (4 * n)
        elems[0::4] = flags
        elems[1::4] = [ELEMENT_SIZE * (n - i) + offsets[i] for i in range(n)]
        elems[2::4] = lens[0::2]
        elems[3::4] = lens[1::2]
        return self._node(LEAF, n, _leaf_elements(n).pack(*elems), kv, offsets[n])

    def branch(self, keys: list[bytes], pgids: list[int]) -> int:
        n = len(keys)
        parts = []
        pos = ELEMENT_SIZE * n
        for key, pgid in zip(keys, pgids, strict=True):
            parts.append(BRANCH_ELEMENT.pack(pos, len(key), pgid))
            pos += len(key) - ELEMENT_SIZE
        return self._node(BRANCH, n, b"".join(parts), keys, sum(map(len, keys)))

    def _node(self, flags: int, count: int, elems: bytes, data: list[bytes], data_size: int) -> int:
        ps = self.ps
        total = PAGE_HEADER_SIZE + len(elems) + data_size
        npages = -(-total // ps)
        pgid = self.next_pgid
        buf = self.buf
        buf += PAGE_HEADER.pack(pgid, flags, count, npages - 1)
        buf += elems
        for part in data:
            buf += part
        pad = npages * ps - total
        if pad:
            buf += self.zeros[:pad]
        self.next_pgid = pgid + npages
        if len(buf) >= _FLUSH_AT:
            self._flush()
        return pgid

    # -- buckets ---------------------------------------------------------------------------

    def bucket(self, contents: BucketContents, path: tuple[bytes, ...], *, is_root: bool = False) -> bytes:
        """Write one bucket's tree; return its value in the parent (header, or inline image).

        The loop is the hot path of a snapshot rewrite: locals only, one comparison per pair.
        """
        ps = self.ps
        span = self.span
        header, element = PAGE_HEADER_SIZE, ELEMENT_SIZE  # locals: the loop below is hot
        levels = _Levels(self)
        kv: list[bytes] = []
        flags: list[int] = []
        size = header  # page header + elements + data of the pending leaf
        limit = span
        prev = b""
        count = 0
        nested = False
        leaves = 0
        for key, value in contents.items:
            if type(key) is not bytes:
                key = bytes(key)
            if key <= prev:
                raise ValueError(_order_error(path, prev, key))
            prev = key
            if len(key) > MAX_KEY_SIZE:
                raise ValueError(f"bucket {_path(path)}: key of {len(key)} bytes exceeds {MAX_KEY_SIZE}")
            flag = 0
            if type(value) is not bytes:
                if isinstance(value, BucketContents):
                    value = self.bucket(value, (*path, key))
                    flag = BUCKET_LEAF_FLAG
                    nested = True
                elif is_root:
                    raise ValueError(f"top-level entry {key[:64]!r} is not a bucket")
                elif value is None:
                    raise ValueError(f"bucket {_path(path)}: entry {key[:64]!r} has no value")
                else:
                    value = bytes(value)
            if len(value) > MAX_VALUE_SIZE:
                raise ValueError(f"bucket {_path(path)}: value of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
            new = size + element + len(key) + len(value)
            if new > limit or len(flags) >= _MAX_ELEMENTS:
                if flags:
                    levels.push(kv[0], self.leaf(kv, flags))
                    leaves += 1
                    kv = []
                    flags = []
                    new = header + element + len(key) + len(value)
                # A single element bigger than the span gets whole pages; later ones may use its tail.
                limit = span if new <= span else (-(-new // ps) * ps if new <= _TAIL_FILL_LIMIT else new)
            kv.append(key)
            kv.append(value)
            flags.append(flag)
            size = new
            count += 1
        self.counts[path] = count
        sequence = contents.sequence
        if not leaves:
            # bbolt's inlineable(): one leaf, no sub-buckets, page image within pageSize / 4.
            if not is_root and not nested and size <= ps // 4:
                self.inline_buckets += 1
                n = len(flags)
                image = _leaf_image(kv, flags)
                return BUCKET_HEADER.pack(0, sequence) + PAGE_HEADER.pack(0, LEAF, n, 0) + image
            return BUCKET_HEADER.pack(self.leaf(kv, flags), sequence)
        levels.push(kv[0], self.leaf(kv, flags))
        return BUCKET_HEADER.pack(levels.finish(), sequence)


def _leaf_image(kv: list[bytes], flags: list[int]) -> bytes:
    """Elements and data of a leaf (no header): the inline bucket form."""
    n = len(flags)
    parts = []
    pos = ELEMENT_SIZE * n
    for i in range(n):
        k, v = kv[2 * i], kv[2 * i + 1]
        parts.append(LEAF_ELEMENT.pack(flags[i], pos, len(k), len(v)))
        pos += len(k) + len(v) - ELEMENT_SIZE
    return b"".join(parts) + b"".join(kv)


class _Levels:
    """The branch levels above a bucket's leaves: one pending node per level.

    ``push(first_key, pgid)`` adds a child to level 0; a full level writes its node and pushes
    it one level up. ``finish()`` writes what is pending bottom-up and returns the root pgid.
    """

    __slots__ = ("keys", "limits", "pgids", "sizes", "w")

    def __init__(self, w: _Writer) -> None:
        self.w = w
        self.keys: list[list[bytes]] = []
        self.pgids: list[list[int]] = []
        self.sizes: list[int] = []
        self.limits: list[int] = []

    def push(self, key: bytes, pgid: int, level: int = 0) -> None:
        if level == len(self.keys):
            self.keys.append([])
            self.pgids.append([])
            self.sizes.append(PAGE_HEADER_SIZE)
            self.limits.append(self.w.ps)
        keys, pgids = self.keys[level], self.pgids[level]
        new = self.sizes[level] + ELEMENT_SIZE + len(key)
        if new > self.limits[level] or len(keys) >= _MAX_ELEMENTS:
            if keys:
                self.push(keys[0], self.w.branch(keys, pgids), level + 1)
                keys, pgids = self.keys[level], self.pgids[level] = [], []
                new = PAGE_HEADER_SIZE + ELEMENT_SIZE + len(key)
            ps = self.w.ps
            self.limits[level] = ps if new <= ps else (-(-new // ps) * ps if new <= _TAIL_FILL_LIMIT else new)
        keys.append(key)
        pgids.append(pgid)
        self.sizes[level] = new

    def finish(self) -> int:
        level = 0
        while True:
            keys, pgids = self.keys[level], self.pgids[level]
            if level == len(self.keys) - 1:  # the top level was never flushed
                return pgids[0] if len(pgids) == 1 else self.w.branch(keys, pgids)
            self.push(keys[0], self.w.branch(keys, pgids), level + 1)
            level += 1


def _path(path: tuple[bytes, ...]) -> str:
    return "/".join(repr(p) for p in path) or "<root>"


def _order_error(path: tuple[bytes, ...], prev: bytes, key: bytes) -> str:
    if not key:
        return f"bucket {_path(path)}: empty key (bbolt requires a key)"
    return (
        f"bucket {_path(path)}: keys must be strictly increasing: {key[:64]!r} after {prev[:64]!r}"
    )


__all__ = ["MAX_KEY_SIZE", "MAX_VALUE_SIZE", "BucketContents", "WriteStats", "check_page_size", "write_db"]

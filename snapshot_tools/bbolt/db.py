"""A read-only bbolt database over one buffer (an mmap): buckets, ordered iteration, page map.

Iteration uses explicit stacks, a per-walk record of the pages reached and a depth limit, so a
damaged file (a branch pointing at itself or an ancestor, a page shared by two parents) raises
:class:`SnapshotError` instead of recursing or looping.

Work and memory follow the pages a walk actually reaches, never the high-water mark: a file may
be sparse (16 KB on disk, a meta saying 2^27 pages), and per-page lists or maps sized by the mark
would then cost gigabytes. Hence :class:`_Reached` (each node's first and last page, checked
for overlap once a walk ends) and :class:`PageIds` (free pages as runs).

References: bbolt ``db.go`` (``DB.meta``), ``bucket.go`` (``Bucket.openBucket``, ``ForEach``),
``cursor.go`` (``first``, ``last``, ``next``), ``tx_check.go`` (``checkBucket``),
``internal/freelist/shared.go`` (``Read``).
"""

from __future__ import annotations

import mmap
import struct
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

from snapshot_tools.bbolt.layout import (
    BRANCH,
    BUCKET_HEADER,
    BUCKET_HEADER_SIZE,
    BUCKET_LEAF_FLAG,
    FREELIST,
    FREELIST_EXTENDED,
    LEAF,
    LEAF_ELEMENT,
    MAX_DEPTH,
    NO_FREELIST,
    PAGE_HEADER,
    PAGE_HEADER_SIZE,
)
from snapshot_tools.bbolt.meta import Meta, choose_meta
from snapshot_tools.bbolt.page import Node, branch_children, inline_node, leaf_spans, read_page
from snapshot_tools.errors import SnapshotError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from snapshot_tools.bbolt.page import Buffer

_TREE_PAGES = frozenset((BRANCH, LEAF))
_FREELIST_PAGES = frozenset((FREELIST,))
# Drop mapped file pages after this many bytes were touched, so RSS stays flat on big files.
RELEASE_WINDOW = 32 << 20
# Freelist ids are checked this many at a time, so a bad id is found before the rest is unpacked.
_FREELIST_CHUNK = 1 << 16

Span = tuple[int, int, int, int]  # flags, key_start, key_end, value_end (absolute offsets)


class DB:
    """A bbolt file in ``buf`` (``size`` bytes), opened with the meta bbolt would choose.

    Raises:
        SnapshotError: no valid meta, or the chosen meta does not fit the file.
    """

    def __init__(self, buf: Buffer, size: int | None = None) -> None:
        self.buf = buf
        self.size = len(buf) if size is None else size
        self.meta: Meta = choose_meta(buf, self.size)
        self.page_size = self.meta.page_size
        self.hwm = self.meta.hwm
        self._touched = 0
        # The map whose resident pages release() drops (None: nothing to drop, or no madvise).
        self._mapping = buf if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED") else None

    def __repr__(self) -> str:
        return f"<DB size={self.size} page_size={self.page_size} hwm={self.hwm} txid={self.meta.txid}>"

    @property
    def total_size(self) -> int:
        """``Tx.Size()``: high-water mark x page size, the bytes a snapshot body holds."""
        return self.hwm * self.page_size

    def touch(self, nbytes: int) -> None:
        """Account ``nbytes`` read from the map; release mapped pages once a window is used.

        Resident file pages count towards RSS; callers copy what they keep, so dropping the
        mapping (the page cache keeps the data) is safe and keeps memory flat.
        """
        self._touched += nbytes
        if self._touched >= RELEASE_WINDOW:
            self.release()

    def release(self) -> None:
        self._touched = 0
        if self._mapping is not None:
            self._mapping.madvise(mmap.MADV_DONTNEED)

    def page(self, pgid: int) -> Node:
        """A branch or leaf page (with its overflow), checked."""
        return read_page(self.buf, pgid, self.page_size, self.hwm, _TREE_PAGES)

    def root(self) -> Bucket:
        """The root bucket: its entries are the top-level buckets."""
        return Bucket(self, b"", self.meta.root, None, self.meta.offset + PAGE_HEADER_SIZE + 16)

    def buckets(self) -> list[bytes]:
        """Names of the top-level buckets, in key order."""
        return self.root().bucket_names()

    def bucket(self, name: bytes) -> Bucket | None:
        """The top-level bucket ``name``, or ``None``."""
        return self.root().bucket(name)

    def freelist(self) -> list[int] | None:
        """Page ids in the persisted freelist, or ``None`` when it is not persisted (etcd on Linux)."""
        if self.meta.freelist == NO_FREELIST:
            return None
        node = read_page(self.buf, self.meta.freelist, self.page_size, self.hwm, _FREELIST_PAGES)
        start = node.offset + PAGE_HEADER_SIZE
        count = node.count
        if count == FREELIST_EXTENDED:
            (count,) = struct.unpack_from("<Q", self.buf, start)
            start += 8
        if start + 8 * count > node.end:
            raise SnapshotError(
                f"freelist of {count} ids does not fit its page", offset=node.offset + 10, pgid=node.pgid
            )
        ids: list[int] = []
        hwm = self.hwm
        for at in range(start, start + 8 * count, 8 * _FREELIST_CHUNK):
            chunk = struct.unpack_from(f"<{min(_FREELIST_CHUNK, count - len(ids))}Q", self.buf, at)
            if min(chunk) < 2 or max(chunk) >= hwm:
                i, pgid = next((i, p) for i, p in enumerate(chunk) if not 2 <= p < hwm)
                raise SnapshotError(
                    f"freelist names page {pgid}, outside [2, {hwm})", offset=at + 8 * i, pgid=node.pgid
                )
            ids.extend(chunk)
        return ids

    def walk(self) -> PageWalk:
        """A walk over every bucket's leaves with ``tx.Check``'s page accounting (:class:`PageWalk`).

        Raises:
            SnapshotError: the freelist is damaged.
        """
        return PageWalk(self)

    def page_map(self) -> PageMap:
        """Which pages below the high-water mark are reachable, free, or neither.

        Every reachable page is counted once; a second reference is damage (bbolt's
        ``tx.Check`` reports "multiple references"). With no persisted freelist, bbolt rebuilds it
        as every unreachable page, so ``unreachable`` is then empty by definition. Memory is
        O(reachable nodes + freelist ids): free pages are returned as runs.

        Raises:
            SnapshotError: damage found on the way, or a page referenced twice.
        """
        walk = self.walk()
        for _leaf in walk:
            pass
        return walk.page_map()


class PageWalk:
    """One walk over every bucket of a :class:`DB`, accounting for its pages as ``tx.Check`` does.

    Iterating yields ``(bucket path, spans)`` for every leaf node, in key order within a bucket;
    a bucket's leaves come together, the root bucket's (``()``) first, nested buckets after their
    parent. Every page reached (metas, the persisted freelist, every tree page of every bucket)
    must be reached exactly once. Once the iteration is complete, :meth:`page_map` splits the
    pages below the high-water mark into reachable, free and unreachable: the one page check
    shared by the reader (:meth:`DB.page_map`) and the verification of a written snapshot.

    Raises (while iterating):
        SnapshotError: damage, buckets nested deeper than ``MAX_DEPTH``, or a page reached twice.
    """

    __slots__ = ("db", "freelist", "reached")

    def __init__(self, db: DB) -> None:
        self.db = db
        self.reached = _Reached(db.hwm)
        self.reached.add(0, 2, 0)  # the metas
        self.freelist = db.freelist()  # None when not persisted
        if self.freelist is not None:
            node = read_page(db.buf, db.meta.freelist, db.page_size, db.hwm, _FREELIST_PAGES)
            self.reached.add(db.meta.freelist, node.overflow + 1, node.offset)

    def __repr__(self) -> str:
        return f"<PageWalk {self.db!r} nodes_reached={len(self.reached.starts)}>"

    def __iter__(self) -> Iterator[tuple[tuple[bytes, ...], list[Span]]]:
        db = self.db
        buf = db.buf
        pending: list[tuple[tuple[bytes, ...], Bucket, int]] = [((), db.root(), 0)]
        while pending:
            path, bucket, depth = pending.pop()
            if depth > MAX_DEPTH:
                raise SnapshotError("buckets nested too deep (a loop?)", offset=bucket.offset)
            for node in bucket.nodes(reached=self.reached):
                db.touch(node.end - node.offset)
                if node.flags != LEAF:
                    continue
                spans = leaf_spans(buf, node)
                for flags, kstart, kend, vend in spans:
                    if flags & BUCKET_LEAF_FLAG:
                        name = bytes(buf[kstart:kend])
                        pending.append(((*path, name), bucket.child(name, kend, vend), depth + 1))
                yield path, spans

    def page_map(self) -> PageMap:
        """The accounting of the completed walk.

        Raises:
            SnapshotError: two nodes overlap (one starts inside another's overflow pages).
        """
        db = self.db
        reached = self.reached
        spans = [(start, reached.starts[start]) for start in reached.check(db.page_size)]
        reachable = sum(stop - start for start, stop in spans)
        gaps = _gaps(spans, db.hwm)
        if self.freelist is None:
            return PageMap(db.hwm, db.page_size, reachable, PageIds(gaps), PageIds(), persisted_freelist=False)
        free, unreachable = _split(gaps, sorted(self.freelist))
        return PageMap(
            db.hwm, db.page_size, reachable, PageIds(free), PageIds(unreachable), persisted_freelist=True
        )


class _Reached:
    """The pages one walk reached, in memory proportional to the nodes reached.

    A node's first page is remembered at once, so a loop or a child shared by two parents stops
    the walk there. Whole spans (overflow included) are compared by :meth:`check` after the walk,
    sorted; until then the walk may not reach more pages than lie below the high-water mark, so
    nodes overlapping each other cannot multiply the data a damaged file yields. (A bytearray per
    page would be O(high-water mark): gigabytes for a sparse file with a huge mark.)
    """

    __slots__ = ("left", "starts")

    def __init__(self, hwm: int) -> None:
        self.starts: dict[int, int] = {}  # first page -> one past the last page of each node
        self.left = hwm  # pages the walk may still reach

    def add(self, pgid: int, npages: int, offset: int) -> None:
        """Record the node at ``pgid`` (``npages`` pages from byte ``offset``).

        Raises:
            SnapshotError: the node was reached before, or the walk has now reached more pages
                than the file holds.
        """
        if pgid in self.starts:
            raise SnapshotError(
                f"page {pgid} is referenced twice (a loop in the tree, or a page with two parents)",
                offset=offset,
                pgid=pgid,
            )
        self.left -= npages
        if self.left < 0:
            raise SnapshotError(
                "pages are referenced twice: the trees reach more pages than lie below the high-water mark",
                offset=offset,
                pgid=pgid,
            )
        self.starts[pgid] = pgid + npages

    def check(self, page_size: int) -> list[int]:
        """The first pages of the nodes reached, sorted (ints sort several times faster than pairs).

        Raises:
            SnapshotError: a node starts inside another node's overflow pages.
        """
        starts = self.starts
        order = sorted(starts)
        stop = 0
        for start in order:
            if start < stop:
                raise SnapshotError(
                    f"page {start} is referenced twice (it lies inside another node's overflow)",
                    offset=start * page_size,
                    pgid=start,
                )
            stop = starts[start]
        return order


def _gaps(spans: list[tuple[int, int]], hwm: int) -> list[range]:
    """The pages in ``[0, hwm)`` outside the sorted, disjoint ``spans``, as runs."""
    gaps = []
    at = 0
    for start, stop in spans:
        if start > at:
            gaps.append(range(at, start))
        at = stop
    if at < hwm:
        gaps.append(range(at, hwm))
    return gaps


def _split(gaps: list[range], ids: list[int]) -> tuple[list[range], list[range]]:
    """``gaps`` cut into the pages the sorted freelist ``ids`` lists and the others."""
    listed: list[range] = []
    unlisted: list[range] = []
    i = 0
    for gap in gaps:
        at = gap.start
        i = bisect_left(ids, at, i)
        while i < len(ids) and ids[i] < gap.stop:
            pgid = ids[i]
            i += 1
            if pgid < at:  # listed twice
                continue
            if pgid > at:
                unlisted.append(range(at, pgid))
            listed.append(range(pgid, pgid + 1))
            at = pgid + 1
        if at < gap.stop:
            unlisted.append(range(at, gap.stop))
    return listed, unlisted


class PageIds(Sequence[int]):
    """Ascending page ids held as runs (``range`` objects), so millions of free pages cost O(runs).

    Compares equal to any sequence of the same ids (``page_map().free == []``).
    """

    __slots__ = ("_len", "runs")

    def __init__(self, runs: Iterable[range] = ()) -> None:
        merged: list[range] = []
        for run in runs:
            if not run:
                continue
            if merged and merged[-1].stop == run.start:
                merged[-1] = range(merged[-1].start, run.stop)
            else:
                merged.append(run)
        self.runs = merged
        self._len = sum(len(r) for r in merged)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        for run in self.runs:
            yield from run

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError("page index out of range")
        for run in self.runs:
            if index < len(run):
                return run[index]
            index -= len(run)
        raise AssertionError("unreachable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PageIds):
            return self.runs == other.runs
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == self._len and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    # Defining __eq__ leaves __hash__ None: like a list, PageIds is not hashable.

    def __repr__(self) -> str:
        return f"PageIds({self.runs!r})"


@dataclass
class PageMap:
    """Result of :meth:`DB.page_map`: page counts and the ids of free and unreachable pages.

    Free pages still hold old page images (spec: "Stale data in free pages").
    """

    hwm: int
    page_size: int
    reachable: int
    free: PageIds = field(default_factory=PageIds)
    unreachable: PageIds = field(default_factory=PageIds)  # neither reachable nor free ("unreachable unfreed")
    persisted_freelist: bool = False


class Bucket:
    """A bucket: a B+tree rooted at page ``root``, or an inline leaf image (``root == 0``)."""

    __slots__ = ("db", "inline", "name", "offset", "root")

    def __init__(self, db: DB, name: bytes, root: int, inline: Node | None, offset: int) -> None:
        self.db = db
        self.name = name
        self.root = root
        self.inline = inline
        self.offset = offset  # where the bucket header is, for messages

    def __repr__(self) -> str:
        where = "inline" if self.inline is not None else f"root={self.root}"
        return f"<Bucket {self.name!r} {where} offset={self.offset}>"

    def child(self, name: bytes, vstart: int, vend: int) -> Bucket:
        """The nested bucket whose header is the value ``[vstart, vend)``."""
        if vend - vstart < BUCKET_HEADER_SIZE:
            raise SnapshotError(f"bucket {name!r}: value of {vend - vstart} bytes is no bucket header", offset=vstart)
        root, _sequence = BUCKET_HEADER.unpack_from(self.db.buf, vstart)
        if root == 0:
            return Bucket(self.db, name, 0, inline_node(self.db.buf, vstart + BUCKET_HEADER_SIZE, vend), vstart)
        if not 2 <= root < self.db.hwm:
            raise SnapshotError(f"bucket {name!r}: root page {root} is outside [2, {self.db.hwm})", offset=vstart)
        return Bucket(self.db, name, root, None, vstart)

    def nodes(self, *, reverse: bool = False, reached: _Reached | None = None) -> Iterator[Node]:
        """Every node of the tree, depth first in key order (``reverse``: from the last key).

        Branch nodes come before their children. Each page may appear once per walk: the walk
        is recorded in ``reached`` (shared across buckets by :class:`PageWalk`). A walk of its
        own checks for overlapping nodes once it is complete.
        """
        if self.inline is not None:
            yield self.inline
            return
        db = self.db
        own = reached is None
        walk = _Reached(db.hwm) if reached is None else reached
        stack = [(self.root, 0)]
        while stack:
            pgid, depth = stack.pop()
            node = db.page(pgid)
            walk.add(pgid, node.overflow + 1, node.offset)
            yield node
            if node.flags == BRANCH:
                if depth >= MAX_DEPTH:
                    raise SnapshotError(f"tree deeper than {MAX_DEPTH} levels", offset=node.offset, pgid=pgid)
                children = branch_children(db.buf, node)
                if not reverse:
                    children.reverse()
                stack.extend((c, depth + 1) for c in children)
        if own:
            walk.check(db.page_size)

    def leaf_batches(self) -> Iterator[list[Span]]:
        """The spans of each leaf node in key order, one list per leaf: the scanning hot path.

        Same walk and checks as :meth:`nodes` + :func:`leaf_spans`, inlined because a full scan
        of a big ``key`` bucket spends most of its time here; any failed check re-reads the page
        through :func:`read_page` / :func:`leaf_spans` to raise their precise error. Nodes that
        share pages are found after the last batch (:meth:`_Reached.check`); until then the
        walk is capped at the pages below the high-water mark.
        """
        db = self.db
        buf = db.buf
        if self.inline is not None:
            yield leaf_spans(buf, self.inline)
            return
        ps, hwm = db.page_size, db.hwm
        unpack_header = PAGE_HEADER.unpack_from
        iter_leaf = LEAF_ELEMENT.iter_unpack
        reached = _Reached(hwm)
        starts = reached.starts
        left = hwm
        stack = [(self.root, 0)]
        while stack:
            pgid, depth = stack.pop()
            if not 2 <= pgid < hwm:
                db.page(pgid)  # raises: out of range
                raise SnapshotError(f"page id {pgid} is out of range", pgid=pgid)
            offset = pgid * ps
            page_id, flags, count, overflow = unpack_header(buf, offset)
            npages = overflow + 1
            end = offset + npages * ps
            start = offset + PAGE_HEADER_SIZE
            if page_id != pgid or flags not in _TREE_PAGES or pgid + overflow >= hwm or start + count * 16 > end:
                db.page(pgid)  # raises with the reason
                raise SnapshotError("bad page header", offset=offset, pgid=pgid)
            left -= npages  # _Reached.add, inlined
            if pgid in starts or left < 0:
                reached.left = left + npages
                reached.add(pgid, npages, offset)  # raises with the reason
            starts[pgid] = pgid + npages
            if flags == LEAF:
                spans = []
                addr = start
                prev = start + count * 16  # data follow the element array, packed in element order
                for eflags, pos, ksize, vsize in iter_leaf(buf[start:prev]):
                    kstart = addr + pos
                    kend = kstart + ksize
                    vend = kend + vsize
                    if kstart < prev or vend > end:
                        leaf_spans(buf, Node(pgid, offset, end, flags, count, overflow))  # raises
                        raise SnapshotError("leaf element overlaps or runs past the page", offset=addr, pgid=pgid)
                    prev = vend
                    spans.append((eflags, kstart, kend, vend))
                    addr += 16
                db.touch(end - offset)
                yield spans
            else:
                if depth >= MAX_DEPTH:
                    raise SnapshotError(f"tree deeper than {MAX_DEPTH} levels", offset=offset, pgid=pgid)
                children = branch_children(buf, Node(pgid, offset, end, flags, count, overflow))
                children.reverse()
                stack.extend((c, depth + 1) for c in children)
        reached.check(ps)

    def spans(self) -> Iterator[Span]:
        """``(flags, key_start, key_end, value_end)`` of every entry, in key order."""
        for batch in self.leaf_batches():
            yield from batch

    def items(self) -> Iterator[tuple[bytes, bytes | None]]:
        """``(key, value)`` pairs in key order; ``value`` is ``None`` for a nested bucket.

        That is bbolt's ``Bucket.ForEach``: nested buckets are listed, not descended into.
        """
        buf = self.db.buf
        for flags, kstart, kend, vend in self.spans():
            yield buf[kstart:kend], (None if flags & BUCKET_LEAF_FLAG else buf[kend:vend])

    def bucket_names(self) -> list[bytes]:
        """Names of the nested buckets, in key order."""
        buf = self.db.buf
        return [buf[k:e] for f, k, e, _ in self.spans() if f & BUCKET_LEAF_FLAG]

    def bucket(self, name: bytes) -> Bucket | None:
        """The nested bucket ``name`` (a top-level bucket when this is the root), or ``None``."""
        buf = self.db.buf
        for flags, kstart, kend, vend in self.spans():
            if flags & BUCKET_LEAF_FLAG and buf[kstart:kend] == name:
                return self.child(name, kend, vend)
        return None

    def last(self) -> Span | None:
        """The span of the last entry (``Cursor.Last``), or ``None`` for an empty bucket."""
        buf = self.db.buf
        for node in self.nodes(reverse=True):
            if node.flags == LEAF and node.count:
                return leaf_spans(buf, node)[-1]
        return None

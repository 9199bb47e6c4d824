"""A read-only bbolt database over one buffer (an mmap): buckets, ordered iteration, page map.

Iteration uses explicit stacks, a per-walk visited map of page ids and a depth limit, so a
damaged file (a branch pointing at itself or an ancestor, a page shared by two parents) raises
:class:`SnapshotError` instead of recursing or looping.

References: bbolt ``db.go`` (``DB.meta``), ``bucket.go`` (``Bucket.openBucket``, ``ForEach``),
``cursor.go`` (``first``, ``last``, ``next``), ``tx_check.go`` (``checkBucket``),
``internal/freelist/shared.go`` (``Read``).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapshot_tools.bbolt.layout import (
    BRANCH,
    BUCKET_HEADER,
    BUCKET_HEADER_SIZE,
    BUCKET_LEAF_FLAG,
    FREELIST,
    FREELIST_EXTENDED,
    LEAF,
    MAX_DEPTH,
    LEAF_ELEMENT,
    NO_FREELIST,
    PAGE_HEADER,
    PAGE_HEADER_SIZE,
)
from snapshot_tools.bbolt.meta import Meta, choose_meta
from snapshot_tools.bbolt.page import Node, branch_children, inline_node, leaf_spans, read_page
from snapshot_tools.errors import SnapshotError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from snapshot_tools.bbolt.page import Buffer

_TREE_PAGES = frozenset((BRANCH, LEAF))
_FREELIST_PAGES = frozenset((FREELIST,))
# Drop mapped file pages after this many bytes were touched, so RSS stays flat on big files.
RELEASE_WINDOW = 32 << 20

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
        self._can_release = isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED")

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
        if self._can_release:
            self.buf.madvise(mmap.MADV_DONTNEED)  # type: ignore[union-attr]

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
        ids = list(struct.unpack_from(f"<{count}Q", self.buf, start))
        for i, pgid in enumerate(ids):
            if not 2 <= pgid < self.hwm:
                raise SnapshotError(
                    f"freelist names page {pgid}, outside [2, {self.hwm})", offset=start + 8 * i, pgid=node.pgid
                )
        return ids

    def page_map(self) -> PageMap:
        """Which pages below the high-water mark are reachable, free, or neither.

        Every reachable page is marked once; a second reference is damage (bbolt's
        ``tx.Check`` reports "multiple references"). With no persisted freelist, bbolt rebuilds it
        as every unreachable page, so ``unreachable`` is then empty by definition.

        Raises:
            SnapshotError: damage found on the way, or a page referenced twice.
        """
        marks = bytearray(self.hwm)
        marks[0] = marks[1] = 1
        freelist = self.freelist()
        if freelist is not None:
            node = read_page(self.buf, self.meta.freelist, self.page_size, self.hwm, _FREELIST_PAGES)
            self._mark(marks, node)
        pending = [(self.root(), 0)]
        while pending:
            bucket, depth = pending.pop()
            if depth > MAX_DEPTH:
                raise SnapshotError("buckets nested too deep (a loop?)", offset=bucket.offset)
            for node in bucket.nodes(marks=marks, mark=self._mark):
                if node.flags != LEAF:
                    continue
                for flags, kstart, kend, vend in leaf_spans(self.buf, node):
                    if flags & BUCKET_LEAF_FLAG:
                        child = bucket.child(bytes(self.buf[kstart:kend]), kend, vend)
                        pending.append((child, depth + 1))
        reachable = sum(1 for m in marks if m)
        if freelist is None:
            free = [p for p in range(2, self.hwm) if not marks[p]]
            return PageMap(self.hwm, self.page_size, reachable, free, [], persisted_freelist=False)
        listed = set(freelist)
        free = sorted(p for p in listed if not marks[p])
        unreachable = [p for p in range(2, self.hwm) if not marks[p] and p not in listed]
        return PageMap(self.hwm, self.page_size, reachable, free, unreachable, persisted_freelist=True)

    def _mark(self, marks: bytearray, node: Node) -> None:
        assert node.pgid is not None
        for pgid in range(node.pgid, node.pgid + node.overflow + 1):
            if marks[pgid]:
                raise SnapshotError(f"page {pgid} is referenced twice", offset=node.offset, pgid=node.pgid)
            marks[pgid] = 1


@dataclass
class PageMap:
    """Result of :meth:`DB.page_map`: page counts and the ids of free and unreachable pages.

    Free pages still hold old page images (spec: "Stale data in free pages").
    """

    hwm: int
    page_size: int
    reachable: int
    free: list[int] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)  # neither reachable nor free ("unreachable unfreed")
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

    def nodes(self, *, reverse: bool = False, marks: bytearray | None = None, mark=None) -> Iterator[Node]:  # type: ignore[no-untyped-def]
        """Every node of the tree, depth first in key order (``reverse``: from the last key).

        Branch nodes come before their children. Each page may appear once per walk.
        """
        if self.inline is not None:
            yield self.inline
            return
        db = self.db
        seen = bytearray(db.hwm) if marks is None else marks
        stack = [(self.root, 0)]
        while stack:
            pgid, depth = stack.pop()
            node = db.page(pgid)
            if mark is not None:
                mark(seen, node)
            elif seen[pgid]:
                raise SnapshotError(f"page {pgid} is reached twice (a loop in the tree)", offset=node.offset, pgid=pgid)
            else:
                seen[pgid] = 1
            yield node
            if node.flags == BRANCH:
                if depth >= MAX_DEPTH:
                    raise SnapshotError(f"tree deeper than {MAX_DEPTH} levels", offset=node.offset, pgid=pgid)
                children = branch_children(db.buf, node)
                if not reverse:
                    children.reverse()
                stack.extend((c, depth + 1) for c in children)

    def leaf_batches(self) -> Iterator[list[Span]]:
        """The spans of each leaf node in key order, one list per leaf: the scanning hot path.

        Same walk and checks as :meth:`nodes` + :func:`leaf_spans`, inlined because a full scan
        of a big ``key`` bucket spends most of its time here; any failed check re-reads the page
        through :func:`read_page` / :func:`leaf_spans` to raise their precise error.
        """
        db = self.db
        buf = db.buf
        if self.inline is not None:
            yield leaf_spans(buf, self.inline)
            return
        ps, hwm = db.page_size, db.hwm
        unpack_header = PAGE_HEADER.unpack_from
        iter_leaf = LEAF_ELEMENT.iter_unpack
        seen = bytearray(hwm)
        stack = [(self.root, 0)]
        while stack:
            pgid, depth = stack.pop()
            if not 2 <= pgid < hwm or seen[pgid]:
                if 2 <= pgid < hwm:
                    raise SnapshotError(f"page {pgid} is reached twice (a loop in the tree)", pgid=pgid)
                db.page(pgid)  # raises: out of range
                raise SnapshotError(f"page id {pgid} is out of range", pgid=pgid)
            seen[pgid] = 1
            offset = pgid * ps
            page_id, flags, count, overflow = unpack_header(buf, offset)
            end = offset + (overflow + 1) * ps
            start = offset + PAGE_HEADER_SIZE
            if page_id != pgid or flags not in _TREE_PAGES or pgid + overflow >= hwm or start + count * 16 > end:
                db.page(pgid)  # raises with the reason
                raise SnapshotError("bad page header", offset=offset, pgid=pgid)
            if flags == LEAF:
                spans = []
                addr = start
                for eflags, pos, ksize, vsize in iter_leaf(buf[start : start + count * 16]):
                    kstart = addr + pos
                    kend = kstart + ksize
                    vend = kend + vsize
                    if vend > end:
                        leaf_spans(buf, Node(pgid, offset, end, flags, count, overflow))  # raises
                        raise SnapshotError("leaf element runs past the page", offset=addr, pgid=pgid)
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

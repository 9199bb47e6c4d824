"""bbolt pages and nodes: header checks and bounds-checked element spans.

A *node* is a branch or leaf page image: an on-disk page with its overflow pages, or the page
image stored inline in a bucket value. Elements are returned as absolute byte offsets into the
one file buffer, so keys and values are sliced only when a caller needs them.

References: bbolt ``internal/common/page.go`` (``Page``, ``BranchPageElement``,
``LeafPageElement``), ``internal/guts_cli`` (``ReadPage``), ``tx_check.go`` (``IsValidPage``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapshot_tools.bbolt.layout import (
    BRANCH,
    BRANCH_ELEMENT,
    ELEMENT_SIZE,
    LEAF,
    LEAF_ELEMENT,
    PAGE_HEADER,
    PAGE_HEADER_SIZE,
    PAGE_TYPES,
)
from snapshot_tools.errors import SnapshotError

if TYPE_CHECKING:
    from mmap import mmap

    Buffer = bytes | mmap


class Node:
    """A page image: header at ``offset``; its elements and data must end by ``end``."""

    __slots__ = ("count", "end", "flags", "offset", "overflow", "pgid")

    def __init__(self, pgid: int | None, offset: int, end: int, flags: int, count: int, overflow: int) -> None:
        self.pgid = pgid  # None for an inline bucket page
        self.offset = offset
        self.end = end
        self.flags = flags
        self.count = count
        self.overflow = overflow

    @property
    def is_leaf(self) -> bool:
        return self.flags == LEAF

    def __repr__(self) -> str:
        kind = PAGE_TYPES.get(self.flags, f"{self.flags:#x}")
        where = "inline" if self.pgid is None else f"pgid={self.pgid}"
        return f"<Node {where} offset={self.offset} {kind} count={self.count} overflow={self.overflow}>"


def read_page(buf: Buffer, pgid: int, page_size: int, hwm: int, allowed: frozenset[int]) -> Node:
    """The page ``pgid`` after the checks ``tx.Check`` and ``guts_cli.ReadPage`` make.

    Raises:
        SnapshotError: the id is out of range, the header names another page, the type is not
            exactly one of ``allowed``, or the page (with overflow) runs past the high-water mark.
    """
    if not 2 <= pgid < hwm:
        raise SnapshotError(f"page id {pgid} is outside [2, {hwm}) (high-water mark)", pgid=pgid)
    offset = pgid * page_size
    page_id, flags, count, overflow = PAGE_HEADER.unpack_from(buf, offset)
    if page_id != pgid:
        raise SnapshotError(f"page header says id {page_id}, expected {pgid}", offset=offset, pgid=pgid)
    if flags not in allowed:
        want = "/".join(PAGE_TYPES[f] for f in sorted(allowed))
        raise SnapshotError(f"page flags {flags:#x}, expected {want}", offset=offset + 8, pgid=pgid)
    if pgid + overflow >= hwm:
        raise SnapshotError(
            f"page overflow {overflow} runs past the high-water mark {hwm}", offset=offset + 12, pgid=pgid
        )
    end = offset + (overflow + 1) * page_size
    # Freelist pages count 8-byte ids, checked by their reader.
    if flags in (BRANCH, LEAF) and PAGE_HEADER_SIZE + count * ELEMENT_SIZE > end - offset:
        raise SnapshotError(f"{count} elements do not fit in the page", offset=offset + 10, pgid=pgid)
    return Node(pgid, offset, end, flags, count, overflow)


def inline_node(buf: Buffer, offset: int, end: int) -> Node:
    """The leaf page image an inline bucket carries in its value, ``[offset, end)``.

    Raises:
        SnapshotError: the image is too short, not a leaf, or its elements overrun it.
    """
    if end - offset < PAGE_HEADER_SIZE:
        raise SnapshotError(f"inline bucket is {end - offset} bytes, shorter than a page header", offset=offset)
    _, flags, count, overflow = PAGE_HEADER.unpack_from(buf, offset)
    if flags != LEAF:
        raise SnapshotError(f"inline bucket page flags {flags:#x}, expected leaf", offset=offset + 8)
    if PAGE_HEADER_SIZE + count * ELEMENT_SIZE > end - offset:
        raise SnapshotError(f"{count} elements do not fit in the inline bucket", offset=offset + 10)
    return Node(None, offset, end, flags, count, overflow)


def branch_children(buf: Buffer, node: Node) -> list[int]:
    """Child page ids of a branch node, in key order (keys are bounds-checked, not returned).

    Raises:
        SnapshotError: an element's key lies outside the node or overlaps another (see
            :func:`leaf_spans`).
    """
    start = node.offset + PAGE_HEADER_SIZE
    end = node.end
    children = []
    addr = start
    prev = start + node.count * ELEMENT_SIZE
    for pos, ksize, child in BRANCH_ELEMENT.iter_unpack(buf[start:prev]):
        kstart = addr + pos
        kend = kstart + ksize
        if kend > end:
            raise SnapshotError(
                f"branch element key (pos {pos}, size {ksize}) runs past the page", offset=addr, pgid=node.pgid
            )
        if kstart < prev:
            raise SnapshotError(
                f"branch element key (pos {pos}, size {ksize}) overlaps the element array or the previous key",
                offset=addr,
                pgid=node.pgid,
            )
        prev = kend
        children.append(child)
        addr += ELEMENT_SIZE
    return children


def leaf_spans(buf: Buffer, node: Node) -> list[tuple[int, int, int, int]]:
    """``(flags, key_start, key_end, value_end)`` of every element of a leaf node, in order.

    bbolt's ``node.write`` packs keys and values right after the element array, in element order,
    so each element's data must start at or after the end of the previous one's (a gap is
    harmless). Overlapping elements are damage: without this check a few KB of crafted elements
    pointing into one big region would read as that region many times over (issue 9, item 8).

    Raises:
        SnapshotError: an element's key or value lies outside the node, or overlaps the element
            array or the previous element's data.
    """
    start = node.offset + PAGE_HEADER_SIZE
    end = node.end
    spans = []
    addr = start
    prev = start + node.count * ELEMENT_SIZE
    for flags, pos, ksize, vsize in LEAF_ELEMENT.iter_unpack(buf[start:prev]):
        kstart = addr + pos
        kend = kstart + ksize
        vend = kend + vsize
        if vend > end:
            raise SnapshotError(
                f"leaf element (pos {pos}, key {ksize} bytes, value {vsize} bytes) runs past the page",
                offset=addr,
                pgid=node.pgid,
            )
        if kstart < prev:
            raise SnapshotError(
                f"leaf element (pos {pos}, key {ksize} bytes, value {vsize} bytes) overlaps the element "
                "array or the previous element's data",
                offset=addr,
                pgid=node.pgid,
            )
        prev = vend
        spans.append((flags, kstart, kend, vend))
        addr += ELEMENT_SIZE
    return spans

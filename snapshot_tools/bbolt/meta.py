"""bbolt meta pages: parse, validate (magic, version, FNV-1a) and choose one as bbolt does.

References: bbolt ``internal/common/meta.go`` (``Meta.Validate``, ``Sum64``) and ``db.go``
(``getPageSize``, ``getPageSizeFromFirstMeta``, ``getPageSizeFromSecondMeta``, ``DB.meta``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapshot_tools.bbolt.layout import (
    MAGIC,
    MAX_PAGE_SIZE,
    META_CHECKSUMMED,
    META_OFFSET,
    META_STRUCT,
    MIN_PAGE_SIZE,
    NO_FREELIST,
    PAGE_SIZE_PROBES,
    VERSION,
    fnv64a,
)
from snapshot_tools.errors import SnapshotError

if TYPE_CHECKING:
    from snapshot_tools.bbolt.page import Buffer

_META_END = META_OFFSET + META_STRUCT.size  # bytes of a page needed to read its meta


@dataclass(frozen=True, slots=True)
class Meta:
    """One meta page as stored; ``problem`` is why it is invalid, ``None`` when valid."""

    offset: int
    magic: int
    version: int
    page_size: int
    flags: int
    root: int
    sequence: int
    freelist: int
    hwm: int
    txid: int
    checksum: int
    problem: str | None

    @property
    def valid(self) -> bool:
        return self.problem is None

    def __repr__(self) -> str:
        state = "valid" if self.problem is None else f"invalid: {self.problem}"
        return (
            f"<Meta offset={self.offset} txid={self.txid} page_size={self.page_size} "
            f"root={self.root} freelist={self.freelist:#x} hwm={self.hwm} {state}>"
        )


def read_meta(buf: Buffer, offset: int, size: int) -> Meta | None:
    """The meta at page offset ``offset``, or ``None`` when the file ends before it."""
    if offset < 0 or offset + _META_END > size:
        return None
    magic, version, page_size, flags, root, sequence, freelist, hwm, txid, checksum = META_STRUCT.unpack_from(
        buf, offset + META_OFFSET
    )
    problem: str | None = None
    # Same order and rule as ``Meta.Validate``: a zero checksum is not checked.
    if magic != MAGIC:
        problem = f"bad magic {magic:#010x}"
    elif version != VERSION:
        problem = f"unsupported version {version}"
    elif checksum != 0:
        start = offset + META_OFFSET
        if checksum != fnv64a(buf[start : start + META_CHECKSUMMED]):
            problem = "checksum mismatch"
    return Meta(offset, magic, version, page_size, flags, root, sequence, freelist, hwm, txid, checksum, problem)


def find_page_size(buf: Buffer, size: int) -> int:
    """The page size as bbolt finds it: meta 0, else meta 1 probed at 1 KiB << i.

    Raises:
        SnapshotError: no valid meta page where bbolt would look.
    """
    first = read_meta(buf, 0, size)
    if first is not None and first.valid:
        return first.page_size
    for pos in PAGE_SIZE_PROBES:
        if pos >= size - 1024:
            break
        meta = read_meta(buf, pos, size)
        if meta is not None and meta.valid:
            return meta.page_size
    if first is None:
        raise SnapshotError(f"file too short for a bbolt meta page ({size} bytes)", offset=0)
    raise SnapshotError(
        f"not a bbolt database, or both meta pages are damaged (meta 0: {first.problem})", offset=0
    )


def choose_meta(buf: Buffer, size: int) -> Meta:
    """The meta bbolt would use: the valid one with the higher txid, else the other valid one.

    The chosen meta's fields are then checked against the file, because bbolt trusts them and
    crashes (SIGBUS, index out of range) when they are wrong.

    Raises:
        SnapshotError: neither meta is valid, or the chosen one does not fit the file.
    """
    page_size = find_page_size(buf, size)
    if page_size < MIN_PAGE_SIZE or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise SnapshotError(f"meta page gives an impossible page size {page_size}", offset=META_OFFSET + 8)
    meta0 = read_meta(buf, 0, size)
    meta1 = read_meta(buf, page_size, size)
    metas = [m for m in (meta0, meta1) if m is not None]
    first, second = (meta1, meta0) if meta0 and meta1 and meta1.txid > meta0.txid else (meta0, meta1)
    for meta in (first, second):
        if meta is not None and meta.valid:
            break
    else:
        problems = "; ".join(f"meta at offset {m.offset}: {m.problem}" for m in metas)
        raise SnapshotError(f"both meta pages are invalid ({problems})", offset=0)
    _check_fits(meta, page_size, size)
    return meta


def _check_fits(meta: Meta, page_size: int, size: int) -> None:
    at = meta.offset + META_OFFSET
    if meta.page_size != page_size:
        raise SnapshotError(
            f"meta page size {meta.page_size} differs from the file's page size {page_size}", offset=at + 8
        )
    if meta.hwm < 3:
        raise SnapshotError(f"meta high-water mark {meta.hwm} is too small", offset=at + 40)
    if meta.hwm * page_size > size:
        raise SnapshotError(
            f"file is truncated: the meta high-water mark needs {meta.hwm * page_size} bytes, "
            f"the file has {size}",
            offset=size,
        )
    if not 2 <= meta.root < meta.hwm:
        raise SnapshotError(f"root bucket page {meta.root} is outside [2, {meta.hwm})", offset=at + 16)
    if meta.freelist != NO_FREELIST and not 2 <= meta.freelist < meta.hwm:
        raise SnapshotError(f"freelist page {meta.freelist} is outside [2, {meta.hwm})", offset=at + 32)

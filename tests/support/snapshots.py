"""Snapshots without etcd: a small bbolt file writer for tests and benchmarks, and etcd records.

etcd on Linux never persists a freelist and never nests buckets, so the shared fixtures cannot
exercise those reader paths; this builder writes them (a persisted freelist in both count forms,
nested and inline buckets, multi-page nodes, any page size) following the layout in
``spec/etcd-snapshot-format.md`` section 1.2. It streams pages to a file, so it can also make
the large synthetic snapshots the benchmark scans.

References: bbolt ``node.go`` (``write``), ``bucket.go`` (``inlineable``, ``write``), ``tx.go``
(``WriteTo``), ``internal/freelist/shared.go`` (``Write``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from snapshot_tools.bbolt.layout import (
    BRANCH,
    BUCKET_HEADER,
    BUCKET_LEAF_FLAG,
    FREELIST,
    LEAF,
    MAGIC,
    META,
    META_STRUCT,
    NO_FREELIST,
    PAGE_HEADER,
    VERSION,
    fnv64a,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path


@dataclass(frozen=True)
class Nested:
    """A leaf value that is a bucket header (element flag 0x01)."""

    header: bytes


Value = bytes | Nested


def _leaf_image(items: list[tuple[bytes, Value]]) -> tuple[bytes, int]:
    elems = bytearray()
    data = bytearray()
    n = len(items)
    for i, (k, v) in enumerate(items):
        flags, raw = (BUCKET_LEAF_FLAG, v.header) if isinstance(v, Nested) else (0, v)
        pos = 16 * (n - i) + len(data)  # relative to the element's own address
        elems += b"".join((flags.to_bytes(4, "little"), pos.to_bytes(4, "little"),
                           len(k).to_bytes(4, "little"), len(raw).to_bytes(4, "little")))
        data += k + raw
    return bytes(elems + data), n


def _branch_image(children: list[tuple[bytes, int]]) -> tuple[bytes, int]:
    elems = bytearray()
    data = bytearray()
    n = len(children)
    for i, (k, pgid) in enumerate(children):
        pos = 16 * (n - i) + len(data)
        elems += pos.to_bytes(4, "little") + len(k).to_bytes(4, "little") + pgid.to_bytes(8, "little")
        data += k
    return bytes(elems + data), n


class Builder:
    """Write a bbolt file page by page: buckets first, then :meth:`finish` writes metas."""

    def __init__(self, out: BinaryIO, page_size: int = 4096) -> None:
        self.out = out
        self.ps = page_size
        self.next_pgid = 2
        out.write(b"\0" * 2 * page_size)  # metas, written last

    def _node(self, flags: int, image: bytes, count: int) -> int:
        total = 16 + len(image)
        npages = -(-total // self.ps)
        pgid = self.next_pgid
        self.out.write(PAGE_HEADER.pack(pgid, flags, count, npages - 1) + image)
        self.out.write(b"\0" * (npages * self.ps - total))
        self.next_pgid += npages
        return pgid

    def bucket(self, items: Iterable[tuple[bytes, Value]], *, inline: bool | None = None) -> bytes:
        """Write a bucket from sorted items; return its header value (inline image or root pgid).

        ``inline=None`` inlines like bbolt (one small leaf, no sub-buckets); True/False force it.
        """
        level: list[tuple[bytes, int]] = []
        pending: list[tuple[bytes, Value]] = []
        size = 16
        nested = False
        for k, v in items:
            vlen = len(v.header) if isinstance(v, Nested) else len(v)
            nested |= isinstance(v, Nested)
            if pending and size + 16 + len(k) + vlen > self.ps:
                if inline:  # forced inline holds everything in one image
                    pass
                else:
                    level.append((pending[0][0], self._node(LEAF, *_leaf_image(pending))))
                    pending, size = [], 16
            pending.append((k, v))
            size += 16 + len(k) + vlen
        small = not level and not nested and size <= self.ps // 4
        if inline or (inline is None and small):
            image, count = _leaf_image(pending)
            return BUCKET_HEADER.pack(0, 0) + PAGE_HEADER.pack(0, LEAF, count, 0) + image
        if pending or not level:
            level.append((pending[0][0] if pending else b"", self._node(LEAF, *_leaf_image(pending))))
        while len(level) > 1:
            upper: list[tuple[bytes, int]] = []
            group: list[tuple[bytes, int]] = []
            size = 16
            for k, pgid in level:
                if group and size + 16 + len(k) > self.ps:
                    upper.append((group[0][0], self._node(BRANCH, *_branch_image(group))))
                    group, size = [], 16
                group.append((k, pgid))
                size += 16 + len(k)
            upper.append((group[0][0], self._node(BRANCH, *_branch_image(group))))
            level = upper
        return BUCKET_HEADER.pack(level[0][1], 0)

    def free_page(self, content: bytes = b"") -> int:
        """A page no tree reaches (a stale page image, as etcd's snapshots carry)."""
        pgid = self.next_pgid
        self.out.write((content + b"\0" * self.ps)[: self.ps])
        self.next_pgid += 1
        return pgid

    def finish(
        self,
        buckets: list[tuple[bytes, bytes]],
        *,
        freelist: str = "none",
        free: list[int] | None = None,
        txid: int = 10,
        trailer: bool = True,
    ) -> None:
        """Write the root bucket, the freelist (``none``, ``count`` or ``extended``) and metas."""
        root = int.from_bytes(self.bucket([(n, Nested(h)) for n, h in buckets], inline=False)[:8], "little")
        free = free or []
        fl_pgid = NO_FREELIST
        if freelist != "none":
            ids = b"".join(p.to_bytes(8, "little") for p in sorted(free))
            if freelist == "extended" or len(free) >= 0xFFFF:
                image, count = len(free).to_bytes(8, "little") + ids, 0xFFFF
            else:
                image, count = ids, len(free)
            fl_pgid = self._node(FREELIST, image, count)
        hwm = self.next_pgid
        for pgid, tx in ((0, txid), (1, txid - 1)):
            fields = META_STRUCT.pack(MAGIC, VERSION, self.ps, 0, root, 0, fl_pgid, hwm, tx, 0)[:56]
            meta = fields + fnv64a(fields).to_bytes(8, "little")
            self.out.seek(pgid * self.ps)
            self.out.write(PAGE_HEADER.pack(pgid, META, 0, 0) + meta)
        self.out.seek(0, io.SEEK_END)
        if trailer:
            self.out.flush()
            self.out.seek(0)
            digest = hashlib.sha256()
            for _ in range(hwm):
                digest.update(self.out.read(self.ps))
            self.out.seek(0, io.SEEK_END)
            self.out.write(digest.digest())


def build_db(
    buckets: dict[bytes, dict[bytes, object]],
    *,
    page_size: int = 4096,
    freelist: str = "none",
    free_pages: int = 0,
    trailer: bool = True,
    inline: bool | None = None,
) -> bytes:
    """An in-memory bbolt file; dict values that are dicts become nested buckets."""
    out = io.BytesIO()
    b = Builder(out, page_size)

    def write(items: dict[bytes, object]) -> bytes:
        rows: list[tuple[bytes, Value]] = []
        for k in sorted(items):
            v = items[k]
            rows.append((k, Nested(write(v)) if isinstance(v, dict) else v))  # type: ignore[arg-type]
        return b.bucket(rows, inline=inline)

    tops = [(name, write(items)) for name, items in sorted(buckets.items())]
    free = [b.free_page(b"stale:" + bytes([i % 256]) * 64) for i in range(free_pages)]
    b.finish(tops, freelist=freelist, free=free, trailer=trailer)
    return out.getvalue()


def revision_key(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    """etcd's ``key`` bucket key: main BE, ``'_'``, sub BE, ``'t'`` for a deletion."""
    return main.to_bytes(8, "big") + b"_" + sub.to_bytes(8, "big") + (b"t" if tombstone else b"")


def kv_bytes(key: bytes, create: int = 0, mod: int = 0, version: int = 0, value: bytes = b"", lease: int = 0) -> bytes:
    """``mvccpb.KeyValue`` encoded by the protobuf runtime (independent of the reader's decoder)."""
    from snapshot_tools.proto.etcd_kv_pb2 import KeyValue

    return KeyValue(
        key=key, create_revision=create, mod_revision=mod, version=version, value=value, lease=lease
    ).SerializeToString()


def write_snapshot(path: Path, values: Mapping[str, bytes]) -> Path:
    """A snapshot at ``path`` holding ``values`` (etcd key -> stored value), one revision each.

    Keys are written in sorted order from revision 2, as one etcd transaction per key would.
    """
    records = {
        revision_key(rev): kv_bytes(key.encode(), create=rev, mod=rev, version=1, value=value)
        for rev, (key, value) in enumerate(sorted(values.items()), start=2)
    }
    path.write_bytes(build_db({b"key": records, b"meta": {b"consistent_index": (1).to_bytes(8, "big")}}))
    return path

"""bbolt on-disk layout: constants and ``struct`` formats (format version 2, little-endian).

Everything here is fixed by bbolt; nothing is derived from a particular file. Byte order is
little-endian: bbolt casts structs onto the mmap, and every platform etcd ships for writes LE.

References: bbolt ``internal/common/{page,meta,types,bucket,inode}.go`` (spec section 1.2).
"""

from __future__ import annotations

import struct

MAGIC = 0xED0CDAED
VERSION = 2

# Page flags (``common.BranchPageFlag`` ...); a page carries exactly one of them.
BRANCH = 0x01
LEAF = 0x02
META = 0x04
FREELIST = 0x10
PAGE_TYPES = {BRANCH: "branch", LEAF: "leaf", META: "meta", FREELIST: "freelist"}

# Leaf element flag: the value is a nested bucket header, not user data.
BUCKET_LEAF_FLAG = 0x01

# ``meta.freelist`` when etcd runs with NoFreelistSync (Linux): the freelist is not persisted.
NO_FREELIST = 0xFFFFFFFFFFFFFFFF
# Freelist ``count`` at or above this moves the real count into the first u64.
FREELIST_EXTENDED = 0xFFFF

PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
PAGE_HEADER_SIZE = PAGE_HEADER.size  # 16
BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
ELEMENT_SIZE = 16
BUCKET_HEADER = struct.Struct("<QQ")  # root, sequence
BUCKET_HEADER_SIZE = BUCKET_HEADER.size  # 16

# magic, version, pageSize, flags, root.root, root.sequence, freelist, pgid (HWM), txid, checksum
META_STRUCT = struct.Struct("<IIIIQQQQQQ")
META_OFFSET = PAGE_HEADER_SIZE  # the meta struct follows the page header
META_CHECKSUMMED = 56  # FNV-1a covers magic .. txid, not the checksum itself

# bbolt looks for meta 1 at 1 KiB << i, i = 0..14, when meta 0 is unusable (``getPageSizeFromSecondMeta``).
PAGE_SIZE_PROBES = tuple(1024 << i for i in range(15))
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 1 << 24

# A B+tree deeper than this is a loop or garbage: 2^64 pages fit in far fewer levels.
MAX_DEPTH = 64

# ``MaxKeySize`` and ``MaxValueSize`` (bbolt ``bucket.go``): what a write may store.
MAX_KEY_SIZE = 32768
MAX_VALUE_SIZE = (1 << 31) - 2

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF


def fnv64a(data: bytes) -> int:
    """FNV-1a 64-bit, as Go's ``hash/fnv.New64a`` (used for the meta checksum)."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    return h

"""A read-only, bounds-checked bbolt (etcd's storage engine) reader and a bulk writer, in pure Python.

Public entry point for the page-level reader and the bulk writer: open a :class:`DB` over an
mmap (or bytes), walk buckets, iterate pairs in key order, and map which pages are reachable or
free; :func:`write_db` rebuilds a compact file from logical contents. Every damaged structure
raises :class:`snapshot_tools.errors.SnapshotError` naming the byte offset.

Layout mirrors bbolt: ``layout`` (constants, struct formats), ``meta``, ``page``, ``db``;
``writer`` rebuilds a compact file from logical contents.

References: etcd-io/bbolt ``db.go``, ``bucket.go``, ``cursor.go``, ``tx_check.go``,
``internal/common/{page,meta,bucket}.go``; the writer: ``node.go``, ``tx.go`` (``WriteTo``).
"""

from __future__ import annotations

from snapshot_tools.bbolt.db import DB, Bucket, PageMap, PageWalk
from snapshot_tools.bbolt.layout import fnv64a
from snapshot_tools.bbolt.meta import Meta, choose_meta, read_meta
from snapshot_tools.bbolt.page import Node
from snapshot_tools.bbolt.writer import BucketContents, WriteStats, write_db

__all__ = [
    "DB",
    "Bucket",
    "BucketContents",
    "Meta",
    "Node",
    "PageMap",
    "PageWalk",
    "WriteStats",
    "choose_meta",
    "fnv64a",
    "read_meta",
    "write_db",
]

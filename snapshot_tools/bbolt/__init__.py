"""A read-only, bounds-checked bbolt (etcd's storage engine) reader in pure Python.

Public entry point for the page-level reader: open a :class:`DB` over an mmap (or bytes), walk
buckets, iterate pairs in key order, and map which pages are reachable or free. Every damaged
structure raises :class:`snapshot_tools.errors.SnapshotError` naming the byte offset.

Layout mirrors bbolt: ``layout`` (constants, struct formats), ``meta``, ``page``, ``db``.

References: etcd-io/bbolt ``db.go``, ``bucket.go``, ``cursor.go``, ``tx_check.go``,
``internal/common/{page,meta,bucket}.go``.
"""

from __future__ import annotations

from snapshot_tools.bbolt.db import DB, Bucket, PageMap
from snapshot_tools.bbolt.layout import fnv64a
from snapshot_tools.bbolt.meta import Meta, choose_meta, read_meta
from snapshot_tools.bbolt.page import Node

__all__ = ["DB", "Bucket", "Meta", "Node", "PageMap", "choose_meta", "fnv64a", "read_meta"]

"""The SHA-256 trailer verdict of a snapshot computed from its bytes as they stream past.

An unpacked snapshot (a local or S3 ``.zip``/``.gz``) is hashed while it is written (on the
unpack's writer thread, which waits on the inflate most of the time), so the reader need not hash
the file a second time from the page cache:
:meth:`snapshot_tools.snapshot.Snapshot.adopt_trailer` takes the verdict for a file of exactly
the size it was computed over. The rule is etcdutl's, as ``Snapshot.trailer`` applies it: a
trailer exists when ``size % 512 == 32`` and is the SHA-256 of everything before it.

References: etcd ``client/v3/snapshot/v3_snapshot.go`` (``hasChecksum``),
``etcdutl/snapshot/v3_snapshot.go`` (``copyAndVerifyDB``).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

__all__ = ["Trailer", "TrailerHasher", "trailer_state"]

TRAILER_SIZE = 32  # as snapshot.TRAILER_SIZE; not imported, so the unpack needs no bbolt reader


class Trailer(NamedTuple):
    """``valid``, ``mismatch`` or ``missing``, and the size of the file it was computed over."""

    state: str
    size: int


def trailer_state(size: int, digest: bytes, trailer: bytes) -> str:
    """The verdict for a file of ``size`` bytes whose first ``size - 32`` hash to ``digest`` and
    whose last 32 are ``trailer``."""
    if size % 512 != TRAILER_SIZE or size < TRAILER_SIZE:
        return "missing"
    return "valid" if digest == trailer else "mismatch"


class TrailerHasher:
    """Feed every byte of a file in order (:meth:`update`); :meth:`result` is its verdict.

    The last 32 bytes seen are held back from the hash: they are the trailer if the stream ends
    there. Memory: 32 bytes beside the hash state.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._tail = b""  # the last (at most 32) bytes, not hashed yet
        self.size = 0

    def update(self, piece: bytes | memoryview) -> None:
        n = len(piece)
        if not n:
            return
        self.size += n
        if n >= TRAILER_SIZE:
            self._digest.update(self._tail)  # hashlib releases the GIL for large buffers
            with memoryview(piece) as view:
                self._digest.update(view[: n - TRAILER_SIZE])
                self._tail = bytes(view[n - TRAILER_SIZE :])
            return
        joined = self._tail + bytes(piece)
        cut = max(0, len(joined) - TRAILER_SIZE)
        self._digest.update(joined[:cut])
        self._tail = joined[cut:]

    def result(self) -> Trailer:
        return Trailer(trailer_state(self.size, self._digest.digest(), self._tail), self.size)

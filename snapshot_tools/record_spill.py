"""Records sorted by (key, main, sub) in bounded memory: an external merge sort on disk.

A live etcd's history (``check --etcd-endpoint --all-revisions``) arrives in revision order
from a watch and must be handed out by key. Holding it until sorted costs memory in proportion
to the history (a never-compacted etcd of 100k Secrets: 2.4 GB). :class:`RecordSpill` holds at
most about ``run_bytes`` of records: when that fills, they are sorted and written as one run to
a private file, and :meth:`RecordSpill.sorted` merges the runs (:func:`heapq.merge`, at most
``fan_in`` files open at once; more are first merged in passes). A history that fits in one
run never touches the disk.

Files: a private 0700 directory from :mod:`tempfile` (``$TMPDIR``), made on the first run, runs
inside created exclusively with mode 0600, never through a symlink; :meth:`RecordSpill.close`
removes it whatever happened (the CLI turns SIGINT/SIGTERM/SIGHUP into exceptions, so signals
unwind through it too). The runs need about as much disk as the history's keys and values.

The run format is ours and short-lived: per record a fixed header (key and value lengths, the
revisions, version, lease, tombstone flag), then the key and the value bytes.
"""

from __future__ import annotations

import heapq
import os
import shutil
import struct
from operator import attrgetter
from typing import TYPE_CHECKING

from snapshot_tools.errors import InputError
from snapshot_tools.mvcc import Record
from snapshot_tools.private_temp import new_private_file, private_tempdir

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import TracebackType
    from typing import Self

__all__ = ["FAN_IN", "ORDER", "RUN_BYTES", "RecordSpill"]

RUN_BYTES = 32 << 20  # records held in memory (estimated, Python objects included) before a run is written
FAN_IN = 64  # runs merged at once (one open file and one read buffer each)
ORDER = attrgetter("key", "main", "sub")  # the total order of records: by key, then revision
# Python bytes of one held Record beyond its key and value: the 9-slot tuple, the two bytes
# objects' headers, the revision ints and the list slot.
_OVERHEAD = 320
_HEAD = struct.Struct("<IIqqqqqq?")  # key len, value len, main, sub, create, mod, version, lease, tombstone
_READ_BUFFER = 128 << 10
_WRITE_BUFFER = 1 << 20


class RecordSpill:
    """Collect records (:meth:`add`/:meth:`extend`), then read them back once in :data:`ORDER`
    (:meth:`sorted`) with about ``run_bytes`` held; :meth:`close` removes every file."""

    def __init__(self, run_bytes: int = RUN_BYTES, fan_in: int = FAN_IN) -> None:
        self.run_bytes = max(1, run_bytes)
        self.fan_in = max(2, fan_in)
        self.dir: str | None = None  # the private directory, once a run was written
        self.runs: list[str] = []  # run files, in the order written
        self._held: list[Record] = []
        self._held_bytes = 0
        self._count = 0  # files made so far (unique names)

    def add(self, rec: Record) -> None:
        self._held.append(rec)
        self._held_bytes += len(rec.key) + len(rec.value) + _OVERHEAD
        if self._held_bytes >= self.run_bytes:
            self._write_run()

    def extend(self, records: Iterable[Record]) -> None:
        for rec in records:
            self.add(rec)

    def sorted(self) -> Iterator[Record]:
        """Every record added, in :data:`ORDER`: from memory if no run was written, else merged
        from the runs (the records still held are written as the last one first)."""
        if not self.runs:
            held, self._held, self._held_bytes = self._held, [], 0
            held.sort(key=ORDER)
            return iter(held)
        if self._held:
            self._write_run()
        while len(self.runs) > self.fan_in:  # too many files to open at once: merge in passes
            group, self.runs = self.runs[: self.fan_in], self.runs[self.fan_in :]
            self.runs.insert(0, self._write(heapq.merge(*map(self._read, group), key=ORDER)))
            for path in group:
                os.unlink(path)
        return heapq.merge(*map(self._read, self.runs), key=ORDER)

    def close(self) -> None:
        """Forget the held records and remove the directory and its runs (open readers may
        still finish: unlinked files stay readable)."""
        self._held, self._held_bytes = [], 0
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.runs = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------------

    def _write_run(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        held.sort(key=ORDER)
        self.runs.append(self._write(held))

    def _write(self, records: Iterable[Record]) -> str:
        """A new run file holding ``records`` (already in order); returns its path."""
        path = os.path.join(self._directory(), f"run-{self._count:06}")
        self._count += 1
        pack = _HEAD.pack
        try:
            with new_private_file(path, _WRITE_BUFFER) as out:
                write = out.write
                for r in records:
                    key, value = r.key, r.value
                    write(pack(len(key), len(value), r.main, r.sub, r.create_revision, r.mod_revision,
                               r.version, r.lease, r.tombstone))  # fmt: skip
                    write(key)
                    write(value)
        except OSError as exc:
            where = os.path.dirname(self.dir or path)  # $TMPDIR: the private directory goes with the error
            raise InputError(
                f"cannot write etcd's history to a temporary file in {where}: {exc.strerror} (TMPDIR sets where)"
            ) from None
        return path

    def _read(self, path: str) -> Iterator[Record]:
        new = tuple.__new__
        unpack, size = _HEAD.unpack, _HEAD.size
        with open(path, "rb", buffering=_READ_BUFFER) as f:
            read = f.read
            while head := read(size):
                if len(head) != size:
                    raise InputError(f"temporary history file {path} was cut short")
                klen, vlen, main, sub, create, mod, version, lease, tombstone = unpack(head)
                key, value = read(klen), read(vlen)
                if len(key) != klen or len(value) != vlen:
                    raise InputError(f"temporary history file {path} was cut short")
                yield new(Record, (key, main, sub, create, mod, version, lease, value, tombstone))

    def _directory(self) -> str:
        if self.dir is None:
            self.dir = private_tempdir("snapshot-tools-history-")
        return self.dir


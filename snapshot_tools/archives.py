"""Unpacking a snapshot archive as a stream: a K3s/RKE2 one-entry ``.zip`` or a ``.gz``.

The form is told by the first bytes (:func:`form_of`), never by the name. A zip's central
directory is read first (:func:`zip_entry`: exactly one plain file entry, as K3s's
``compressSnapshot`` writes, spec k3s-rke2-bootstrap.md 6.2); then the entry is inflated from a
stream positioned at its local header (:func:`unzip_stream`), so a local file and an S3 byte
range take the same path. Gzip (:func:`gunzip_stream`) is read member by member.

Bounded: output beyond ``budget`` bytes (and, for a zip, beyond its declared size) stops the
unpack, each inflate step yields at most :data:`_PIECE` bytes (a bomb cannot fill memory), and a
truncated or damaged stream is one :class:`~snapshot_tools.errors.InputError`. Inflating runs on
the calling thread and the CRC, the writes and (when the caller passes a
:class:`~snapshot_tools.stream_trailer.TrailerHasher`) the SHA-256 trailer hash on a helper thread
(:class:`_Writer`): all release the GIL, so they overlap on two cores, and the reader of the
unpacked file need not hash it again. ISA-L's inflate (package ``isal``) is used when installed: on a
snapshot of ciphertext it is about 1.6 times as fast as zlib's.

References: APPNOTE.TXT 4.3.7 (local file header), Python ``zipfile`` (central directory),
RFC 1952 (gzip members).
"""

from __future__ import annotations

import queue
import struct
import tempfile
import threading
import zipfile
import zlib
from typing import IO, TYPE_CHECKING, Any, Protocol

from snapshot_tools.errors import InputError

try:
    from isal import isal_zlib as _fast_zlib

    _INFLATE: Any = _fast_zlib
    _FAST_ERROR: type[Exception] = _fast_zlib.error  # type: ignore[assignment]  # its stub says an instance
    _INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _FAST_ERROR)
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same bytes, slower
    _INFLATE = zlib
    _INFLATE_ERRORS = (zlib.error,)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

    from snapshot_tools.stream_trailer import TrailerHasher

__all__ = [
    "MAX_UNPACKED",
    "Readable",
    "TailFile",
    "check_size",
    "copy_stream",
    "form_of",
    "gunzip_stream",
    "unzip_stream",
    "unzip_whole",
    "zip_entry",
]

# No etcd snapshot is near this (etcd's default quota is 2 GiB, its maximum 8 GiB), so a bigger
# archive is a bomb or a mistake; 64 GiB leaves room for unusual quotas.
MAX_UNPACKED = 64 << 30
CHUNK = 1 << 20  # compressed bytes read at a time
TAIL = 128 << 10  # more than a one-entry zip's descriptor, central directory and end records
_PIECE = 4 << 20  # most bytes one inflate step may produce
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
_GZIP_MAGIC = b"\x1f\x8b"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # APPNOTE 4.3.7: signature ... name length, extra length


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def form_of(head: bytes) -> str:
    """``zip``, ``gzip`` or ``file`` from the first (at least four) bytes."""
    if head[:4] in _ZIP_MAGIC:
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    return "file"


def check_size(spec: str, size: int, budget: int, *, declared: bool) -> None:
    """Refuse ``size`` bytes beyond ``budget`` (the cap, or the free space of ``$TMPDIR``)."""
    if size <= budget:
        return
    why = f"the smaller of {_human(MAX_UNPACKED)} and the free space in {tempfile.gettempdir()}"
    if declared:
        raise InputError(f"{spec}: declares {size:,} bytes, more than the {budget:,} bytes allowed ({why})")
    raise InputError(f"{spec}: unpacks to more than the {budget:,} bytes allowed ({why})")


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


# -- zip ----------------------------------------------------------------------------------------


def zip_entry(spec: str, archive: IO[bytes]) -> zipfile.ZipInfo:
    """The one entry of the zip ``archive`` (a seekable file; only its central directory is read).

    Raises:
        InputError: not a zip, not exactly one entry, a directory or path entry, encryption, or a
            compression method other than Deflate or Stored.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise InputError(f"{spec}: damaged zip: {exc}") from None
    if len(entries) != 1:
        raise InputError(f"{spec}: the zip holds {len(entries)} entries; a snapshot zip (K3s/RKE2) holds exactly one")
    entry = entries[0]
    name = entry.filename
    if entry.is_dir():
        raise InputError(f"{spec}: the zip's entry {name!r} is a directory, not a snapshot")
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        raise InputError(f"{spec}: the zip's entry {name!r} is a path; a snapshot zip names its one file only")
    if entry.flag_bits & 0x1:
        raise InputError(f"{spec}: the zip's entry {name!r} is encrypted")
    if entry.compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
        raise InputError(f"{spec}: the zip's entry uses compression method {entry.compress_type}; K3s writes Deflate")
    return entry


def unzip_stream(
    spec: str,
    src: Readable,
    entry: zipfile.ZipInfo,
    out: IO[bytes],
    budget: int,
    *,
    hasher: TrailerHasher | None = None,
) -> None:
    """Write ``entry``'s bytes to ``out``, reading ``src`` from its local header on (and feed
    them to ``hasher``, on the writer thread).

    Raises:
        InputError: a header that disagrees with the central directory, a truncated or damaged
            deflate stream, a size or CRC-32 other than declared, more than ``budget`` bytes.
    """
    check_size(spec, entry.file_size, budget, declared=True)
    head = _read_exact(spec, src, _LOCAL_HEADER.size)
    signature, *_, name_len, extra_len = _LOCAL_HEADER.unpack(head)
    if signature != b"PK\x03\x04":
        raise InputError(f"{spec}: damaged zip: no local header where the central directory points")
    raw_name = _read_exact(spec, src, name_len)
    _read_exact(spec, src, extra_len)
    if raw_name.decode("utf-8" if entry.flag_bits & 0x800 else "cp437", "replace") != entry.orig_filename:
        raise InputError(f"{spec}: damaged zip: the local header names another file than the directory")
    decoder = _INFLATE.decompressobj(-15) if entry.compress_type == zipfile.ZIP_DEFLATED else None
    left = entry.compress_size
    size = 0
    with _Writer(spec, out, crc=True, hasher=hasher) as writer:
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise InputError(f"{spec}: damaged zip: the entry is truncated")
            left -= len(chunk)
            for piece in _inflated(spec, decoder, chunk, "zip"):
                size += len(piece)
                if size > entry.file_size:
                    declared = f"{entry.file_size:,}"
                    raise InputError(f"{spec}: damaged zip: the entry holds more than the {declared} bytes it declares")
                writer.put(piece)
        if decoder is not None and not decoder.eof:
            raise InputError(f"{spec}: damaged zip: the deflate stream ends early")
        crc = writer.finish()
    if size != entry.file_size or crc != entry.CRC:
        raise InputError(f"{spec}: damaged zip: size or CRC-32 of the entry differ from its header")


def unzip_whole(
    spec: str, src: Readable, archive_size: int, out: IO[bytes], budget: int, *, hasher: TrailerHasher | None = None
) -> None:
    """Write the one entry of the zip ``src`` read in one pass from its first byte to its last
    (an S3 object): the entry is inflated until its deflate stream ends, then the central
    directory after it is read (at most :data:`TAIL` bytes) and must describe that entry alone.

    Raises:
        InputError: as :func:`zip_entry` and :func:`unzip_stream`; also a stored (not Deflate)
            entry, whose end a stream cannot find.
    """
    head = _read_exact(spec, src, _LOCAL_HEADER.size)
    signature, _, flags, method, *_, name_len, extra_len = _LOCAL_HEADER.unpack(head)
    if signature != b"PK\x03\x04":
        raise InputError(f"{spec}: damaged zip: it does not start with a local file header")
    name = _read_exact(spec, src, name_len).decode("utf-8" if flags & 0x800 else "cp437", "replace")
    _read_exact(spec, src, extra_len)
    if flags & 0x1:
        raise InputError(f"{spec}: the zip's entry {name!r} is encrypted")
    if method != zipfile.ZIP_DEFLATED:
        raise InputError(f"{spec}: the zip's entry uses compression method {method}; K3s writes Deflate")
    decoder = _INFLATE.decompressobj(-15)
    size = 0
    with _Writer(spec, out, crc=True, hasher=hasher) as writer:
        while not decoder.eof:
            chunk = src.read(CHUNK)
            if not chunk:
                raise InputError(f"{spec}: damaged zip: the entry is truncated")
            for piece in _inflated(spec, decoder, chunk, "zip"):
                size += len(piece)
                check_size(spec, size, budget, declared=False)
                writer.put(piece)
        crc = writer.finish()
    rest = decoder.unused_data
    while len(rest) <= TAIL and (chunk := src.read(CHUNK)):
        rest += chunk
    if len(rest) > TAIL:
        raise InputError(f"{spec}: the zip holds more after its first entry than a one-entry snapshot zip does")
    entry = zip_entry(spec, TailFile(spec, archive_size, archive_size - len(rest), rest))  # type: ignore[arg-type]
    if (entry.header_offset, entry.orig_filename, entry.file_size, entry.CRC) != (0, name, size, crc):
        raise InputError(f"{spec}: damaged zip: the central directory disagrees with the entry")


class TailFile:
    """The last bytes of an archive as a seekable file of its full size, for ``zipfile`` to read
    the central directory from; reading anywhere else is refused."""

    def __init__(self, spec: str, size: int, start: int, data: bytes) -> None:
        self.spec, self.size, self.start, self.data = spec, size, start, data
        self.pos = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + offset
        if self.pos < 0:
            raise OSError("seek before the start")
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n < 0 else min(self.size, self.pos + n)
        if self.pos < self.start and end > self.pos:
            raise InputError(f"{self.spec}: the zip's central directory is not where a one-entry snapshot zip has it")
        data = self.data[self.pos - self.start : end - self.start]
        self.pos += len(data)
        return data


# -- gzip ---------------------------------------------------------------------------------------


def gunzip_stream(
    spec: str, src: Readable, out: IO[bytes], budget: int, *, hasher: TrailerHasher | None = None
) -> None:
    """Write the gzip ``src``'s bytes (every member) to ``out``.

    Raises:
        InputError: a truncated or damaged stream, data after it that is not another member (or
            zero padding, as gzip(1) allows), more than ``budget`` bytes.
    """
    decoder: Any = None
    started = False
    size = 0
    pending = b""
    with _Writer(spec, out, crc=False, hasher=hasher) as writer:
        while chunk := src.read(CHUNK):
            data = pending + chunk
            pending = b""
            while data:
                if decoder is None:  # at a member boundary
                    if len(data) < 2 and not started:
                        pending = data
                        break
                    if data.startswith(_GZIP_MAGIC):
                        decoder, started = _INFLATE.decompressobj(31), True
                    elif started and not data.strip(b"\0"):
                        data = b""  # zero padding after the last member
                        continue
                    elif len(data) < 2:
                        pending = data
                        break
                    else:
                        raise InputError(f"{spec}: damaged gzip: data after the compressed stream")
                for piece in _inflated(spec, decoder, data, "gzip"):
                    size += len(piece)
                    check_size(spec, size, budget, declared=False)
                    writer.put(piece)
                data = decoder.unused_data if decoder.eof else b""
                if decoder.eof:
                    decoder = None
        if decoder is not None or pending or not started:
            raise InputError(f"{spec}: truncated gzip (the stream ends before its end marker)")
        writer.finish()


# -- plain copy ---------------------------------------------------------------------------------


def copy_stream(
    spec: str,
    src: Readable,
    out: IO[bytes],
    budget: int,
    tick: Callable[[int], None] | None = None,
    *,
    hasher: TrailerHasher | None = None,
) -> int:
    """Copy ``src`` to ``out`` (at most ``budget`` bytes); the number of bytes."""
    size = 0
    with _Writer(spec, out, crc=False, hasher=hasher) as writer:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            check_size(spec, size, budget, declared=False)
            writer.put(chunk)
            if tick is not None:
                tick(size)
        writer.finish()
    return size


# -- helpers ------------------------------------------------------------------------------------


def _read_exact(spec: str, src: Readable, n: int) -> bytes:
    data = src.read(n) if n else b""
    if len(data) != n:
        raise InputError(f"{spec}: damaged zip: the archive is truncated")
    return data


def _inflated(spec: str, decoder: Any, data: bytes, what: str) -> Iterator[bytes]:
    """The bytes ``decoder`` makes of ``data``, at most :data:`_PIECE` at a time (``decoder``
    None: stored, as is)."""
    if decoder is None:
        yield data
        return
    try:
        piece = decoder.decompress(data, _PIECE)
        yield piece
        while decoder.unconsumed_tail and not decoder.eof:
            yield decoder.decompress(decoder.unconsumed_tail, _PIECE)
    except _INFLATE_ERRORS as exc:
        raise InputError(f"{spec}: damaged {what}: {exc}") from None


class _Writer:
    """CRC-32, the trailer hash and writes on a helper thread; at most a few pieces queued
    (bounded memory)."""

    def __init__(self, spec: str, out: IO[bytes], *, crc: bool, hasher: TrailerHasher | None = None) -> None:
        self.spec, self.out, self.want_crc, self.hasher = spec, out, crc, hasher
        self.crc = 0
        self.error: OSError | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, name="snapshot-unpack-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            if self.error is not None:
                continue  # keep draining so the producer never blocks
            try:
                if self.want_crc:
                    self.crc = _INFLATE.crc32(piece, self.crc)
                if self.hasher is not None:
                    self.hasher.update(piece)
                self.out.write(piece)
            except OSError as exc:
                self.error = exc

    def put(self, piece: bytes) -> None:
        self._raise()
        if piece:
            self._queue.put(piece)

    def finish(self) -> int:
        """Wait for every write; the CRC-32 of what was written."""
        self._stop()
        self._raise()
        return self.crc

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            where = tempfile.gettempdir()
            raise InputError(f"{self.spec}: cannot write the temporary copy in {where}: {self.error.strerror}")

    def __enter__(self) -> _Writer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()  # also on errors and signals: no thread outlives the temporary file

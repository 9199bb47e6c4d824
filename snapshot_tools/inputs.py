"""Where a SNAPSHOT argument points: a local file, a K3s/RKE2 ``.zip`` or a ``.gz``, or ``s3://``.

:func:`open_input` turns what the user typed into a local regular file the readers can map
(:class:`SnapshotInput`). A plain local file is used where it is. A zip or gzip (told by its
first bytes, never by its name) is unpacked, and an S3 object streamed, into a private 0600 file
inside a private 0700 directory from :mod:`tempfile` (``$TMPDIR``): nothing lands beside the
user's files, and the directory is removed when the block exits, whatever the reason (the CLI
turns SIGINT/SIGTERM/SIGHUP into exceptions, so signals unwind through here too).

Unpacking is bounded: a zip must hold exactly one plain file entry (K3s's layout), and no
unpacked file may exceed ``archives.MAX_UNPACKED`` (64 GiB) or the free space of the temporary
directory, whichever is smaller, by its declared size or by the bytes it really yields.

References: K3s ``compressSnapshot``/``decompressSnapshot`` (``pkg/etcd/snapshot.go``) and S3 user
metadata (``pkg/etcd/s3/s3.go``); spec ``k3s-rke2-bootstrap.md`` sections 6.1-6.4.
"""

from __future__ import annotations

import os
import shutil
import stat
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from snapshot_tools import archives
from snapshot_tools.archives import form_of, gunzip_stream, unzip_stream, zip_entry
from snapshot_tools.errors import Error, InputError, UsageError
from snapshot_tools.private_temp import new_private_file, private_tempdir
from snapshot_tools.s3_fetch import S3_PREFIX, fetch, split_s3_url
from snapshot_tools.stream_trailer import Trailer, TrailerHasher

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "S3Options",
    "SnapshotInput",
    "is_s3_url",
    "open_input",
    "opened",
    "s3_client",
]

_UNPACKED = "snapshot.db"  # the one file in the private directory


class S3Options(NamedTuple):
    """How to reach S3 (``--s3-endpoint-url``, ``--s3-region``); credentials: boto3's chain."""

    endpoint_url: str | None = None
    region: str | None = None


class SnapshotInput(NamedTuple):
    """A snapshot ready to read, and how the user named it."""

    spec: str  # as the user gave it; reports name the snapshot by this
    path: str  # a local regular file to read (the original, or a private temp file)
    form: str  # "file" | "zip" | "gzip" (detected from content)
    s3_metadata: dict[str, str]  # S3 user metadata as returned by boto3 ({} when not from S3)
    # The SHA-256 trailer verdict computed while ``path`` was unpacked (None: a plain file, used
    # where it is or downloaded, which the reader hashes itself); Snapshot.adopt_trailer takes it
    # for that size only.
    trailer: Trailer | None = None


def is_s3_url(spec: str) -> bool:
    """Whether ``spec`` names an S3 object (``s3://bucket/key``)."""
    return spec.startswith(S3_PREFIX)


def s3_client(s3: S3Options) -> Any:
    """The one place that builds the boto3 S3 client (standard credential chain)."""
    import boto3
    from botocore.config import Config

    if s3.endpoint_url is not None and not s3.endpoint_url.lower().startswith(("http://", "https://")):
        # botocore takes ftp://x as a URL and fails only when it connects (read as "unreachable").
        raise UsageError(f"S3 options: --s3-endpoint-url {s3.endpoint_url!r} is not an http(s)://HOST[:PORT] URL")

    # S3 streams without pauses: 20 s with no byte is a stalled endpoint. With botocore's retries
    # a silent endpoint is exit 4 after about 80 s (measured), not the 240 s of its 60 s default.
    config = Config(connect_timeout=10, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"})
    try:
        return boto3.session.Session().client(
            "s3", endpoint_url=s3.endpoint_url, region_name=s3.region, config=config
        )
    except ValueError as exc:  # botocore's "Invalid endpoint", an invalid region name
        raise UsageError(f"S3 options: {exc} (--s3-endpoint-url http(s)://HOST[:PORT], --s3-region NAME)") from None


@contextmanager
def open_input(spec: str, s3: S3Options | None = None, *, progress: bool = False) -> Iterator[SnapshotInput]:
    """The snapshot ``spec`` names as a local file, for the duration of the block.

    Args:
        spec: a local path, or ``s3://bucket/key``.
        s3: endpoint and region for an S3 spec (default: boto3's own).
        progress: draw a download bar on stderr (the CLI sets it when stderr is a terminal).

    Raises:
        InputError: missing or unreadable file, object, bucket or credentials; an archive that
            is damaged, truncated, not one plain entry, or too big to unpack.
        S3Unreachable: the S3 endpoint did not answer.
        UsageError: an ``s3://`` URL without a bucket or key.
    """
    workdir = _Workdir()
    try:
        if is_s3_url(spec):
            yield _download(spec, s3 or S3Options(), workdir, progress)
        else:
            form = _form_of(spec, spec)
            if form == "file":
                yield SnapshotInput(spec, spec, form, {})
            else:
                path, trailer = _unpack(spec, form, spec, workdir)
                yield SnapshotInput(spec, path, form, {}, trailer)
    except Error as exc:
        workdir.rename_in(exc, spec)
        raise
    finally:
        workdir.remove()


@contextmanager
def opened(
    snapshot: str | SnapshotInput, s3: S3Options | None = None, *, progress: bool = False
) -> Iterator[SnapshotInput]:
    """``snapshot`` as a :class:`SnapshotInput`: as it is when already opened (the CLI opens it
    once per command), else through :func:`open_input` for the block."""
    if isinstance(snapshot, SnapshotInput):
        yield snapshot
        return
    with open_input(str(snapshot), s3, progress=progress) as inp:
        yield inp


# -- temporary files ----------------------------------------------------------------------------


class _Workdir:
    """A private 0700 directory under ``$TMPDIR``, made on first use (a plain local file never
    touches ``$TMPDIR``) and removed with everything in it by :meth:`remove`."""

    def __init__(self) -> None:
        self._path: str | None = None

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = private_tempdir("snapshot-tools-")
        return self._path

    def new_file(self, name: str) -> IO[bytes]:
        """``name`` in here, created exclusively with mode 0600, never through a symlink."""
        return new_private_file(os.path.join(self.path, name))

    def budget(self) -> int:
        """Bytes one file here may take: ``archives.MAX_UNPACKED`` or the free space, the smaller."""
        return min(archives.MAX_UNPACKED, shutil.disk_usage(self.path).free)

    def rename_in(self, exc: Error, spec: str) -> None:
        """Name the snapshot in an error as the user did, never by its temporary path."""
        if self._path is not None:
            tmp = os.path.join(self._path, _UNPACKED)
            exc.args = tuple(a.replace(tmp, spec) if isinstance(a, str) else a for a in exc.args)

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


# -- local archives and S3 ----------------------------------------------------------------------


def _form_of(path: str, spec: str) -> str:
    """``zip``, ``gzip`` or ``file``, from the first bytes of a regular file (a missing file or
    another kind of node fails as the reader would, before anything is opened: a FIFO would block)."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{spec}: is a directory, not a snapshot file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{spec}: not a regular file")
        with open(path, "rb") as f:
            return form_of(f.read(4))
    except FileNotFoundError:
        raise InputError(f"{spec}: no such file") from None
    except PermissionError:
        raise InputError(f"{spec}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{spec}: cannot open: {exc.strerror}") from None


def _unpack(path: str, form: str, spec: str, workdir: _Workdir) -> tuple[str, Trailer]:
    """The unpacked file's path and its trailer verdict (hashed on the way)."""
    budget = workdir.budget()
    hasher = TrailerHasher()
    with workdir.new_file(_UNPACKED) as out, open(path, "rb") as src:
        if form == "zip":
            # The central directory from the file's tail alone: a huge one is refused unread.
            size = os.fstat(src.fileno()).st_size
            start = max(0, size - archives.TAIL)
            src.seek(start)
            entry = zip_entry(spec, archives.TailFile(spec, size, start, src.read()))  # type: ignore[arg-type]
            src.seek(entry.header_offset)
            unzip_stream(spec, src, entry, out, budget, hasher=hasher)
        else:
            gunzip_stream(spec, src, out, budget, hasher=hasher)
        return str(out.name), hasher.result()


def _download(spec: str, s3: S3Options, workdir: _Workdir, progress: bool) -> SnapshotInput:
    """The S3 object, unpacked if need be, in the private directory."""
    split_s3_url(spec)  # a malformed URL is a usage error before any client is built
    budget = workdir.budget()
    with workdir.new_file(_UNPACKED) as out:
        fetched = fetch(spec, s3_client(s3), out, budget, progress=progress)
        return SnapshotInput(spec, str(out.name), fetched.form, fetched.metadata, fetched.trailer)

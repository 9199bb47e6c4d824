"""Where a SNAPSHOT argument points: a local file, a K3s/RKE2 ``.zip`` or a ``.gz``, or ``s3://``.

:func:`open_input` turns what the user typed into a local regular file the readers can map
(:class:`SnapshotInput`). A plain local file is used where it is. A zip or gzip (told by its
first bytes, never by its name) is unpacked, and an S3 object streamed, into a private 0600 file
inside a private 0700 directory from :mod:`tempfile` (``$TMPDIR``): nothing lands beside the
user's files, and the directory is removed when the block exits, whatever the reason (the CLI
turns SIGINT/SIGTERM/SIGHUP into exceptions, so signals unwind through here too).

Unpacking is bounded: a zip must hold exactly one plain file entry (K3s's layout), and no
unpacked file may exceed :data:`MAX_UNPACKED` or the free space of the temporary directory,
whichever is smaller, by its declared size or by the bytes it really yields.

References: K3s ``compressSnapshot``/``decompressSnapshot`` (``pkg/etcd/snapshot.go``) and S3 user
metadata (``pkg/etcd/s3/s3.go``); spec ``k3s-rke2-bootstrap.md`` sections 6.1-6.4.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

from snapshot_tools.errors import Error, InputError, S3Unreachable, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "MAX_UNPACKED",
    "S3Options",
    "SnapshotInput",
    "is_s3_url",
    "open_input",
    "opened",
    "s3_client",
]

# No etcd snapshot is near this (etcd's default quota is 2 GiB, its maximum 8 GiB), so a bigger
# archive is a bomb or a mistake; 64 GiB leaves room for unusual quotas.
MAX_UNPACKED = 64 << 30
_CHUNK = 1 << 20
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
_GZIP_MAGIC = b"\x1f\x8b"
_S3_PREFIX = "s3://"
_UNPACKED = "snapshot.db"  # the names inside the private directory
_DOWNLOADED = "snapshot.download"


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


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


def is_s3_url(spec: str) -> bool:
    """Whether ``spec`` names an S3 object (``s3://bucket/key``)."""
    return spec.startswith(_S3_PREFIX)


def s3_client(s3: S3Options) -> Any:
    """The one place that builds the boto3 S3 client (standard credential chain)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.session.Session().client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region, config=config
    )


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
            local, metadata = _download(spec, s3 or S3Options(), workdir, progress)
        else:
            local, metadata = spec, {}
        form = _form_of(local, spec)
        path = local if form == "file" else _unpack(local, form, spec, workdir)
        if path != local and local != spec:
            os.unlink(local)  # the downloaded archive is no longer needed
        yield SnapshotInput(spec, path, form, metadata)
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
            try:
                self._path = tempfile.mkdtemp(prefix="snapshot-tools-")  # mode 0700
            except OSError as exc:
                raise InputError(
                    f"cannot create a temporary directory in {tempfile.gettempdir()}: {exc.strerror}"
                ) from None
        return self._path

    def new_file(self, name: str) -> IO[bytes]:
        """``name`` in here, created exclusively with mode 0600, never through a symlink."""
        extra = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        # "x": O_CREAT | O_EXCL; through open() so that the file object's name is the path
        return open(os.path.join(self.path, name), "xb", opener=lambda p, f: os.open(p, f | extra, 0o600))

    def budget(self) -> int:
        """Bytes one file here may take: :data:`MAX_UNPACKED` or the free space, the smaller."""
        return min(MAX_UNPACKED, shutil.disk_usage(self.path).free)

    def rename_in(self, exc: Error, spec: str) -> None:
        """Name the snapshot in an error as the user did, never by its temporary path."""
        if self._path is not None:
            for name in (_UNPACKED, _DOWNLOADED):
                tmp = os.path.join(self._path, name)
                exc.args = tuple(a.replace(tmp, spec) if isinstance(a, str) else a for a in exc.args)

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


# -- content detection and unpacking ------------------------------------------------------------


def _form_of(path: str, spec: str) -> str:
    """``zip``, ``gzip`` or ``file``, from the first bytes (a missing file fails as the reader would)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise InputError(f"{spec}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{spec}: is a directory, not a snapshot file") from None
    except PermissionError:
        raise InputError(f"{spec}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{spec}: cannot open: {exc.strerror}") from None
    if head in _ZIP_MAGIC:
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    return "file"


def _unpack(path: str, form: str, spec: str, workdir: _Workdir) -> str:
    budget = workdir.budget()
    with workdir.new_file(_UNPACKED) as out:
        if form == "zip":
            _unzip(path, spec, out, budget)
        else:
            _gunzip(path, spec, out, budget)
        return str(out.name)


def _unzip(path: str, spec: str, out: IO[bytes], budget: int) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            entries = zf.infolist()
            if len(entries) != 1:
                raise InputError(
                    f"{spec}: the zip holds {len(entries)} entries; a snapshot zip (K3s/RKE2) holds exactly one"
                )
            entry = entries[0]
            name = entry.filename
            if entry.is_dir():
                raise InputError(f"{spec}: the zip's entry {name!r} is a directory, not a snapshot")
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise InputError(f"{spec}: the zip's entry {name!r} is a path; a snapshot zip names its one file only")
            if entry.flag_bits & 0x1:
                raise InputError(f"{spec}: the zip's entry {name!r} is encrypted")
            _check_size(spec, entry.file_size, budget, declared=True)
            with zf.open(entry) as src:
                _copy(src, out, spec, budget)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{spec}: damaged zip: {exc}") from None
    except (zlib.error, EOFError) as exc:
        raise InputError(f"{spec}: damaged zip: {exc or 'truncated'}") from None
    except NotImplementedError as exc:
        raise InputError(f"{spec}: unsupported zip: {exc}") from None


def _gunzip(path: str, spec: str, out: IO[bytes], budget: int) -> None:
    try:
        with gzip.open(path, "rb") as src:
            _copy(src, out, spec, budget)
    except EOFError:
        raise InputError(f"{spec}: truncated gzip (the stream ends before its end marker)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"{spec}: damaged gzip: {exc}") from None


def _check_size(spec: str, size: int, budget: int, *, declared: bool) -> None:
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


def _copy(src: _Readable, out: IO[bytes], spec: str, budget: int, tick: Callable[[int], None] | None = None) -> int:
    done = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return done
        done += len(chunk)
        _check_size(spec, done, budget, declared=False)
        try:
            out.write(chunk)
        except OSError as exc:
            where = tempfile.gettempdir()
            raise InputError(f"{spec}: cannot write the temporary copy in {where}: {exc.strerror}") from None
        if tick is not None:
            tick(done)


# -- S3 -----------------------------------------------------------------------------------------


def _split_s3(spec: str) -> tuple[str, str]:
    bucket, _, key = spec[len(_S3_PREFIX) :].partition("/")
    if not bucket or not key:
        raise UsageError(f"{spec}: an S3 snapshot is s3://BUCKET/KEY")
    return bucket, key


# S3 error codes that mean "this object is not there for you": exit 3, like a missing file.
_S3_MISSING = {
    "NoSuchKey": "no such object",
    "404": "no such object",
    "NotFound": "no such object",
    "NoSuchBucket": "no such bucket",
    "InvalidBucketName": "invalid bucket name",
    "AccessDenied": "access denied",
    "403": "access denied",
    "AllAccessDisabled": "access denied",
    "InvalidAccessKeyId": "bad credentials (the access key id is unknown)",
    "SignatureDoesNotMatch": "bad credentials (the secret key does not match)",
    "ExpiredToken": "bad credentials (the session token has expired)",
    "InvalidToken": "bad credentials (invalid session token)",
    "TokenRefreshRequired": "bad credentials (the session token has expired)",
}


def _download(spec: str, s3: S3Options, workdir: _Workdir, progress: bool) -> tuple[str, dict[str, str]]:
    """Stream the object to a private file; its path and user metadata."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    bucket, key = _split_s3(spec)
    try:
        obj = s3_client(s3).get_object(Bucket=bucket, Key=key)
        size = int(obj.get("ContentLength") or 0)
        budget = workdir.budget()
        _check_size(spec, size, budget, declared=True)
        with workdir.new_file(_DOWNLOADED) as out, _Bar(spec, size, progress) as bar:
            body = obj["Body"]
            try:
                done = _copy(body, out, spec, budget, bar.tick)
            finally:
                body.close()
            name = str(out.name)
        if done != size:
            raise S3Unreachable(f"{spec}: the download ended after {done:,} of {size:,} bytes")
        return name, dict(obj.get("Metadata") or {})
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        if code in _S3_MISSING:
            raise InputError(f"{spec}: {_S3_MISSING[code]}") from None
        raise S3Unreachable(f"{spec}: S3 error {code}: {err.get('Message', '')}".rstrip(": ")) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise InputError(
            f"{spec}: no usable AWS credentials (environment, ~/.aws/credentials, AWS_PROFILE, instance role)"
        ) from None
    except BotoCoreError as exc:
        raise S3Unreachable(f"{spec}: S3 could not be reached: {exc}") from None


class _Bar:
    """A download bar on stderr, only when asked (the CLI asks when stderr is a terminal)."""

    def __init__(self, spec: str, size: int, enabled: bool) -> None:
        self.spec, self.size, self.enabled = spec, size, enabled
        self.tick: Callable[[int], None] | None = self._draw if enabled else None
        self._last = 0.0

    def _draw(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done < self.size:
            return
        self._last = now
        share = done / self.size if self.size else 1.0
        filled = int(share * 30)
        sys.stderr.write(f"\rdownloading [{'#' * filled}{'.' * (30 - filled)}] {share:4.0%} {done >> 20} MiB")
        sys.stderr.flush()

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

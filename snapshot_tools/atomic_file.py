"""A new output file published atomically: written under a temporary name beside the target.

The temporary file is created with mode 0600 (``O_EXCL``, never following a symlink) in the
target's directory, so the final rename stays on one filesystem. It is synced before it is
published and the directory is synced after; any exception (KeyboardInterrupt included) removes
it. A SIGKILL can leave only the temporary file, whose name ``.NAME.tmp-PID-RANDOM`` says what
it is, never a partial file at the target.

Without ``force`` the target is published with ``link`` (fails if something appeared there in
the meantime), then the temporary name is removed; with ``force`` it is ``os.replace``. Only a
regular file is ever replaced, never a symlink, device, FIFO or socket, and never an input
(checked on entry and again just before publishing).

References: etcd ``client/v3/snapshot/v3_snapshot.go`` (``SaveWithVersion``: ``.part`` file,
fsync, rename, mode 0600); bbolt ``cmd/bbolt`` ``surgery`` (separate output path).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Self

from snapshot_tools.errors import OutputError

if TYPE_CHECKING:
    import io
    from collections.abc import Iterable
    from types import TracebackType

TEMP_MARK = ".tmp-"


def temp_name(target: Path) -> str:
    """The temporary file name for ``target``: ``.NAME.tmp-PID-RANDOM``."""
    return f".{target.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def check_target(target: str | os.PathLike[str], *, force: bool, inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Refuse a target that cannot or must not be written; return it as a ``Path``.

    Only a regular file is ever replaced (with ``force``). The target itself is examined with
    ``lstat``: a symlink is refused whatever it points to, as are devices, FIFOs and sockets
    (``--force`` at ``/dev/stdout`` or ``/dev/null`` must not put a file of secrets there).

    Raises:
        OutputError: the target is one of ``inputs`` (same path after resolving symlinks, or
            the same file), is not a regular file, is in a missing directory, or exists
            without ``force``.
    """
    path = Path(target)
    if not path.name or path.name in (".", ".."):
        raise OutputError(f"{path}: not a file name")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: directory {parent} does not exist")
    try:
        lst: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        lst = None
    except OSError as exc:
        raise OutputError(f"{path}: cannot check the output path: {exc.strerror}") from None
    _refuse_inputs(path, inputs)
    if lst is not None:
        if not stat.S_ISREG(lst.st_mode):
            raise OutputError(f"{path}: {_kind(lst.st_mode)}, not a regular file; write the output to a new path")
        if not force:
            raise OutputError(f"{path}: already exists (use --force to replace it)")
    return path


def _refuse_inputs(path: Path, inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse ``path`` when it names an input: by resolved path, or (existing) by device and inode."""
    real = os.path.realpath(path)
    try:
        st = path.stat()  # through a symlink: the file a write would have hit
        ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        ident = None
    for src in inputs:
        same = os.path.realpath(src) == real
        if not same and ident is not None:
            try:
                sst = os.stat(src)
            except OSError:
                continue
            same = (sst.st_dev, sst.st_ino) == ident
        if same:
            raise OutputError(f"{path}: the output is the input file {os.fspath(src)}; write to another path")


_KINDS = (
    (stat.S_ISLNK, "is a symbolic link"),
    (stat.S_ISDIR, "is a directory"),
    (stat.S_ISCHR, "is a character device"),
    (stat.S_ISBLK, "is a block device"),
    (stat.S_ISFIFO, "is a FIFO"),
    (stat.S_ISSOCK, "is a socket"),
)


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "is a special file")


class AtomicFile:
    """Write ``target`` atomically. Use as a context manager; call :meth:`commit` to publish.

    ``file`` (readable and writable, unbuffered) and ``temp_path`` are set on entry. Leaving the
    block without a commit, or with an exception, removes the temporary file.

    Raises (on entry):
        OutputError: as :func:`check_target`, or the temporary file cannot be created.
    """

    def __init__(
        self, target: str | os.PathLike[str], *, force: bool = False, inputs: Iterable[str | os.PathLike[str]] = ()
    ) -> None:
        self.force = force
        self.inputs = list(inputs)
        self.target = check_target(target, force=force, inputs=self.inputs)
        self.temp_path = self.target.parent / temp_name(self.target)
        self.file: io.FileIO | None = None
        self.published = False

    def __enter__(self) -> Self:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.temp_path, flags, 0o600)
        except OSError as exc:
            raise OutputError(f"{self.target}: cannot create a temporary file beside it: {exc.strerror}") from None
        except BaseException:  # a signal raised just after the create: the file is ours (O_EXCL)
            self._remove_temp()
            raise
        try:
            os.fchmod(fd, 0o600)  # whatever the umask: the file will hold secrets
            self.file = open(fd, "r+b", buffering=0)  # closed by sync() or __exit__
        except BaseException:
            os.close(fd)
            self._remove_temp()
            raise
        return self

    def sync(self) -> None:
        """Flush, fsync and close the temporary file (it can then be re-opened to verify)."""
        f = self.file
        if f is None:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            raise OutputError(f"{self.target}: cannot write the output: {exc.strerror}") from None
        finally:
            self.file = None
            f.close()

    def commit(self) -> Path:
        """Sync, move the temporary file to the target, sync the directory; the target path.

        Raises:
            OutputError: the target appeared meanwhile (without ``force``), or it became an
                input or something other than a regular file, or the rename fails.
        """
        self.sync()
        # Checked again: the target may have been created (or swapped) while we wrote.
        check_target(self.target, force=self.force, inputs=self.inputs)
        try:
            if self.force:
                os.replace(self.temp_path, self.target)
            else:
                self._link()
            self.published = True
        except OSError as exc:
            raise OutputError(f"{self.target}: cannot move the output into place: {exc.strerror}") from None
        self._remove_temp()  # the link() case leaves the temporary name
        _sync_dir(self.target.parent)
        return self.target

    def _link(self) -> None:
        try:
            os.link(self.temp_path, self.target, follow_symlinks=False)
        except FileExistsError:
            raise OutputError(f"{self.target}: already exists (use --force to replace it)") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK):
                raise
            # No hard links on this filesystem: the existence check above must do.
            os.replace(self.temp_path, self.target)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.file is not None:
            f, self.file = self.file, None
            f.close()
        if not self.published:
            self._remove_temp()

    def _remove_temp(self) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self.temp_path)


def _sync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not every platform can open a directory; the rename itself is done
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

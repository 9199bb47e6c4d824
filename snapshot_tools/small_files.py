"""Reading a small input file whole, safely: only a regular file, and only up to a limit.

``Path.read_bytes()`` on a FIFO waits for a writer forever, and on ``/dev/zero`` (or a symlink to
it) reads until memory runs out; a file another user or a crafted directory can put in place must
not do either.
"""

from __future__ import annotations

import os
import stat

from snapshot_tools.errors import InputError

__all__ = ["read_regular"]


def read_regular(path: str | os.PathLike[str], limit: int, *, label: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), at most ``limit`` of them.

    Args:
        path: the file.
        limit: the largest size accepted, in bytes.
        label: how messages name the file (default: the path).

    Raises:
        InputError: missing, a directory, a FIFO, device or socket, larger than ``limit``, or
            unreadable; one line naming the file.
    """
    shown = label or os.fspath(path)
    try:
        _require_regular(os.stat(path).st_mode, shown)  # before opening: opening a device can act
        # O_NONBLOCK: should a FIFO be swapped in, opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{shown}: no such file") from None
    except OSError as exc:
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    try:
        _require_regular(os.fstat(fd).st_mode, shown)  # what was opened, not only what was named
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise InputError(f"{shown}: larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _require_regular(mode: int, shown: str) -> None:
    if stat.S_ISDIR(mode):
        raise InputError(f"{shown}: is a directory, not a regular file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{shown}: not a regular file")

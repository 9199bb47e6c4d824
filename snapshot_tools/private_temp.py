"""Private temporary files: a 0700 directory under ``$TMPDIR`` and 0600 files made in it.

Unpacked snapshots and spilled etcd history hold secrets (still encrypted, but whole): nobody
else may read them, and a name planted in advance (a symlink) must not redirect a write.
"""

from __future__ import annotations

import os
import tempfile
from typing import IO

from snapshot_tools.errors import InputError

__all__ = ["new_private_file", "private_tempdir"]


def private_tempdir(prefix: str) -> str:
    """A new directory under ``$TMPDIR``, mode 0700, ours alone.

    Raises:
        InputError: it cannot be made (one line naming ``$TMPDIR``).
    """
    try:
        return tempfile.mkdtemp(prefix=prefix)  # mode 0700
    except OSError as exc:
        raise InputError(f"cannot create a temporary directory in {tempfile.gettempdir()}: {exc.strerror}") from None


def new_private_file(path: str, buffering: int = -1) -> IO[bytes]:
    """``path`` created exclusively with mode 0600, never through a symlink, open for writing."""
    extra = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    # "x": O_CREAT | O_EXCL; through open() so that the file object's name is the path
    return open(path, "xb", buffering=buffering, opener=lambda p, f: os.open(p, f | extra, 0o600))

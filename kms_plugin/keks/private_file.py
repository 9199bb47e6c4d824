"""Write a private file atomically: temp file beside it, mode 0600, fsync, rename or link.

With ``replace=False`` the final step is ``link()``, which fails when anything (a file, a
symlink, a FIFO) is already at the path: an output is never clobbered and never written through
a symlink. With ``replace=True`` ``rename()`` replaces the directory entry itself (a symlink at
the path is replaced, its target is not touched). Either way a reader sees the old file or the
whole new one, never a part.

References: ``snapshot_tools/atomic_file.py`` (the same publish step for snapshots).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kms_plugin.errors import ConfigError


def write_private(
    path: str | os.PathLike[str], data: bytes, *, replace: bool, what: str, exists: str = "refusing to overwrite it"
) -> None:
    """Write ``data`` to ``path`` (0600) atomically; ``what`` names the file in messages,
    ``exists`` says what to do when the file is already there.

    Raises:
        ConfigError: ``path`` exists and ``replace`` is false, or the write fails.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ConfigError(f"{what} {target}: cannot create a file in {directory}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            # link() fails if the target appeared meanwhile: never clobber.
            os.link(tmp, target)
            os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"{what} {target}: already exists; {exists}") from None
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"{what} {target}: write failed: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Files as the safety tests see them: content hashes, temp-file leftovers, nodes that are not
regular files.

Real nodes in a temporary directory: a character device (the same numbers as ``/dev/null``,
made with ``mknod``, so root only), a FIFO, a symlink to a regular file or a directory and a
dangling symlink.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.atomic_file import TEMP_MARK

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable
    from pathlib import Path

NODES = ("chardev", "fifo", "symlink-to-file", "dangling-symlink", "symlink-to-dir")


def sha256(path: Path) -> str:
    """The file's SHA-256 (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Names of the temporary files an atomic write left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if TEMP_MARK in p.name)


def wait_for_temp(directory: Path, child: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until ``child`` has a temporary output file in ``directory`` (it is mid-write)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if leftovers(directory):
            return
        if child.poll() is not None:
            err = child.stderr.read().decode(errors="replace") if child.stderr else ""
            raise AssertionError(f"finished before its temporary file was seen: rc {child.returncode}: {err}")
        time.sleep(0.002)
    raise AssertionError("no temporary file appeared")


def interrupt_mid_write(
    child: subprocess.Popen[bytes], directory: Path, sig: int, delay: float = 0.0
) -> tuple[bytes, bytes]:
    """Send ``sig`` to ``child`` ``delay`` s after its temporary output appears in ``directory``;
    return its stdout and stderr (the child is killed if it outlives the test)."""
    try:
        wait_for_temp(directory, child)
        time.sleep(delay)
        child.send_signal(sig)
        return child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def make_node(kind: str, path: Path) -> Callable[[], object]:
    """Create a node of ``kind`` (one of :data:`NODES`) at ``path``; return a function giving
    what identifies it (to show it was left alone)."""
    if kind == "chardev":
        if os.geteuid() != 0:
            pytest.skip("mknod of a character device needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        return lambda: (stat.S_IFMT(os.lstat(path).st_mode), os.lstat(path).st_rdev)
    if kind == "fifo":
        os.mkfifo(path)
        return lambda: stat.S_IFMT(os.lstat(path).st_mode)
    if kind == "symlink-to-file":
        real = path.parent / "real-file"
        real.write_bytes(b"precious")
        path.symlink_to(real)
        return lambda: (os.readlink(path), real.read_bytes(), stat.S_IFMT(os.lstat(real).st_mode))
    if kind == "symlink-to-dir":
        (path.parent / "a-dir").mkdir()
        path.symlink_to(path.parent / "a-dir")
        return lambda: (os.readlink(path), sorted(os.listdir(path.parent / "a-dir")))
    assert kind == "dangling-symlink"
    path.symlink_to(path.parent / "nowhere")
    return lambda: (os.readlink(path), os.path.lexists(path.parent / "nowhere"))

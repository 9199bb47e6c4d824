"""What the drill tests look at: etcd processes by their command line, the private TMPDIR a
drill's scratch directory goes to, an S3 bucket of K3s-style snapshot names, and an
``--etcd-bin`` directory whose ``etcd`` also starts a background child in its process group
(the real etcd then runs, by ``exec``, in the same process).
"""

from __future__ import annotations

import os
import stat
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from snapshot_tools.snapshot import Snapshot

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from tests.support.etcd import EtcdBinaries


def parse_junit(path: Path) -> ET.Element:
    """The root of a JUnit file the drill wrote (our own output, so the stdlib parser is fine)."""
    return ET.parse(path).getroot()  # noqa: S314 - a file this test had written


def live_processes(text: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\x00", b" ").decode(errors="replace")
            if text in cmdline and alive(int(entry)):
                found.append(int(entry))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent that is not ours counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def live_key_count(path: Path) -> int:
    """Live keys of a snapshot, counted by replaying every record in stored (revision) order:
    another path through the file than the latest view the drill compares with."""
    live: set[bytes] = set()
    with Snapshot.open(path) as snap:
        for rec in snap.records():
            if rec.tombstone:
                live.discard(rec.key)
            else:
                live.add(rec.key)
    return len(live)


def wrapper_bin(directory: Path, bins: EtcdBinaries, pidfile: Path) -> Path:
    """An ``--etcd-bin`` directory: ``etcd`` starts ``sleep 600`` in the background (its pid in
    ``pidfile``), then execs the real etcd; ``etcdutl`` is the real one."""
    directory.mkdir()
    assert bins.etcdutl is not None
    (directory / "etcdutl").symlink_to(bins.etcdutl)
    script = directory / "etcd"
    script.write_text(f'#!/bin/sh\nsleep 600 &\necho $! > "{pidfile}"\nexec "{bins.etcd}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return directory


def wait_for_process(text: str, child: subprocess.Popen[bytes], timeout: float = 60.0) -> list[int]:
    """Wait until a process whose command line contains ``text`` runs; its pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = live_processes(text)
        if pids:
            return pids
        if child.poll() is not None:
            err = child.stderr.read().decode(errors="replace") if child.stderr else ""
            raise AssertionError(f"the drill ended before etcd was seen: rc {child.returncode}: {err}")
        time.sleep(0.005)
    raise AssertionError(f"no process with {text!r} appeared")


def put_objects(
    client: Any, bucket: str, keys: dict[str, Path | bytes], metadata: dict[str, str] | None = None
) -> None:
    """Upload each key's file (or bytes) to ``bucket``."""
    for key, body in keys.items():
        data = body if isinstance(body, bytes) else body.read_bytes()
        client.put_object(Bucket=bucket, Key=key, Body=data, Metadata=metadata or {})

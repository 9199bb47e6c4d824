"""``snapshot-tools`` child processes whose live-etcd history spills in tiny runs, and a way to
catch one while it spills (tests of ``--etcd-endpoint --all-revisions`` temporary files)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

HISTORY_DIR_PREFIX = "snapshot-tools-history-"  # snapshot_tools.record_spill's mkdtemp prefix


def small_runs_process(
    *argv: str | os.PathLike[str], run_bytes: int, tmpdir: Path, max_file_bytes: int | None = None
) -> subprocess.Popen[str]:
    """``snapshot-tools ARGV`` with ``live_etcd.RUN_BYTES = run_bytes`` and ``TMPDIR=tmpdir``;
    with ``max_file_bytes``, a file it writes past that size fails (RLIMIT_FSIZE: EFBIG, as a
    full disk fails with ENOSPC)."""
    limit = ""
    if max_file_bytes is not None:
        limit = (
            "import resource, signal\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes}))\n"
        )
    code = (
        f"{limit}import snapshot_tools.live_etcd as live\n"
        f"live.RUN_BYTES = {run_bytes}\n"
        "from snapshot_tools.cli import main\n"
        "main()\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *(os.fspath(a) for a in argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": os.fspath(tmpdir)},
    )


def history_dirs(tmpdir: Path) -> list[Path]:
    return [p for p in tmpdir.iterdir() if p.name.startswith(HISTORY_DIR_PREFIX)]


def stop_when_spilling(proc: subprocess.Popen[str], tmpdir: Path, timeout: float = 30) -> Path:
    """SIGSTOP ``proc`` as soon as a history run file exists in ``tmpdir``; returns its directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in history_dirs(tmpdir):
            try:
                if any(d.iterdir()):
                    proc.send_signal(signal.SIGSTOP)
                    return d
            except FileNotFoundError:
                pass
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before any history run was written: {err}")
        time.sleep(0.0005)
    proc.kill()
    raise AssertionError("no history run file appeared")

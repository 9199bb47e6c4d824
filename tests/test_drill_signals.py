"""A drill stopped mid-restore (a real subprocess, real etcd) leaves nothing behind: etcd's whole
process group is gone, the scratch directory is removed, and the exit status is 128 + N.

The ``--etcd-bin`` directory's ``etcd`` (tests/support/drill.py) starts a background ``sleep`` in
its process group before it execs the real etcd: stopping only the etcd pid would leave it.
Fixture: tests/fixtures/apiserver-v1.36/b-aescbc (a real kube-apiserver's snapshot).
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.support.cli import SNAPSHOT_TOOLS
from tests.support.drill import alive, live_processes, wait_for_process, wrapper_bin
from tests.support.fixtures import config_path, snapshot_path

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.etcd import EtcdBinaries

pytestmark = pytest.mark.etcd

CASE = "b-aescbc"


def _drill(tmp_path: Path, bins: EtcdBinaries) -> tuple[list[str], dict[str, str], Path, Path]:
    root = tmp_path / "tmpdir"
    root.mkdir()
    pidfile = tmp_path / "child.pid"
    bin_dir = wrapper_bin(tmp_path / "bin", bins, pidfile)
    argv = [*SNAPSHOT_TOOLS, "drill", str(snapshot_path(CASE)), "-c", str(config_path(CASE))]
    argv += ["--etcd-bin", str(bin_dir)]
    return argv, {**os.environ, "TMPDIR": str(root)}, root, pidfile


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_mid_restore_leaves_nothing(sig: int, tmp_path: Path, etcd_bins: EtcdBinaries) -> None:
    argv, env, root, pidfile = _drill(tmp_path, etcd_bins)
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        etcd_pids = wait_for_process(f"--data-dir {root}", child)
        [scratch] = list(root.iterdir())  # the restore's private scratch directory
        assert scratch.stat().st_mode & 0o777 == 0o700
        child.send_signal(sig)
        _out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + sig, err
    assert b"interrupted" in err and b"Traceback" not in err
    assert list(root.iterdir()) == []
    assert live_processes(str(root)) == []
    assert not any(alive(pid) for pid in etcd_pids)
    if pidfile.exists() and pidfile.read_text().strip():  # the wrapper got as far as its child
        assert not alive(int(pidfile.read_text()))


def test_normal_end_stops_the_whole_group(tmp_path: Path, etcd_bins: EtcdBinaries) -> None:
    argv, env, root, pidfile = _drill(tmp_path, etcd_bins)
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"restore    passed" in proc.stdout
    sleeper = int(pidfile.read_text())
    assert not alive(sleeper)
    assert list(root.iterdir()) == []
    assert live_processes(str(root)) == []

"""SIGINT, SIGTERM and SIGHUP while a command reads an unpacked or downloaded snapshot: the
private temporary copy is removed and the command exits 128 + N with one line (issue 12 item 1).

Real processes and real signals; $TMPDIR points at a directory of the test, empty afterwards.
Provenance: a 300,000-Secret aescbc snapshot written by tests/support/snapshots.py (via
tests/support/inputs.py), zipped as K3s does, so ``check`` is still running seconds after the
copy is complete; for S3, the session's moto server behind a proxy that stops half-way through
the object.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.support.cli import SNAPSHOT_TOOLS
from tests.support.fixtures import EXAMPLE_CONFIG, EXAMPLE_KEY1_B64, ROOT
from tests.support.inputs import StallingProxy, big_aescbc_snapshot, k3s_zip, temp_leftovers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.support.inputs import MotoS3

BIG_N = 300_000


@pytest.fixture(scope="module")
def big_zip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The zipped big snapshot and the size of the snapshot inside."""
    d = tmp_path_factory.mktemp("big")
    plain = big_aescbc_snapshot(d / "big.db", BIG_N, base64.b64decode(EXAMPLE_KEY1_B64))
    size = plain.stat().st_size
    packed = k3s_zip(plain, d)
    plain.unlink()
    return packed, size


def _start(args: list[str], tmpdir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*SNAPSHOT_TOOLS, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {}), "TMPDIR": str(tmpdir)},
    )


def _wait(child: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None:
            err = child.stderr.read().decode(errors="replace") if child.stderr else ""
            raise AssertionError(f"finished before the signal: rc {child.returncode}: {err}")
        if time.monotonic() > deadline:
            raise AssertionError("the temporary copy never appeared")
        time.sleep(0.005)


def _copies(tmpdir: Path, name: str) -> list[Path]:
    return list(tmpdir.glob(f"snapshot-tools-*/{name}"))


def _signalled(child: subprocess.Popen[bytes], sig: int) -> tuple[bytes, bytes]:
    try:
        child.send_signal(sig)
        return child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
SAID = {signal.SIGINT: "interrupted", signal.SIGTERM: "interrupted (SIGTERM)", signal.SIGHUP: "interrupted (SIGHUP)"}


# check with each signal; status and extract with one each (the same code path unwinds).
RUNS = [("check", sig, rc) for sig, rc in SIGNALS] + [("status", signal.SIGTERM, 143), ("extract", signal.SIGINT, 130)]


@pytest.mark.parametrize(("command", "sig", "rc"), RUNS)
def test_a_signal_while_reading_an_unpacked_zip_removes_the_copy(
    command: str, sig: int, rc: int, big_zip: tuple[Path, int], tmp_path: Path
) -> None:
    packed, size = big_zip
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    args = [command, str(packed)] + (["-c", str(EXAMPLE_CONFIG)] if command != "status" else [])
    child = _start(args, tmpdir)

    def unpacked() -> bool:  # the whole snapshot is out: the command is reading it now
        found = _copies(tmpdir, "snapshot.db")
        return bool(found) and found[0].stat().st_size == size

    _wait(child, unpacked)
    _, err = _signalled(child, sig)
    assert child.returncode == rc, err
    assert err.decode().splitlines() == [f"snapshot-tools: error: {SAID[sig]}"]
    assert temp_leftovers(tmpdir) == []


@pytest.fixture
def stalling(moto_s3: MotoS3) -> Iterator[StallingProxy]:
    proxy = StallingProxy(moto_s3.url)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.parametrize(("sig", "rc"), SIGNALS)
def test_a_signal_mid_download_removes_the_partial_object(
    sig: int, rc: int, big_zip: tuple[Path, int], moto_s3: MotoS3, stalling: StallingProxy, tmp_path: Path
) -> None:
    packed, _ = big_zip
    url = moto_s3.put("signals", "etcd-snapshot-node1-1700000000.zip", packed)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    child = _start(["check", url, "-c", str(EXAMPLE_CONFIG), "--s3-endpoint-url", stalling.url], tmpdir)
    _wait(child, lambda: any(p.stat().st_size > 0 for p in _copies(tmpdir, "snapshot.db")))
    _, err = _signalled(child, sig)
    assert child.returncode == rc, err
    assert err.decode().splitlines() == [f"snapshot-tools: error: {SAID[sig]}"]
    assert temp_leftovers(tmpdir) == []

"""The drill's restore: ``etcdutl snapshot restore`` into a private scratch directory, etcd
started on it at 127.0.0.1, and the scratch directory and every etcd process gone afterwards.

:func:`restored_etcd` owns the whole lifecycle. etcd runs in a process group of its own (a new
session), so stopping it means SIGKILL to the whole group and waiting for the leader: nothing
survives, not even a child etcd might have forked. The ``finally`` runs for a Python exception
and for the ``Interrupt`` that ``kms_plugin.stop_signals.stop_signals_raise`` turns
SIGINT/SIGTERM/SIGHUP into. The scratch
directory comes from ``tempfile.mkdtemp`` (mode 0700, under ``$TMPDIR``): a restored keyspace
holds every Secret of the cluster.

References: etcd ``etcdutl/snapshot/v3_snapshot.go`` (``Restore``), spec/etcd-snapshot-format.md
1.5; tests/support/etcd.py is the test harness this mirrors for the product.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from kms_plugin.stop_signals import signals_held
from snapshot_tools.errors import RestoreFailed

if TYPE_CHECKING:
    from collections.abc import Iterator

    from snapshot_tools.etcd_bins import EtcdTools

__all__ = ["HOST", "RunningEtcd", "restored_etcd"]

HOST = "127.0.0.1"
MEMBER = "drill"
RESTORE_TIMEOUT = 3600.0  # etcdutl copies and hashes the file: minutes for the largest (8 GiB)
_PORT_RETRIES = 3  # a free port can be taken between the probe and etcd's bind


class RunningEtcd(NamedTuple):
    """An etcd serving a restored snapshot; ``pgid`` is its process group (== its pid)."""

    endpoint: str  # http://127.0.0.1:PORT
    client_port: int
    pid: int
    scratch: Path
    restore_seconds: float
    start_seconds: float


def clean_env() -> dict[str, str]:
    """This environment without ETCD_*/ETCDCTL_* variables: etcd reads them as flags."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound to port 0 together, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def restored_etcd(
    snapshot: str | os.PathLike[str],
    tools: EtcdTools,
    *,
    skip_hash_check: bool = False,
    startup_timeout: float = 300.0,
) -> Iterator[RunningEtcd]:
    """Restore ``snapshot`` into a new scratch directory and serve it; remove both on exit.

    Raises:
        RestoreFailed: etcdutl refused the snapshot, or etcd exited or did not get healthy.
    """
    try:
        scratch = Path(tempfile.mkdtemp(prefix="snapshot-tools-drill-"))  # 0700, ours alone
    except OSError as exc:
        raise RestoreFailed(f"cannot create a scratch directory in {tempfile.gettempdir()}: {exc.strerror}") from None
    proc: subprocess.Popen[bytes] | None = None
    try:
        began = time.monotonic()
        data = scratch / "data"
        _restore(tools, snapshot, data, skip_hash_check=skip_hash_check)
        restored = time.monotonic()
        for attempt in range(_PORT_RETRIES):
            client, peer = free_ports(2)
            # etcd holds its own log descriptor. A stop signal waits until its handle is stored,
            # so the clean-up below always knows the process it must stop.
            with open(scratch / "etcd.log", "ab") as log, signals_held():
                proc = _start(tools, data, client, peer, log)
            try:
                _wait_healthy(proc, client, scratch, startup_timeout)
                break
            except RestoreFailed:
                _stop_group(proc)
                proc = None
                if attempt + 1 == _PORT_RETRIES or "address already in use" not in _log_tail(scratch):
                    raise
        assert proc is not None
        yield RunningEtcd(
            f"http://{HOST}:{client}", client, proc.pid, scratch, restored - began, time.monotonic() - restored
        )
    finally:
        if proc is not None:
            _stop_group(proc)
        shutil.rmtree(scratch, ignore_errors=True)


def _restore(tools: EtcdTools, snapshot: str | os.PathLike[str], data: Path, *, skip_hash_check: bool) -> None:
    peer = f"http://{HOST}:2380"  # only recorded in the membership; etcd listens on fresh ports
    cmd = [
        os.fspath(tools.etcdutl), "snapshot", "restore", os.fspath(snapshot),
        "--data-dir", os.fspath(data),
        "--name", MEMBER,
        "--initial-cluster", f"{MEMBER}={peer}",
        "--initial-advertise-peer-urls", peer,
    ]  # fmt: skip
    if skip_hash_check:
        cmd.append("--skip-hash-check")
    # Its own session too: a Ctrl-C at the terminal reaches us, and we stop it. A stop signal
    # waits until the handle is stored (subprocess.run could lose it inside Popen).
    try:
        with signals_held():
            proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), start_new_session=True
            )
    except OSError as exc:
        raise RestoreFailed(f"cannot run {tools.etcdutl}: {exc.strerror}") from None
    with proc:
        try:
            stdout, stderr = proc.communicate(timeout=RESTORE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RestoreFailed(f"etcdutl snapshot restore did not finish within {RESTORE_TIMEOUT:.0f}s") from None
        except BaseException:
            proc.kill()  # a stop signal: etcdutl must not outlive us
            raise
    if proc.returncode != 0:
        out = (stderr or stdout).decode("utf-8", "replace").strip().splitlines()
        why = _etcd_error(out) or f"exit status {proc.returncode}, no message"
        raise RestoreFailed(f"etcdutl snapshot restore refused the snapshot: {why}")


def _etcd_error(lines: list[str]) -> str | None:
    """The message of etcd's last log line (its zap JSON ``msg``/``error``, or the plain text)."""
    for line in reversed(lines):
        try:
            doc = json.loads(line)
        except ValueError:
            if line.strip():
                return line.strip()[-300:]
            continue
        if isinstance(doc, dict):
            parts = [str(doc[k]) for k in ("msg", "error") if doc.get(k)]
            if parts:
                return ": ".join(parts)[-300:]
    return None


def _start(tools: EtcdTools, data: Path, client: int, peer: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    client_url, peer_url = f"http://{HOST}:{client}", f"http://{HOST}:{peer}"
    cmd = [
        os.fspath(tools.etcd),
        "--name", MEMBER,
        "--data-dir", os.fspath(data),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"{MEMBER}={peer_url}",
        "--quota-backend-bytes", str(8 << 30),  # etcd's maximum: any restorable snapshot fits
        "--log-level", "warn",
    ]  # fmt: skip
    # A new session: its own process group, so the whole group can be stopped.
    try:
        return subprocess.Popen(  # noqa: S603 - our own argv, no shell
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True
        )
    except OSError as exc:
        raise RestoreFailed(f"cannot run {tools.etcd}: {exc.strerror}") from None


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, scratch: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{HOST}:{port}/health"
    while True:
        rc = proc.poll()
        if rc is not None:
            raise RestoreFailed(f"etcd exited with status {rc} on the restored data: {_log_tail(scratch)}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError, ValueError),
            urllib.request.urlopen(url, timeout=2) as resp,
        ):
            if json.loads(resp.read()).get("health") in ("true", True):
                return
        if time.monotonic() > deadline:
            raise RestoreFailed(f"etcd did not become healthy within {timeout:.0f}s: {_log_tail(scratch)}")
        time.sleep(0.05)


def _log_tail(scratch: Path) -> str:
    try:
        lines = (scratch / "etcd.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no etcd log"
    return _etcd_error(lines) or "empty etcd log"


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL etcd's whole process group and reap the leader.

    No SIGTERM first: the data directory is thrown away, so a graceful shutdown (etcd's takes a
    few hundred ms) buys nothing, and SIGKILL cannot be ignored or delayed.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

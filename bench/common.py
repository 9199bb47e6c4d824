"""What the benchmarks share: the cache, data sets loaded through a real etcd, measured CLI runs.

Only the standard library is imported here at module level: the benchmarks' child processes
import this module too, and their peak RSS is part of the figures.

* :data:`CACHE`: ``bench/.cache/`` (ignored by git), where built snapshots are kept;
* :func:`load_through_etcd`: put a stream of (key, value) into a fresh etcd in transactions and
  save a snapshot atomically, with a ``.json`` of build facts beside it;
* :func:`run_measured`: one ``snapshot-tools`` run in a fresh process, timed, with its peak RSS;
* :func:`run_child`: run a benchmark module's hidden child mode and read its JSON figures;
* :func:`load_avg`, :func:`verdict`, :func:`machine`, :func:`print_profile`: for the printed
  figures.

Run the benchmarks from the repository root: ``python -m bench.check`` and so on.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import cProfile
    from collections.abc import Iterable

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"

# argv prefixes that run the console scripts' code with this interpreter.
SNAPSHOT_TOOLS = [sys.executable, "-c", "from snapshot_tools.cli import main; main()"]
KMS_PLUGIN = [sys.executable, "-c", "from kms_plugin.cli import main; main()"]

# The child reports its own VmHWM (peak RSS of its image after exec) on a pipe: ru_maxrss from
# wait4 would also count the parent's RSS the child inherited through vfork/fork before exec.
_MEASURED_CHILD = (
    "import atexit, os\n"
    "def _hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            os.write(int(os.environ['BENCH_HWM_FD']), line.split()[1].encode())\n"
    "atexit.register(_hwm)\n"
    "from snapshot_tools.cli import main\n"
    "main()\n"
)

# etcd 3.5 defaults are 1.5 MiB per request and 128 ops per txn; the loads raise both and stay below.
BATCH_BYTES = 4 * 1024 * 1024
BATCH_OPS = 256


# -- figures -------------------------------------------------------------------------------------


def load_avg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def verdict(good: bool) -> str:
    """The mark after a figure with a target."""
    return "ok" if good else "MISSED"


def machine() -> str:
    return f"machine: {os.cpu_count()} cores, load avg {load_avg()} (other processes share them)"


def print_profile(prof: cProfile.Profile, top: int) -> None:
    """The ``top`` functions of a cProfile run by own time."""
    import io
    import pstats

    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    print(buf.getvalue())


def shown(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# -- data sets through a real etcd ---------------------------------------------------------------


def load_through_etcd(ops: Iterable[tuple[str | bytes, bytes]], out: Path, **facts: Any) -> dict[str, Any]:
    """Put ``ops`` into a fresh etcd, save a snapshot to ``out`` atomically, return build facts.

    Puts go in transactions of at most :data:`BATCH_OPS` operations and :data:`BATCH_BYTES`; a
    key already in the open transaction starts a new one (etcd refuses two puts to one key in a
    txn). ``facts`` (the seed, the sizes asked for) are recorded with the measured ones in
    ``out`` with the suffix ``.json``.
    """
    from tests.support.etcd import EtcdServer, etcd_version, etcdutl_status

    version = etcd_version()
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with EtcdServer(
        quota_backend_bytes=8 * 1024**3,
        unsafe_no_fsync=version >= (3, 5, 0),
        extra_args=("--max-request-bytes", str(2 * BATCH_BYTES), "--max-txn-ops", str(BATCH_OPS)),
        startup_timeout=60,
    ) as server:
        client = server.client(timeout=300)
        batch: list[Any] = []
        batch_keys: set[str | bytes] = set()
        batch_bytes = 0
        txns = 0
        written = 0

        def flush() -> None:
            nonlocal batch_bytes, txns
            if batch:
                ok, _ = client.transaction(compare=[], success=batch, failure=[])
                if not ok:
                    raise RuntimeError("bench build: transaction failed")
                txns += 1
            batch.clear()
            batch_keys.clear()
            batch_bytes = 0

        for key, value in ops:
            full = len(batch) >= BATCH_OPS or batch_bytes + len(value) > BATCH_BYTES
            if full or key in batch_keys:
                flush()
            batch.append(client.transactions.put(key, value))
            batch_keys.add(key)
            batch_bytes += len(key) + len(value) + 16
            written += len(value)
        flush()
        load_s = time.monotonic() - t0
        tmp = out.with_name(out.name + ".tmp")
        server.snapshot_save(tmp, timeout=1800)
        os.chmod(tmp, 0o600)
        os.replace(tmp, out)
    record = {
        **facts,
        "etcd_version": ".".join(map(str, version)),
        "transactions": txns,
        "value_bytes_written": written,
        "load_seconds": round(load_s, 1),
        "build_seconds": round(time.monotonic() - t0, 1),
        "file_size": out.stat().st_size,
        "etcdutl_status": etcdutl_status(out),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_config(path: Path, provider_yaml: str) -> Path:
    """An EncryptionConfiguration for secrets with the given providers block, mode 0600."""
    path.write_text(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "- resources: [secrets]\n  providers:\n" + provider_yaml
    )
    os.chmod(path, 0o600)
    return path


# -- measured runs -------------------------------------------------------------------------------


def run_measured(args: list[str], *, keep_stdout: bool = False) -> dict[str, Any]:
    """One ``snapshot-tools ARGS`` run in a fresh process: wall s, CPU s (user + system: steadier
    than wall time on a shared machine), peak RSS (the child's VmHWM), rc, stderr, and stdout
    when ``keep_stdout`` (else it goes to /dev/null)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rfd, wfd = os.pipe()  # the child writes its VmHWM (kB) here at exit
    try:
        with (
            open(os.devnull, "wb") if not keep_stdout else tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
        ):
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-c", _MEASURED_CHILD, *args], stdout=out, stderr=err,
                                    pass_fds=(wfd,), env={**os.environ, "BENCH_HWM_FD": str(wfd)})  # fmt: skip
            rc = proc.wait()
            wall = time.perf_counter() - t0
            err.seek(0)
            stderr = err.read().decode(errors="replace").strip()
            stdout = ""
            if keep_stdout:
                out.seek(0)
                stdout = out.read().decode()
        os.close(wfd)
        wfd = -1
        hwm_kb = int(os.read(rfd, 64) or b"0")
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": hwm_kb / 1024, "rc": rc, "stderr": stderr}
    if keep_stdout:
        result["stdout"] = stdout
    return result


def run_child(module: str, *args: str) -> dict[str, Any]:
    """``python -m MODULE ARGS`` in a fresh process (its own peak RSS): the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"{module} child failed (rc {proc.returncode}):\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])

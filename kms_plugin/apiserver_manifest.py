"""The parts of a kube-apiserver static pod manifest the KMS preflight needs.

Which container runs the apiserver, its flags (``--encryption-provider-config``), where its
volume mounts come from on the host (``hostPath`` volumes, ``subPath`` included), the user it
runs as, and whether it shares the host network namespace (needed for an abstract socket).

Bounded like every input: a regular file of at most :data:`MAX_MANIFEST_BYTES`, one YAML
document, safe loading. Every problem is a :class:`~kms_plugin.errors.ConfigError` naming the
file (exit 2).

References: kubeadm ``cmd/kubeadm/app/phases/controlplane/manifests.go`` (the static pod it
writes), Kubernetes ``core/v1`` ``Pod``/``Volume``/``VolumeMount``/``SecurityContext``.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from kms_plugin.errors import ConfigError
from kms_plugin.terminal import printable

if TYPE_CHECKING:
    from pathlib import Path

MAX_MANIFEST_BYTES = 1 << 20
CONFIG_FLAG = "--encryption-provider-config"


@dataclass(frozen=True)
class Mount:
    """One ``volumeMount`` of the apiserver container and the volume behind it."""

    name: str
    mount_path: str
    host_path: str | None  # None: the volume is not a hostPath (or is missing)
    volume_kind: str  # "hostPath", "emptyDir", ..., or "missing"

    def covers(self, path: str) -> bool:
        return path == self.mount_path or path.startswith(self.mount_path.rstrip("/") + "/")

    def host_path_of(self, path: str) -> str | None:
        """Where ``path`` (inside the container, covered by this mount) lives on the host."""
        if self.host_path is None:
            return None
        rest = path[len(self.mount_path.rstrip("/")) :].lstrip("/")
        return posixpath.join(self.host_path, rest) if rest else self.host_path


@dataclass(frozen=True)
class ApiserverPod:
    """The apiserver container of a static pod manifest, reduced to what the preflight checks."""

    file: str
    container: str
    flags: dict[str, str]
    mounts: tuple[Mount, ...]
    run_as_user: int | None
    run_as_group: int | None
    supplemental_groups: tuple[int, ...]
    host_network: bool

    def mount_for(self, path: str) -> Mount | None:
        """The mount a path inside the container resolves through: the longest covering one."""
        path = posixpath.normpath(path)
        found = [m for m in self.mounts if m.covers(path)]
        return max(found, key=lambda m: len(m.mount_path)) if found else None


def _read(path: Path) -> str:
    shown = printable(str(path))
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"--apiserver-manifest {shown}: not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"--apiserver-manifest {shown}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"--apiserver-manifest {shown}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ConfigError(f"--apiserver-manifest {shown}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"--apiserver-manifest {shown}: not a text file (invalid UTF-8)") from None


def _is_apiserver(container: dict[str, Any]) -> bool:
    words = [w for w in _words(container) if isinstance(w, str)]
    return any(posixpath.basename(w.split("=", 1)[0]) == "kube-apiserver" for w in words)


def parse_flags(words: list[Any]) -> dict[str, str]:
    """``--name=value`` and ``--name value`` pairs (the last occurrence wins, as with pflag)."""
    flags: dict[str, str] = {}
    items = [w for w in words if isinstance(w, str)]
    for i, word in enumerate(items):
        if not word.startswith("--"):
            continue
        name, eq, value = word.partition("=")
        if not eq and i + 1 < len(items) and not items[i + 1].startswith("-"):
            value = items[i + 1]
        flags[name] = value
    return flags


def _mapping(value: Any, what: str, shown: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"--apiserver-manifest {shown}: {what} is not a mapping")
    return value


def _list(value: Any, what: str, shown: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"--apiserver-manifest {shown}: {what} is not a list")
    return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def load_apiserver_manifest(path: Path) -> ApiserverPod:
    """Read a static pod manifest and pick its kube-apiserver container.

    Raises:
        ConfigError: unreadable, not YAML, not a Pod, or no container that runs kube-apiserver.
    """
    shown = printable(str(path))
    text = _read(path)
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"--apiserver-manifest {shown}: not valid YAML{where}") from None
    except RecursionError:  # PyYAML composes recursively; a real Pod nests a dozen levels
        raise ConfigError(f"--apiserver-manifest {shown}: nested too deeply to be a Pod") from None
    if len(docs) != 1:
        raise ConfigError(f"--apiserver-manifest {shown}: expected one Pod document, found {len(docs)}")
    pod = _mapping(docs[0], "the document", shown)
    if pod.get("kind") != "Pod":
        raise ConfigError(f"--apiserver-manifest {shown}: kind is {pod.get('kind')!r}, expected Pod")
    spec = _mapping(pod.get("spec"), "spec", shown)
    containers = [
        _mapping(c, "spec.containers[]", shown) for c in _list(spec.get("containers"), "spec.containers", shown)
    ]
    chosen = [c for c in containers if _is_apiserver(c)]
    if not chosen:
        chosen = [c for c in containers if CONFIG_FLAG in parse_flags(_words(c))]
    if len(chosen) != 1:
        raise ConfigError(
            f"--apiserver-manifest {shown}: no single container runs kube-apiserver "
            f"({len(containers)} container(s), {len(chosen)} candidate(s))"
        )
    container = chosen[0]
    volumes: dict[str, dict[str, Any]] = {}
    for vol in _list(spec.get("volumes"), "spec.volumes", shown):
        vol = _mapping(vol, "spec.volumes[]", shown)
        if isinstance(vol.get("name"), str):
            volumes[vol["name"]] = vol
    mounts = []
    for vm in _list(container.get("volumeMounts"), "volumeMounts", shown):
        vm = _mapping(vm, "volumeMounts[]", shown)
        name, mount_path = vm.get("name"), vm.get("mountPath")
        if not isinstance(name, str) or not isinstance(mount_path, str) or not mount_path.startswith("/"):
            continue
        vol = volumes.get(name)
        host: str | None = None
        kind = "missing"
        if vol is not None:
            kind = next((k for k in vol if k != "name"), "missing")
            host_path = vol.get("hostPath")
            if isinstance(host_path, dict) and isinstance(host_path.get("path"), str):
                host = posixpath.normpath(host_path["path"])
                sub = vm.get("subPath")
                if isinstance(sub, str) and sub:
                    host = posixpath.join(host, sub)
        mounts.append(Mount(name, posixpath.normpath(mount_path), host, kind))
    pod_sc = _mapping(spec.get("securityContext"), "spec.securityContext", shown)
    sc = _mapping(container.get("securityContext"), "securityContext", shown)
    user = _int(sc.get("runAsUser"))
    group = _int(sc.get("runAsGroup"))
    supplemental = _list(pod_sc.get("supplementalGroups"), "supplementalGroups", shown)
    groups = tuple(g for g in map(_int, supplemental) if g is not None)
    return ApiserverPod(
        file=str(path),
        container=str(container.get("name", "?")),
        flags=parse_flags(_words(container)),
        mounts=tuple(mounts),
        run_as_user=user if user is not None else _int(pod_sc.get("runAsUser")),
        run_as_group=group if group is not None else _int(pod_sc.get("runAsGroup")),
        supplemental_groups=groups,
        host_network=spec.get("hostNetwork") is True,
    )


def _words(container: dict[str, Any]) -> list[Any]:
    command = container.get("command") or []
    args = container.get("args") or []
    return (command if isinstance(command, list) else []) + (args if isinstance(args, list) else [])

"""The keyring audit log: one JSON line per keyring change, beside the keyring, never material.

``<keyring>.audit.log`` (beside the symlink-resolved keyring file, like its lock) gets one line
per ``init``, ``rotate``, ``retire``, ``restore``, ``purge`` and ``import``: the UTC time, the
action, the keyring file, the KEK ids involved, the active KEK after the change, who (user, uid, host, pid; the
sudo user when there is one) and the tool version. Key material never appears: only KEK ids,
which are random labels.

The file is opened ``O_APPEND`` (never rewritten or truncated), created 0600, refused when it is
a symlink, not a regular file or readable by group/other; each line is one ``write`` followed by
``fsync``. Writers open it before they change the keyring (a log that cannot be written stops
the change) and append while they still hold the keyring lock, so lines are in change order.

References: Linux audit and sudo I/O logs (append-only, one record per action); STYLE.md 9
(no secrets in logs).
"""

from __future__ import annotations

import json
import os
import socket
import stat
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from kms_plugin.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

AUDIT_SUFFIX = ".audit.log"


def audit_path(keyring_file: Path) -> Path:
    """The audit log of the (symlink-resolved) keyring file ``keyring_file``."""
    return keyring_file.with_name(keyring_file.name + AUDIT_SUFFIX)


def _who() -> dict[str, Any]:
    uid = os.getuid()
    try:
        import pwd

        user = pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        user = str(uid)
    who: dict[str, Any] = {"user": user, "uid": uid, "host": socket.gethostname(), "pid": os.getpid()}
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        who["sudo_user"] = sudo
    return who


class AuditLog:
    """An open audit log; use as a context manager around one keyring change.

    ``path`` (default: beside ``keyring_file``) and ``subject`` (the record field naming what
    changed: ``keyring``, or ``token`` for a PKCS#11 key family) serve other key stores.

    Raises:
        ConfigError: the log cannot be opened, is not a regular file, or group/other can read it.
    """

    def __init__(self, keyring_file: Path, *, path: Path | None = None, subject: str = "keyring") -> None:
        self.keyring = keyring_file
        self.subject = subject
        self.path = audit_path(keyring_file) if path is None else path
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise ConfigError(f"audit log {self.path}: cannot open: {exc.strerror}") from None
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"audit log {self.path}: not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"audit log {self.path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others "
                    "read or write it; run chmod 600"
                )
        except BaseException:
            os.close(self._fd)
            raise

    def append(self, action: str, kek_ids: list[str], **details: Any) -> dict[str, Any]:
        """Append one line (and fsync it); returns the record written.

        ``details`` must hold ids, counts and paths only: never key material or passphrases.

        Raises:
            ConfigError: the write or fsync failed.
        """
        from kms_plugin import __version__

        record: dict[str, Any] = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action": action,
            self.subject: str(self.keyring),
            "kek_ids": kek_ids,
            **details,
            **_who(),
            "tool": "kms-plugin",
            "version": __version__,
        }
        line = (json.dumps(record, sort_keys=False, separators=(",", ":")) + "\n").encode()
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            raise ConfigError(
                f"audit log {self.path}: write failed after the keyring change: {exc.strerror}"
            ) from None
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_audit(keyring_file: Path) -> list[dict[str, Any]]:
    """Every record of the audit log of ``keyring_file`` (for tests and ``keyring audit``)."""
    path = audit_path(keyring_file)
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]

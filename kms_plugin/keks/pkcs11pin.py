"""Where a PKCS#11 user PIN comes from: ``@FILE`` or the environment, never a literal on argv.

A PIN on the command line shows in ``ps`` and in shell history, so ``--pkcs11-pin`` takes only
``@FILE`` (one line; a trailing newline is dropped; the file must not be readable by group or
others) and without it the PIN is read from ``KMS_PLUGIN_PKCS11_PIN``. The file is re-read at
every login, so an operator fixes a wrong PIN without a restart. The PIN never appears in a
``repr``, a log line or an error message.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from kms_plugin.errors import ConfigError

PIN_ENV = "KMS_PLUGIN_PKCS11_PIN"
_MAX_PIN_FILE = 4096


@dataclass(frozen=True)
class PinSource:
    """``path`` set: read that file at each login; else the environment variable ``env``."""

    path: str | None = None
    env: str = PIN_ENV

    def describe(self) -> str:
        return f"PIN file {self.path}" if self.path else f"${self.env}"

    def read(self) -> str:
        """The PIN now.

        Raises:
            ConfigError: no PIN (unset variable, missing or empty file) or an unsafe file.
        """
        if self.path is None:
            pin = os.environ.get(self.env)
            if not pin:
                raise ConfigError(f"no PKCS#11 PIN: set ${self.env} or pass --pkcs11-pin @FILE")
            return pin
        try:
            # O_NONBLOCK: a FIFO with no writer would block open() for good (SIGTERM cannot
            # stop it); non-regular files are refused below anyway.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise ConfigError(f"--pkcs11-pin @{self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"--pkcs11-pin @{self.path}: not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"--pkcs11-pin @{self.path}: readable by group or others (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}); chmod 0600 it"
                )
            data = os.read(fd, _MAX_PIN_FILE + 1)
        finally:
            os.close(fd)
        if len(data) > _MAX_PIN_FILE:
            raise ConfigError(f"--pkcs11-pin @{self.path}: larger than {_MAX_PIN_FILE} bytes")
        pin = data.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
        if not pin:
            raise ConfigError(f"--pkcs11-pin @{self.path}: the file is empty")
        return pin


def pin_source(value: str | None) -> PinSource:
    """``--pkcs11-pin`` -> where to read the PIN; a bare value is refused without echoing it.

    Raises:
        ConfigError: a value that is not ``@FILE``.
    """
    if value is None:
        return PinSource()
    if not value.startswith("@") or len(value) < 2:
        raise ConfigError(
            f"--pkcs11-pin takes @FILE (a file holding the PIN, mode 0600), not the PIN itself: "
            f"argv is visible to every local user; or set ${PIN_ENV}"
        )
    return PinSource(path=value[1:])

"""SoftHSM2 tokens for tests: a private token directory per test through ``SOFTHSM2_CONF``.

:func:`softhsm_token` writes a SoftHSM2 config under a fresh directory, points ``SOFTHSM2_CONF``
at it (for this process and the subprocesses it starts), initialises a token with
``softhsm2-util`` and yields a :class:`Token`. It skips the test, with the reason, only when
SoftHSM2 itself is not installed (Debian ``softhsm2``; ``.ci/run`` installs it).

``KMS_PLUGIN_PKCS11_AUDIT_LOG`` points at ``<root>/audit.log`` while inside too, so key changes
(init-key, rotate-key ...) log into the token's private directory, never /var/lib.

SoftHSM reads ``SOFTHSM2_CONF`` in ``C_Initialize``; python-pkcs11 initialises a module once per
process, so a test that changes token directories in-process calls :func:`reinitialize`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
USER_PIN = "4711-user-pin-0815"
SO_PIN = "so-pin-1234"
TOKEN_LABEL = "kms-test"
AUDIT_ENV = "KMS_PLUGIN_PKCS11_AUDIT_LOG"


@dataclass(frozen=True)
class Token:
    """One initialised SoftHSM2 token; ``flags(key_label)`` are the ``--pkcs11-*`` flags."""

    root: Path
    conf: Path
    tokendir: Path
    label: str
    pin: str
    pin_file: Path

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    def flags(self, key_label: str = "kek", pin: str | None = None) -> list[str]:
        return [
            "--pkcs11-module", MODULE,
            "--pkcs11-token-label", self.label,
            "--pkcs11-key-label", key_label,
            "--pkcs11-pin", f"@{pin or self.pin_file}",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}


def require_softhsm() -> str:
    util = shutil.which("softhsm2-util")
    if not os.path.exists(MODULE) or util is None:
        pytest.skip(f"SoftHSM2 is not installed ({MODULE} / softhsm2-util missing; Debian package softhsm2)")
    return util


def reinitialize() -> None:
    """Make this process's SoftHSM re-read ``SOFTHSM2_CONF`` and its token directory."""
    import pkcs11

    lib = pkcs11.lib(MODULE)
    if lib.initialized:
        lib.finalize()
    lib.initialize()


@contextmanager
def softhsm_token(label: str = TOKEN_LABEL) -> Iterator[Token]:
    """A fresh token in a private SoftHSM2 store; ``SOFTHSM2_CONF`` set while inside."""
    util = require_softhsm()
    root = Path(tempfile.mkdtemp(prefix="hsm", dir="/tmp"))
    tokendir = root / "tokens"
    tokendir.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin_file = root / "pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    old = os.environ.get("SOFTHSM2_CONF")
    old_audit = os.environ.get(AUDIT_ENV)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ[AUDIT_ENV] = str(root / "audit.log")
    try:
        subprocess.run(
            [util, "--init-token", "--free", "--label", label, "--pin", USER_PIN, "--so-pin", SO_PIN],
            check=True, capture_output=True, env={**os.environ},
        )  # fmt: skip
        reinitialize()
        yield Token(root, conf, tokendir, label, USER_PIN, pin_file)
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old
        if old_audit is None:
            os.environ.pop(AUDIT_ENV, None)
        else:
            os.environ[AUDIT_ENV] = old_audit
        shutil.rmtree(root, ignore_errors=True)

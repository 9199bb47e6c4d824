"""Hostile and careless inputs found by hand: a FIFO where a PIN or passphrase file is expected
must not hang (a blocked ``open`` of a FIFO with no writer cannot even be stopped by SIGTERM:
``kms-plugin serve --pkcs11-pin @FIFO`` ignored it for good)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kms_plugin.errors import ConfigError
from kms_plugin.keks.pkcs11life import family_lock
from kms_plugin.keks.pkcs11pin import pin_source
from kms_plugin.keks.transfer import read_passphrase

if TYPE_CHECKING:
    from collections.abc import Callable


def _outcome_within(seconds: float, fifo: Path, call: Callable[[], object]) -> BaseException | object:
    """``call()``'s result or exception, failing the test if it is still blocked after ``seconds``
    (the FIFO is then opened for writing, so the blocked thread can finish)."""
    box: list[BaseException | object] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a reader waits: this succeeds, and unblocks it
        os.close(fd)
        thread.join(5)
        pytest.fail(f"blocked on the FIFO {fifo} for more than {seconds} s")
    return box[0]


def test_pin_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "pin"
    os.mkfifo(fifo, 0o600)
    got = _outcome_within(3, fifo, pin_source(f"@{fifo}").read)
    assert isinstance(got, ConfigError)
    assert "not a regular file" in str(got)


def test_passphrase_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "phrase"
    os.mkfifo(fifo, 0o600)
    got = _outcome_within(3, fifo, lambda: read_passphrase(fifo, new=False))
    assert isinstance(got, ConfigError)
    assert "not a regular file" in str(got)


def test_passphrase_file_that_is_a_device_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        read_passphrase(Path("/dev/zero"), new=False)


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_pkcs11_audit_log_that_is_no_file_leaves_no_lock(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    if kind == "directory":
        log.mkdir()
    elif kind == "fifo":
        os.mkfifo(log, 0o600)
    else:
        (tmp_path / "real.log").touch(mode=0o600)
        log.symlink_to("real.log")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match="not a regular file"), family_lock(log):
        pytest.fail("the lock was taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_pkcs11_module_that_is_no_file_is_named_as_such(kind: str, tmp_path: Path) -> None:
    from kms_plugin.api import pkcs11_settings
    from kms_plugin.keks.pkcs11pool import SessionPool

    module = str(tmp_path) if kind == "directory" else "/dev/zero"
    settings = pkcs11_settings(module, "tok", "kek", None)
    with pytest.raises(ConfigError, match="not a regular file"):
        SessionPool(settings).load()

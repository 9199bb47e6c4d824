"""Helpers for the kms-plugin tests: short socket dirs, keyrings, a served plugin, the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from kms_plugin.cli import app
from kms_plugin.cli_runner import run_app
from kms_plugin.errors import Error, exit_code_for
from kms_plugin.keks.local import Keyring, save_keyring
from kms_plugin.server import PluginServer, ServeConfig

if TYPE_CHECKING:
    from collections.abc import Iterator

KMS_PLUGIN = [sys.executable, "-c", "from kms_plugin.cli import main; main()"]


@contextmanager
def short_dir() -> Iterator[Path]:
    """A temp dir under /tmp: unix socket paths must stay under ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="kmst", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_keyring(path: Path) -> Keyring:
    keyring = Keyring.generate()
    save_keyring(path, keyring, replace=False)
    return keyring


def cli(*args: str) -> int:
    """Run the kms-plugin CLI in-process; returns its exit code."""
    return run_app(app, "kms-plugin", Error, exit_code_for, list(args))


@contextmanager
def served(directory: Path, **overrides: object) -> Iterator[PluginServer]:
    """An in-process plugin on ``directory/p.sock`` with health on an ephemeral loopback port."""
    keyring = directory / "k.json"
    if not keyring.exists():
        make_keyring(keyring)
    config = ServeConfig(
        listen=f"unix://{directory / 'p.sock'}",
        keyring=keyring,
        health_addr="127.0.0.1:0",
        **overrides,  # type: ignore[arg-type]
    )
    server = PluginServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=1.0)


def start_serve(*args: str) -> subprocess.Popen[bytes]:
    """``kms-plugin serve ARGS`` as a subprocess (stderr piped)."""
    return subprocess.Popen(
        [*KMS_PLUGIN, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until the server logs that it serves (the socket alone may still be a stale one)."""
    deadline = time.monotonic() + timeout
    from kms_plugin.client import KMSv2Client

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read().decode()}")
        if path.exists():
            try:
                with KMSv2Client(f"unix://{path}", timeout=1) as c:
                    c.status()
                return
            except Error:
                pass
        time.sleep(0.05)
    raise AssertionError(f"socket {path} did not come up")


def file_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777

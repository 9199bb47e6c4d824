"""Helpers for the keyring lifecycle tests: run ``kms-plugin`` in-process with its output, and
KMS v2 values sealed under one chosen KEK of a keyring (as the plugin would have written them
while that KEK was active)."""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_plugin.keks import format as wire
from snapshot_tools.providers import kms_prefix, kmsv2
from tests.support.cli import CliResult, plugin_cli
from tests.support.k8s_objects import json_object

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from kms_plugin.keks.local import Kek


def run_plugin(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> CliResult:
    """``kms-plugin ARGV`` in this process: exit code, stdout, stderr (earlier output dropped)."""
    capsys.readouterr()
    code = plugin_cli(*map(os.fspath, argv))
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


class Sealer:
    """KMS v2 values under one KEK: one seed wrapped once, as an apiserver process does."""

    def __init__(self, kek: Kek, provider: str = "ours") -> None:
        self.kek = kek
        self.provider = provider
        self.seed = os.urandom(32)
        self.wrapped = wire.seal(AESGCM(kek.key), kek.id, self.seed)

    def value(self, etcd_key: str) -> bytes:
        payload = kmsv2.encrypt(
            self.seed,
            json_object(etcd_key.rsplit("/", 1)[-1]),
            etcd_key.encode(),
            encrypted_dek_source=self.wrapped,
            key_id=self.kek.key_id,
        )
        return kms_prefix("v2", self.provider) + payload


def material_forms(keks: list[Kek]) -> list[bytes]:
    """Every way a KEK's bytes could leak into text: raw, base64, hex (both cases)."""
    out = []
    for kek in keks:
        out += [kek.key, base64.b64encode(kek.key), kek.key.hex().encode(), kek.key.hex().upper().encode()]
    return out


def assert_no_material(path: Path, keks: list[Kek]) -> None:
    data = path.read_bytes()
    for form in material_forms(keks):
        assert form not in data, f"KEK material found in {path}"

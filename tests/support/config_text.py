"""EncryptionConfiguration files as text, for the tests of parsing, validation and key history.

Where a test is about what a config *means*, :mod:`tests.support.configs` writes it from dicts;
here the exact text matters (YAML layout, line numbers, quoting, broken documents), so it is
built from small text pieces: ``one_rule(aescbc(("k", K16)) + ID)``.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.errors import ConfigError
from snapshot_tools.keysets import KeySet, load_keyset

if TYPE_CHECKING:
    from pathlib import Path

HEAD = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
ID = "  - identity: {}\n"  # an identity provider entry

K16 = base64.b64encode(b"secret is secure").decode()  # spec 11.F
K16B = base64.b64encode(b"this is password").decode()
K32 = base64.b64encode(b"abcdefghijklmnopqrstuvwxyz123456").decode()
K32B = base64.b64encode(bytes(range(32))).decode()
K28 = "c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/Cg=="  # the API doc example: 28 bytes, invalid


def write(directory: Path, name: str, data: str | bytes) -> Path:
    """``data`` at ``directory/name`` (text as UTF-8, lone surrogates as the bytes they stand for)."""
    path = directory / name
    path.write_bytes(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
    return path


def load_text(tmp_path: Path, text: str, name: str = "c.yaml") -> KeySet:
    """The key set of one config file holding ``text``."""
    return load_keyset([write(tmp_path, name, text)])


def error_of(tmp_path: Path, text: str, name: str = "c.yaml") -> ConfigError:
    """The error loading a config file holding ``text`` raises."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, name)
    return info.value


def one_rule(providers: str, resources: str = "  - secrets\n") -> str:
    """A config with one ``resources[]`` entry: selectors (block style) and providers."""
    return HEAD + "resources:\n- resources:\n" + resources + "  providers:\n" + providers


def rules(*entries: tuple[str, str]) -> str:
    """A config with one ``resources[]`` entry per (selectors in flow style, providers block)."""
    out = HEAD + "resources:\n"
    for selectors, providers in entries:
        out += f"- resources: {selectors}\n  providers:\n{providers}"
    return out


def aescbc(*keys: tuple[str, str]) -> str:
    """An aescbc provider entry with (name, base64 secret) keys."""
    out = "  - aescbc:\n      keys:\n"
    for name, secret in keys:
        out += f"      - name: {name}\n        secret: {secret}\n"
    return out

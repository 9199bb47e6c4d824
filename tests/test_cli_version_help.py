"""Issue 11 item 15: ``--version`` on both CLIs (and the plugin's ``build_info`` metric), help
without internal type names, and no command prints the help without an empty error line; and
item 14 for the plugin: ``-o`` is the output format of its commands too."""

from __future__ import annotations

import json
import re
import subprocess
from importlib.metadata import version
from typing import TYPE_CHECKING

import pytest
from prometheus_client import generate_latest

from kms_plugin.metrics import PluginMetrics
from tests.support.cli import KMS_PLUGIN, plugin_cli, snapshot_tools_process

if TYPE_CHECKING:
    from pathlib import Path

VERSION = version("k8s-secrets-at-rest")


def test_version_on_both_clis() -> None:
    p = snapshot_tools_process("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"snapshot-tools {VERSION}"
    p = subprocess.run([*KMS_PLUGIN, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"kms-plugin {VERSION}"


def test_plugin_exposes_build_info() -> None:
    text = generate_latest(PluginMetrics().registry).decode()
    assert f'kms_plugin_build_info{{version="{VERSION}"}} 1.0' in text


_INTERNAL = re.compile(r"<(bool|str|int|float|path|list\[[^\]]*\])>")


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshot-tools", "--help"],
        ["snapshot-tools", "check", "--help"],
        ["snapshot-tools", "extract", "--help"],
        ["snapshot-tools", "reencrypt", "--help"],
        ["snapshot-tools", "decrypt", "--help"],
        ["snapshot-tools", "status", "--help"],
        ["kms-plugin", "--help"],
        ["kms-plugin", "serve", "--help"],
        ["kms-plugin", "status", "--help"],
        ["kms-plugin", "keyring", "--help"],
    ],
)
def test_help_shows_no_internal_types(argv: list[str]) -> None:
    prefix = KMS_PLUGIN if argv[0] == "kms-plugin" else None
    if prefix is None:
        p = snapshot_tools_process(*argv[1:], env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    else:
        p = subprocess.run(
            [*prefix, *argv[1:]], capture_output=True, text=True, timeout=60, check=False,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Usage:" in p.stdout
    assert not _INTERNAL.search(p.stdout), _INTERNAL.findall(p.stdout)


@pytest.mark.parametrize("which", ["snapshot-tools", "kms-plugin"])
def test_no_command_prints_the_help_and_no_empty_error(which: str) -> None:
    if which == "snapshot-tools":
        p = snapshot_tools_process()
    else:
        p = subprocess.run(KMS_PLUGIN, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2
    assert "Usage:" in p.stdout + p.stderr
    assert "Commands" in p.stdout + p.stderr
    assert "error: (see" not in p.stderr


def test_plugin_commands_take_dash_o_as_the_format(tmp_path: Path) -> None:
    keyring = tmp_path / "keyring.json"
    assert plugin_cli("keyring", "init", str(keyring)) == 0
    argv = [*KMS_PLUGIN, "keyring", "list", str(keyring), "-o", "json"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert isinstance(json.loads(p.stdout), (dict, list))

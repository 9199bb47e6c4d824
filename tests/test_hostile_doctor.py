"""``kms-plugin doctor --apiserver-manifest`` against a hostile manifest: YAML nested deeper than
Python's recursion limit (a few KiB of ``[``) must be one line and exit 2, not an internal error."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from kms_plugin.apiserver_manifest import load_apiserver_manifest
from kms_plugin.errors import ConfigError
from tests.support.lifecycle import run_plugin

if TYPE_CHECKING:
    from pathlib import Path

_CONFIG = """\
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms: {apiVersion: v2, name: ours, endpoint: "unix:///nonexistent/kms.sock", timeout: 3s}
      - identity: {}
"""


def _deep(path: Path) -> Path:
    path.write_text("spec: " + "[" * 5000 + "]" * 5000 + "\n")
    return path


def test_deeply_nested_manifest_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_apiserver_manifest(_deep(tmp_path / "pod.yaml"))


def test_deeply_nested_manifest_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "enc.yaml"
    config.write_text(_CONFIG)
    res = run_plugin(
        capsys, "doctor", "--encryption-config", config, "--apiserver-manifest", _deep(tmp_path / "pod.yaml")
    )
    assert res.code == 2, res
    assert res.err.count("\n") == 1 and "--apiserver-manifest" in res.err and "internal error" not in res.err

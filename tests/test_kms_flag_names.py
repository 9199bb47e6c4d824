"""Issue 11 item 3: ``--kms``, ``--keyring`` and ``--aws-kms`` must name a KMS provider of the
configs given; another name (a typo, or the wrong configs) is a usage error listing the names the
configs have, instead of being ignored."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.cli import Cli
from tests.support.configs import kms, rule, static, write_config
from tests.support.fixtures import EXAMPLE_CONFIG, EXAMPLE_SNAPSHOT

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def _kms_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "kms.yaml",
        rule(["secrets"], kms("vault", "unix:///nonexistent/vault.sock"), static("aescbc", ("key1", b"k" * 32))),
    )


@pytest.mark.parametrize(
    "flag",
    [
        ["--kms", "valt=unix:///nonexistent/x.sock"],
        ["--keyring", "valt=/nonexistent/keyring.json"],
        ["--aws-kms", "valt"],
        ["--aws-kms", "valt=alias/k"],
    ],
)
def test_kms_flag_naming_no_provider_is_a_usage_error(cli: Cli, tmp_path: Path, flag: list[str]) -> None:
    r = cli("check", EXAMPLE_SNAPSHOT, "-c", _kms_config(tmp_path), *flag, "--aws-region", "us-east-1")
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "'valt'" in lines[0]
    assert "vault" in lines[0]


def test_kms_flag_without_any_kms_provider(cli: Cli) -> None:
    r = cli("extract", EXAMPLE_SNAPSHOT, "-c", EXAMPLE_CONFIG, "--kms", "x=unix:///nonexistent/x.sock")
    assert r.code == 2, r
    assert "no KMS provider" in r.err



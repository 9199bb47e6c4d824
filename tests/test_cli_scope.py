"""Issue 11 items 1, 3, 4: typo-proof scope. An unknown ``--resource``, a KMS flag naming a
provider no config has, and a config naming an unknown resource are told apart from "nothing
to see" (each used to pass silently)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.support.cli import Cli
from tests.support.configs import rule, static, write_config
from tests.support.fixtures import EXAMPLE_CONFIG, EXAMPLE_SNAPSHOT

if TYPE_CHECKING:
    from pathlib import Path

EXAMPLE_NEW = EXAMPLE_CONFIG.parent / "new-key-only.yaml"
KEY1 = EXAMPLE_CONFIG.read_text().split("secret: ")[1].split()[0]  # the example's key1 (base64)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


# -- item 1: one resolver for --resource -------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "suggested"),
    [("secret", "secrets"), ("Secrets", "secrets"), ("sercets", "secrets"), ("deployments", "deployments.apps")],
)
@pytest.mark.parametrize("command", ["check", "extract"])
def test_unknown_resource_is_a_usage_error_with_did_you_mean(
    cli: Cli, command: str, typed: str, suggested: str
) -> None:
    r = cli(command, EXAMPLE_SNAPSHOT, "-c", EXAMPLE_CONFIG, "-r", typed)
    assert r.code == 2, r
    assert r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert f"unknown resource {typed!r}" in lines[0]
    assert f"did you mean {suggested}" in lines[0]


def test_check_known_resource_still_works(cli: Cli) -> None:
    code, report = cli.check_json(EXAMPLE_SNAPSHOT, "-c", EXAMPLE_CONFIG, "-r", "secrets")
    assert code == 0
    assert report["summary"]["objects"] == 14
    code, report = cli.check_json(EXAMPLE_SNAPSHOT, "-c", EXAMPLE_CONFIG, "-r", "widgets.example.com")
    assert code == 0
    assert report["summary"]["objects"] == 0


# -- item 4: a config naming an unknown resource ------------------------------------------------


def test_config_naming_an_unknown_resource_warns_and_does_not_contradict(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE_CONFIG.read_text().replace("  - secrets\n", "  - secret\n"))
    code, report = cli.check_json(EXAMPLE_SNAPSHOT, "-c", bad)
    assert report["warnings"] and "'secret'" in report["warnings"][0]
    assert "did you mean secrets" in report["warnings"][0]
    # Secrets are not covered by the current config: they are not written with key1, so the
    # key table must not call key1 active while the verdicts call its objects retired.
    assert report["summary"]["retired"] == 14
    assert code == 1
    (row,) = report["keys"]
    assert row["active"] is False
    r = cli("check", EXAMPLE_SNAPSHOT, "-c", bad)
    warned = [line for line in r.err.splitlines() if "'secret'" in line]
    assert len(warned) == 1
    assert "did you mean secrets" in warned[0]
    assert KEY1 not in r.out + r.err


def test_valid_config_has_empty_warnings(cli: Cli) -> None:
    code, report = cli.check_json(EXAMPLE_SNAPSHOT, "-c", EXAMPLE_CONFIG)
    assert code == 0
    assert report["warnings"] == []
    json.dumps(report)


def test_extract_suggests_the_configs_custom_resources(cli: Cli, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "crd.yaml",
        rule(["secrets", "widgets.example.com"], static("aescbc", ("key1", b"k" * 32))),
    )
    r = cli("extract", EXAMPLE_SNAPSHOT, "-c", cfg, "-r", "widgetz")
    assert r.code == 2, r
    assert "did you mean widgets.example.com" in r.err


# -- item 15: --fail-on none --------------------------------------------------------------------


def test_fail_on_none_fails_on_nothing(cli: Cli) -> None:
    # Every Secret is retired with only the new key's config as current: exit 1 by default.
    r = cli("check", EXAMPLE_SNAPSHOT, "-c", EXAMPLE_NEW, "-c", EXAMPLE_CONFIG)
    assert r.code == 1, r
    r = cli("check", EXAMPLE_SNAPSHOT, "-c", EXAMPLE_NEW, "-c", EXAMPLE_CONFIG, "--fail-on", "none")
    assert r.code == 0, r
    r = cli("check", EXAMPLE_SNAPSHOT, "-c", EXAMPLE_NEW, "-c", EXAMPLE_CONFIG, "--fail-on", "none,stale")
    assert r.code == 2
    assert "none" in r.err
    json.dumps(r.out)

"""The human ``check`` report stays short (issue 11 item 11): findings grouped per verdict/reason,
resource, namespace and key name, at most ``--limit`` rows (default 50) with a pointer to the
JSON, which keeps every object."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from snapshot_tools.errors import EXIT_FINDINGS, EXIT_USAGE
from snapshot_tools.providers import static_prefix
from tests.support.configs import rule, static, write_config
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

N = 3000
NAMESPACES = 3


@pytest.fixture(scope="module")
def unreadable_snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """3,000 Secrets under aescbc key ``gone`` that no config holds: all unreadable (no-such-key)."""
    d = tmp_path_factory.mktemp("many")
    body = static_prefix("aescbc", "gone") + bytes(32)
    values = {f"/registry/secrets/ns-{i % NAMESPACES}/s-{i:05d}": body for i in range(N)}
    snap = write_snapshot(d / "many.db", values)
    config = write_config(d / "c.json", rule(["secrets"], static("aescbc", ("k1", bytes(32)))))
    return snap, config


def test_default_limit_keeps_the_report_short(cli: Cli, unreadable_snapshot: tuple[Path, Path]) -> None:
    snap, config = unreadable_snapshot
    res = cli("check", snap, "-c", config)
    assert res.code == EXIT_FINDINGS
    lines = res.out.splitlines()
    assert len(lines) < 100, len(lines)
    assert f"... {N - 50} more (use --output json)" in lines
    # one group row per namespace, with its count
    groups = [line for line in lines if line.startswith("unreadable (no-such-key)") and " 1000" in line]
    assert len(groups) == NAMESPACES, res.out
    assert all("gone" in g and "secrets" in g for g in groups)
    listed = [line for line in lines if line.rstrip().endswith(tuple(f"s-{i:05d}" for i in range(N)))]
    assert len(listed) == 50


def test_limit_option(cli: Cli, unreadable_snapshot: tuple[Path, Path]) -> None:
    snap, config = unreadable_snapshot
    res = cli("check", snap, "-c", config, "--limit", "5")
    assert f"... {N - 5} more (use --output json)" in res.out.splitlines()
    assert sum(1 for line in res.out.splitlines() if "/registry/secrets/" in line and "1000" not in line) == 5
    everything = cli("check", snap, "-c", config, "--limit", "0")  # 0: no limit
    assert "more (use --output json)" not in everything.out
    assert sum(1 for line in everything.out.splitlines() if line.rstrip().endswith("s-02999")) == 1
    bad = cli("check", snap, "-c", config, "--limit", "-1")
    assert bad.code == EXIT_USAGE and "Traceback" not in bad.err


def test_json_keeps_every_object(cli: Cli, unreadable_snapshot: tuple[Path, Path]) -> None:
    snap, config = unreadable_snapshot
    code, doc = cli.check_json(snap, "-c", config, "--limit", "5")
    assert code == EXIT_FINDINGS
    assert len(doc["objects"]) == N and doc["summary"]["unreadable"] == N

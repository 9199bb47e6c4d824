"""Integrity is part of the verdict (issue 11 item 2): a snapshot ``etcdutl snapshot restore``
would refuse (SHA-256 trailer missing or wrong) fails ``check`` with exit 3 after the report, and
``extract``/``reencrypt``/``decrypt`` refuse it before writing anything, unless
``--skip-hash-check`` is given."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.errors import EXIT_FINDINGS, EXIT_INPUT, EXIT_OK
from tests.support.configs import IDENTITY, rule, static, write_config
from tests.support.k8s_objects import object_meta, secret
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

FLAG = "--skip-hash-check"


def _snapshots(tmp_path: Path, values: dict[str, bytes] | None = None) -> dict[str, Path]:
    """The same contents three ways: trailer valid, missing (a member/snap/db copy), mismatched."""
    values = values or {
        "/registry/secrets/default/s1": secret(object_meta("s1", "default"), {"k": b"v"}),
        "/registry/secrets/default/s2": secret(object_meta("s2", "default"), {"k": b"w"}),
    }
    good = write_snapshot(tmp_path / "good.db", values)
    data = good.read_bytes()
    missing = tmp_path / "missing.db"
    missing.write_bytes(data[:-32])
    mismatch = tmp_path / "mismatch.db"
    mismatch.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    return {"valid": good, "missing": missing, "mismatch": mismatch}


@pytest.fixture
def identity_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "identity.json", rule(["secrets"], IDENTITY))


@pytest.mark.parametrize("state", ["missing", "mismatch"])
def test_check_fails_after_the_report(cli: Cli, tmp_path: Path, identity_config: Path, state: str) -> None:
    snap = _snapshots(tmp_path)[state]
    res = cli("check", snap, "-c", identity_config)
    assert res.code == EXIT_INPUT, res
    assert "2 objects" in res.out  # the report is printed first
    assert "integrity: failed" in res.out
    assert f"trailer {state}" in res.out or f"trailer: {state}" in res.out
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1 and FLAG in lines[0] and "Traceback" not in res.err

    code, doc = cli.check_json(snap, "-c", identity_config)
    assert code == EXIT_INPUT
    assert doc["snapshot"]["trailer"] == state
    assert doc["snapshot"]["integrity"] == "failed"
    assert doc["snapshot"]["integrity_reason"]
    assert doc["summary"]["objects"] == 2


@pytest.mark.parametrize("state", ["missing", "mismatch"])
def test_check_skip_hash_check_passes(cli: Cli, tmp_path: Path, identity_config: Path, state: str) -> None:
    snap = _snapshots(tmp_path)[state]
    code, doc = cli.check_json(snap, "-c", identity_config, FLAG)
    assert code == EXIT_OK
    assert doc["snapshot"]["integrity"] == "skipped"
    assert doc["snapshot"]["trailer"] == state
    res = cli("check", snap, "-c", identity_config, FLAG)
    assert res.code == EXIT_OK and "integrity: skipped" in res.out


def test_check_valid_trailer_passes(cli: Cli, tmp_path: Path, identity_config: Path) -> None:
    snap = _snapshots(tmp_path)["valid"]
    code, doc = cli.check_json(snap, "-c", identity_config)
    assert code == EXIT_OK
    assert doc["snapshot"]["integrity"] == "passed" and doc["snapshot"]["integrity_reason"] is None
    res = cli("check", snap, "-c", identity_config)
    assert res.code == EXIT_OK and "integrity: passed" in res.out and res.err == ""


def test_integrity_takes_precedence_over_findings(cli: Cli, tmp_path: Path) -> None:
    # The secrets are plaintext but the config rejects plaintext: unreadable (exit 1 alone).
    config = write_config(tmp_path / "aes.json", rule(["secrets"], static("aescbc", ("k1", b"k" * 32))))
    snaps = _snapshots(tmp_path)
    assert cli("check", snaps["valid"], "-c", config).code == EXIT_FINDINGS
    assert cli("check", snaps["missing"], "-c", config).code == EXIT_INPUT
    assert cli("check", snaps["missing"], "-c", config, FLAG).code == EXIT_FINDINGS


@pytest.mark.parametrize("state", ["missing", "mismatch"])
def test_extract_refuses_before_output(cli: Cli, tmp_path: Path, identity_config: Path, state: str) -> None:
    snap = _snapshots(tmp_path)[state]
    res = cli("extract", snap, "-c", identity_config)
    assert res.code == EXIT_INPUT
    assert res.out == ""
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1 and FLAG in lines[0], res.err
    ok = cli("extract", snap, "-c", identity_config, FLAG, "-o", "json")
    assert ok.code == EXIT_OK
    assert len(json.loads(ok.out)["items"]) == 2


def _rewrite_argv(command: str, snap: Path, out: Path, *rest: str | Path) -> list[str | Path]:
    """``reencrypt``/``decrypt SNAPSHOT OUT ...``."""
    return [command, snap, out, *rest]


@pytest.mark.parametrize("state", ["missing", "mismatch"])
def test_rewrites_refuse_and_write_nothing(cli: Cli, tmp_path: Path, identity_config: Path, state: str) -> None:
    snap = _snapshots(tmp_path)[state]
    target = write_config(tmp_path / "new.json", rule(["secrets"], static("aesgcm", ("n1", b"n" * 32)), IDENTITY))
    for command, extra in (("reencrypt", ["--to", target]), ("decrypt", [])):
        out = tmp_path / f"{command}-{state}.db"
        res = cli(*_rewrite_argv(command, snap, out, "-c", identity_config, *extra))
        assert res.code == EXIT_INPUT, res
        lines = [line for line in res.err.splitlines() if line.strip()]
        assert len(lines) == 1 and FLAG in lines[0], res.err
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(command)) == []
        ok = cli(*_rewrite_argv(command, snap, out, "-c", identity_config, *extra, FLAG))
        assert ok.code == EXIT_OK, ok
        assert out.exists()


def test_integrity_wins_over_kms_unavailable() -> None:
    """3 before 4: a snapshot that will not restore fails whatever a KMS would have said."""
    from snapshot_tools.errors import EXIT_KMS
    from snapshot_tools.readers import Resolution
    from snapshot_tools.report import CheckReport, Row

    res = Resolution("unreadable", "kms-v2", "kms1", reason="kms-unavailable")
    report = CheckReport(rows=[Row(b"/registry/secrets/a/b", None, "b", 2, res, None)])
    report.snapshot = {"integrity": "passed"}
    assert report.exit_code(frozenset({"unreadable"})) == EXIT_KMS
    for status in ("skipped", "failed"):
        report.snapshot = {"integrity": status}
        want = EXIT_INPUT if status == "failed" else EXIT_KMS
        assert report.exit_code(frozenset({"unreadable"})) == want

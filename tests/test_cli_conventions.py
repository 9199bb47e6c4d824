"""Issue 11 item 14: one convention for every command.

``-o/--output`` is the output format everywhere; reencrypt/decrypt take OUT as a positional
argument and give a structured ``-o json`` summary (the plugin's ``-o`` is tested in
``test_cli_version_help.py``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from tests.support.cli import Cli
from tests.support.fixtures import EXAMPLE, EXAMPLE_CONFIG, EXAMPLE_SNAPSHOT

if TYPE_CHECKING:
    from pathlib import Path


NEW = EXAMPLE / "new-key-only.yaml"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def _key(entry: dict[str, object]) -> tuple[object, object]:
    return entry["provider"], entry["name"]


# -- item 14 ----------------------------------------------------------------------------------


def test_reencrypt_takes_out_positionally_and_summarises_as_json(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "new.db"
    r = cli("reencrypt", EXAMPLE_SNAPSHOT, out, "--config", EXAMPLE_CONFIG, "--to", NEW, "-o", "json")
    assert r.code == 0, r
    assert out.is_file()
    summary = r.json()
    assert summary["output"] == str(out)
    (edge,) = summary["rewritten"]
    assert edge["revisions"] == 14
    assert _key(edge["from"]) == ("aescbc", "key1")
    assert re.fullmatch(r"[0-9a-f]{8}", edge["from"]["fingerprint"])
    assert _key(edge["to"]) == ("aesgcm", "gcm-2026")
    assert re.fullmatch(r"[0-9a-f]{8}", edge["to"]["fingerprint"])
    # the table is still the default, and names the same keys
    r = cli("reencrypt", EXAMPLE_SNAPSHOT, tmp_path / "new2.db", "-c", EXAMPLE_CONFIG, "--to", NEW)
    assert r.code == 0, r
    assert "aescbc/key1" in r.out
    assert edge["from"]["fingerprint"] in r.out


def test_decrypt_takes_out_positionally_and_summarises_as_json(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "plain.db"
    r = cli("decrypt", EXAMPLE_SNAPSHOT, out, "-c", EXAMPLE_CONFIG, "--output", "json")
    assert r.code == 0, r
    (edge,) = r.json()["rewritten"]
    assert edge["to"] == {"provider": "identity", "name": None, "fingerprint": None}
    assert _key(edge["from"]) == ("aescbc", "key1")


def test_rewrite_without_out_is_a_usage_error(cli: Cli) -> None:
    r = cli("decrypt", EXAMPLE_SNAPSHOT, "-c", EXAMPLE_CONFIG)
    assert r.code == 2
    assert "OUT" in r.err
    assert len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["reencrypt", "decrypt"])
def test_old_output_file_flags_are_gone(cli: Cli, tmp_path: Path, command: str) -> None:
    r = cli(command, EXAMPLE_SNAPSHOT, tmp_path / "x.db", "-c", EXAMPLE_CONFIG, "--format", "json")
    assert r.code == 2
    r = cli(command, EXAMPLE_SNAPSHOT, "-c", EXAMPLE_CONFIG, "-o", tmp_path / "x.db")
    assert r.code == 2  # -o is the format now
    assert not (tmp_path / "x.db").exists()

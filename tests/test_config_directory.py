"""Issue 11 item 9 (in part): in a ``--config`` directory, a file that is no encryption config is
skipped with a note instead of failing the command, and the report says which file is current
and why."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from snapshot_tools.errors import ConfigError
from snapshot_tools.keysets import load_keyset
from tests.support.cli import Cli
from tests.support.fixtures import EXAMPLE_CONFIG, EXAMPLE_SNAPSHOT

if TYPE_CHECKING:
    from pathlib import Path


def _history(tmp_path: Path) -> Path:
    d = tmp_path / "configs.d"
    d.mkdir()
    (d / "10-current.yaml").write_text(EXAMPLE_CONFIG.read_text())
    (d / "kustomization.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    return d


def test_other_documents_in_a_directory_are_skipped_with_a_note(tmp_path: Path) -> None:
    d = _history(tmp_path)
    ks = load_keyset([d])
    assert [c.path for c in ks.configs] == [str(d / "10-current.yaml")]
    assert any("kustomization.yaml" in n and "skipped" in n for n in ks.notes)
    assert any("current config" in n and "10-current.yaml" in n and "first" in n for n in ks.notes)


def test_a_broken_encryption_config_in_a_directory_still_fails(tmp_path: Path) -> None:
    d = _history(tmp_path)
    (d / "20-old.yaml").write_text(EXAMPLE_CONFIG.read_text().replace("aescbc", "aescbd"))
    with pytest.raises(ConfigError, match=r"20-old\.yaml"):
        load_keyset([d])


def test_a_file_given_by_name_is_never_skipped(tmp_path: Path) -> None:
    d = _history(tmp_path)
    with pytest.raises(ConfigError, match=r"kustomization\.yaml"):
        load_keyset([d / "kustomization.yaml"])


def test_check_notes_them(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = _history(tmp_path)
    code, report = Cli(capsys).check_json(EXAMPLE_SNAPSHOT, "-c", d)
    assert code == 0
    assert any("kustomization.yaml" in w for w in report["warnings"])
    assert any("10-current.yaml" in w for w in report["warnings"])


def test_a_directory_of_several_configs_needs_numbered_names(tmp_path: Path, cli: Cli) -> None:
    d = tmp_path / "history"
    d.mkdir()
    (d / "new.yaml").write_text(EXAMPLE_CONFIG.read_text())
    (d / "old.yaml").write_text(EXAMPLE_CONFIG.read_text())
    # Alphabetical order would make new.yaml current by accident of naming: refused.
    with pytest.raises(ConfigError, match=r"order their names do not give \(new\.yaml, old\.yaml\)"):
        load_keyset([d])
    result = cli("check", str(EXAMPLE_SNAPSHOT), "--config", str(d))
    assert result.code == 2
    assert len(result.err.splitlines()) == 1 and "10-current.yaml" in result.err
    (d / "new.yaml").rename(d / "10-new.yaml")
    (d / "old.yaml").rename(d / "20-old.yaml")
    assert [c.path for c in load_keyset([d]).configs] == [str(d / "10-new.yaml"), str(d / "20-old.yaml")]
    # One config needs no number; skipped documents do not count.
    single = tmp_path / "single"
    single.mkdir()
    (single / "encryption-config.yaml").write_text(EXAMPLE_CONFIG.read_text())
    (single / "notes.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert len(load_keyset([single]).configs) == 1

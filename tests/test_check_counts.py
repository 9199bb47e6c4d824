"""The headline counts include uncovered plaintext, and ``--all-revisions`` JSON marks deleted keys
(issue 11 item 10)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapshot_tools.errors import EXIT_OK
from tests.support.configs import IDENTITY, rule, write_config
from tests.support.k8s_objects import config_map, object_meta, secret
from tests.support.snapshots import build_db, kv_bytes, revision_key, write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli


def test_summary_line_counts_uncovered_plaintext(cli: Cli, tmp_path: Path) -> None:
    snap = write_snapshot(
        tmp_path / "s.db",
        {
            "/registry/secrets/default/s1": secret(object_meta("s1", "default"), {"k": b"v"}),
            "/registry/configmaps/default/c1": config_map(object_meta("c1", "default"), {"k": b"v"}),
            "/registry/configmaps/default/c2": config_map(object_meta("c2", "default"), {"k": b"w"}),
        },
    )
    config = write_config(tmp_path / "c.json", rule(["secrets"], IDENTITY))
    res = cli("check", snap, "-c", config)
    assert res.code == EXIT_OK
    assert "2 uncovered plaintext" in res.out.splitlines()[0]
    _, doc = cli.check_json(snap, "-c", config)
    assert doc["summary"]["uncovered_plaintext"] == 2


def _history_snapshot(path: Path) -> Path:
    """s-live: written twice; s-gone: written then deleted (its latest revision a tombstone)."""
    live, gone = b"/registry/secrets/default/s-live", b"/registry/secrets/default/s-gone"
    value = secret(object_meta("x", "default"), {"k": b"v"})
    records = {
        revision_key(2): kv_bytes(gone, create=2, mod=2, version=1, value=value),
        revision_key(3): kv_bytes(live, create=3, mod=3, version=1, value=value),
        revision_key(4): kv_bytes(live, create=3, mod=4, version=2, value=value),
        revision_key(5, tombstone=True): kv_bytes(gone, mod=5),
    }
    path.write_bytes(build_db({b"key": records, b"meta": {b"consistent_index": (1).to_bytes(8, "big")}}))
    return path


def test_all_revisions_json_marks_deleted_keys(cli: Cli, tmp_path: Path) -> None:
    snap = _history_snapshot(tmp_path / "h.db")
    config = write_config(tmp_path / "c.json", rule(["secrets"], IDENTITY))
    code, doc = cli.check_json(snap, "-c", config, "--all-revisions")
    assert code == EXIT_OK
    got = {(o["key"].rsplit("/", 1)[1], o["revision"]): (o["latest"], o["deleted"]) for o in doc["objects"]}
    assert got == {
        ("s-gone", 2): (False, True),
        ("s-live", 3): (False, False),
        ("s-live", 4): (True, False),
    }
    # The latest view has no deleted keys: the field is absent there, as "latest" is.
    _, latest = cli.check_json(snap, "-c", config)
    assert [o["key"].rsplit("/", 1)[1] for o in latest["objects"]] == ["s-live"]
    assert "deleted" not in latest["objects"][0]

"""Issue 11 item 8: a value no key of its stored name reads, but a key under another name does.

The b-aescbc fixture was written by a real kube-apiserver with aescbc key ``key1``; here its
material appears under a K3s-style timestamped name instead.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import yaml

from snapshot_tools.keysets import load_keyset
from snapshot_tools.providers import aescbc
from snapshot_tools.readers import Reader
from snapshot_tools.resources import KeyParser
from snapshot_tools.snapshot import Snapshot
from tests.support.configs import IDENTITY, rule, static, write_config
from tests.support.fixtures import config_path, snapshot_path

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

CASE = "b-aescbc"
SNAP = snapshot_path(CASE)
_FIXTURE_KEY = yaml.safe_load(config_path(CASE).read_text())["resources"][0]["providers"][0]["aescbc"]["keys"][0]
SECRET = base64.b64decode(_FIXTURE_KEY["secret"])
RENAMED = "key1-1700000000"


def _objects(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in report["objects"] if o["provider"] == "aescbc"]


def test_no_such_key_names_the_renamed_key(cli: Cli, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "renamed.json", rule(["secrets"], static("aescbc", (RENAMED, SECRET)), IDENTITY))
    rc, report = cli.check_json(SNAP, "-c", cfg)
    objs = _objects(report)
    assert objs and rc == 1
    for o in objs:
        assert (o["verdict"], o["reason"], o["key_name"]) == ("unreadable", "no-such-key", "key1")
        assert o["decrypts_with"]["provider"] == "aescbc"
        assert o["decrypts_with"]["name"] == RENAMED
        assert o["decrypts_with"]["config"] == str(cfg)
        assert o["decrypts_with"]["fingerprint"]
    human = cli("check", SNAP, "-c", cfg)
    assert RENAMED in human.out and "key1" in human.out
    assert base64.b64encode(SECRET).decode() not in human.out + json.dumps(report)


def test_wrong_key_names_the_key_that_would_decrypt(cli: Cli, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "reused.json",
        rule(["secrets"], static("aescbc", ("key1", bytes(32)), (RENAMED, SECRET)), IDENTITY),
    )
    rc, report = cli.check_json(SNAP, "-c", cfg)
    objs = _objects(report)
    assert objs and rc == 1
    assert {(o["reason"], o["decrypts_with"]["name"]) for o in objs} == {("wrong-key", RENAMED)}
    human = cli("check", SNAP, "-c", cfg)
    assert f"aescbc key {RENAMED}" in human.out


def test_readable_and_hopeless_values_have_no_decrypts_with(cli: Cli, tmp_path: Path) -> None:
    rc, report = cli.check_json(SNAP, "-c", config_path(CASE))
    assert rc == 0
    assert {o["decrypts_with"] for o in report["objects"]} == {None}
    cfg = write_config(tmp_path / "other.json", rule(["secrets"], static("aescbc", ("other", bytes(32))), IDENTITY))
    rc, report = cli.check_json(SNAP, "-c", cfg)
    assert rc == 1
    assert {o["decrypts_with"] for o in _objects(report)} == {None}


def test_other_names_are_searched_once_per_stored_name(tmp_path: Path) -> None:
    """Bounded work: the first unreadable value of a name tries every other key; the rest only
    the key that worked (here 30 decoys + the renamed key, 14 values)."""
    decoys = [(f"decoy{i}", bytes([i + 1]) * 32) for i in range(30)]
    cfg = write_config(tmp_path / "many.json", rule(["secrets"], static("aescbc", *decoys, (RENAMED, SECRET))))
    keyset = load_keyset([str(cfg)])
    reader = Reader(keyset, {})
    parse = KeyParser("/registry").parse
    provider = aescbc.PROVIDER
    calls = 0
    real = provider.decrypt

    def counting(key: bytes, body: bytes | memoryview, aad: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real(key, body, aad)

    values = [
        (rec.key, rec.value)
        for rec in Snapshot.open(SNAP).latest(b"/registry/secrets/")
        if rec.value.startswith(b"k8s:enc:")
    ]
    assert len(values) > 3
    object.__setattr__(provider, "decrypt", counting)  # a frozen record: count its calls
    try:
        results = [reader.resolve(k, v, parse(k)[0]) for k, v in values]
    finally:
        object.__setattr__(provider, "decrypt", real)
    assert {(r.reason, r.decrypts_with.name if r.decrypts_with else None) for r in results} == {
        ("no-such-key", RENAMED)
    }
    assert calls <= len(decoys) + 1 + (len(values) - 1)

"""A history of encryption configs turned into candidate keys (snapshot_tools/keysets.py).

Fixture configs are the exact files kube-apiserver v1.36.2 ran with (fixtures README); their
manifests list each key's material, which the loaded keys must equal. Paths are files or
directories (read in name order); the first config is the current one; every distinct
(provider, name, material) is a candidate, in config order.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest
import yaml

from snapshot_tools.errors import ConfigError
from snapshot_tools.keysets import StaticKey, load_keyset
from tests.support.config_text import ID, K16, K16B, K32, K32B, aescbc, load_text, one_rule, write
from tests.support.fixtures import FIXTURE_CASES, FIXTURES, load_manifest

if TYPE_CHECKING:
    from pathlib import Path

# --------------------------------------------------------------------------------------------
# fixtures: the configs a real apiserver ran with


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_fixture_config_keys_match_manifest(case: str) -> None:
    manifest = load_manifest(case)
    ks = load_keyset([FIXTURES / case / "encryption-config.yaml"])
    static = [k for k in ks.all_keys() if isinstance(k, StaticKey)]
    got = {f"{k.provider}/{k.name}": k for k in static}
    assert set(got) == set(manifest["keys"])
    for ident, want in manifest["keys"].items():
        key = got[ident]
        assert key.secret == base64.b64decode(want["secret_b64"])
        assert key.secret.hex() == want["hex"]
        assert key.config_index == 0
        assert key.config == str(FIXTURES / case / "encryption-config.yaml")
        assert ks.static_candidates(key.provider, key.name) == [key]
    # What the manifest says the apiserver wrote secrets with is the current writer.
    written = {o["last_written"]["provider"] for o in manifest["objects"] if o["kind"] == "Secret"}
    first = ks.current.write_provider("", "secrets")
    assert first is not None and written == {first.kind}


def test_fixture_kmsv2_provider() -> None:
    ks = load_keyset([FIXTURES / "g-kmsv2" / "encryption-config.yaml"])
    (kms,) = ks.kms_providers("testkms")
    assert (kms.api_version, kms.endpoint, kms.timeout_s, kms.cachesize) == (
        "v2",
        "unix:///var/run/kmsplugin/socket.sock",
        3.0,
        None,
    )
    assert kms.position == "resources[0].providers[0].kms"
    assert ks.kms_names("v2") == ["testkms"] and ks.kms_names("v1") == []
    assert ks.kms_provider("testkms", "v2") is kms and ks.kms_provider("testkms", "v1") is None
    assert ks.kms_all() == [kms]
    assert ks.active_identities() == {("kms-v2", "testkms", kms.fingerprint)}


def test_fixture_history_all_paths_first_is_current() -> None:
    paths = [FIXTURES / c / "encryption-config.yaml" for c in FIXTURE_CASES]
    ks = load_keyset(paths)
    assert [c.index for c in ks.configs] == list(range(len(paths)))
    assert ks.current.path == str(paths[0])
    assert FIXTURE_CASES[0] == "a-identity"
    assert ks.current.write_provider("", "secrets").kind == "identity"  # type: ignore[union-attr]
    assert not ks.current.covers("", "configmaps")
    assert ks.covered("", "configmaps")  # only f-secrets-configmaps covers it
    assert not ks.covered("apps", "deployments")


# --------------------------------------------------------------------------------------------
# paths and directories


def test_directory_loading_sorted_by_name(tmp_path: Path) -> None:
    d = tmp_path / "history"
    d.mkdir()
    write(d, "20-old.yaml", one_rule(aescbc(("k", K16))))
    write(d, "10-new.yml", one_rule(aescbc(("k", K32))))
    write(d, "30-k3s.json", json.dumps(yaml.safe_load(one_rule(aescbc(("k3", K16B))))))
    write(d, "README.txt", "not a config")
    write(d, "encryption-state.json", "start-" + "0" * 64)  # K3s marker, not JSON
    (d / "sub.yaml").mkdir()  # not a regular file
    ks = load_keyset([d])
    names = ("10-new.yml", "20-old.yaml", "30-k3s.json")
    assert [c.path for c in ks.configs] == [str(d / n) for n in names]
    assert ks.current.path == str(d / "10-new.yml")
    secrets = [k.secret for k in ks.static_candidates("aescbc", "k")]
    assert secrets == [base64.b64decode(K32), base64.b64decode(K16)]


def test_directory_then_file_order(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    write(d, "a.yaml", one_rule(aescbc(("a", K16))))
    f = write(tmp_path, "z.yaml", one_rule(aescbc(("z", K16B))))
    ks = load_keyset([f, d])
    assert [k.name for k in ks.all_keys()] == ["z", "a"]
    assert [c.index for c in ks.configs] == [0, 1]


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", "notes.txt", "x")
    with pytest.raises(ConfigError, match="directory holds no config files"):
        load_keyset([tmp_path / "empty"])


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_keyset([tmp_path / "nope.yaml"])
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file or directory"
    assert info.value.exit_code == 2


def test_no_paths() -> None:
    with pytest.raises(ConfigError):
        load_keyset([])


# --------------------------------------------------------------------------------------------
# candidates across configs


def test_same_name_other_material_two_candidates(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", one_rule(aescbc(("key1", K32))))
    b = write(tmp_path, "b.yaml", one_rule(aescbc(("key1", K32B))))
    ks = load_keyset([a, b])
    cands = ks.static_candidates("aescbc", "key1")
    assert [(c.secret, c.config, c.config_index) for c in cands] == [
        (base64.b64decode(K32), str(a), 0),
        (base64.b64decode(K32B), str(b), 1),
    ]
    assert cands[0].fingerprint != cands[1].fingerprint
    assert ks.static_names("aescbc") == ["key1"]
    assert len(ks.all_keys()) == 2
    # Stable objects: the resolver caches by identity.
    assert ks.static_candidates("aescbc", "key1")[1] is cands[1]


def test_identical_material_deduped(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", one_rule(aescbc(("key1", K32), ("key1", K32))))
    b = write(tmp_path, "b.yaml", one_rule(aescbc(("key1", K32))))
    ks = load_keyset([a, b])
    (only,) = ks.static_candidates("aescbc", "key1")
    assert only.config == str(a) and only.position == "resources[0].providers[0].aescbc.keys[0]"
    assert len(ks.all_keys()) == 1


def test_same_material_different_provider_or_name_is_separate(tmp_path: Path) -> None:
    gcm = f"  - aesgcm:\n      keys:\n      - name: a\n        secret: {K32}\n"
    text = one_rule(aescbc(("a", K32), ("b", K32)) + gcm)
    ks = load_text(tmp_path, text)
    assert [(k.provider, k.name) for k in ks.all_keys()] == [
        ("aescbc", "a"),
        ("aescbc", "b"),
        ("aesgcm", "a"),
    ]
    fps = [k.fingerprint for k in ks.all_keys()]
    assert fps[0] == fps[1] != fps[2]  # fingerprint follows (provider, material), not the name
    assert ks.static_candidates("aesgcm", "b") == []


def test_names_with_colons_are_kept_for_prefix_matching(tmp_path: Path) -> None:
    ks = load_text(tmp_path, one_rule(aescbc(("a", K16), ("a:b", K16B))))
    assert ks.static_names("aescbc") == ["a", "a:b"]


def test_active_identities_and_current(tmp_path: Path) -> None:
    cur = write(tmp_path, "cur.yaml", one_rule(aescbc(("new", K32), ("old", K16))))
    old = write(tmp_path, "old.yaml", one_rule(aescbc(("old", K16))))
    ks = load_keyset([cur, old])
    new_key = ks.static_candidates("aescbc", "new")[0]
    assert ks.active_identities() == {("aescbc", "new", new_key.fingerprint)}
    assert ks.current.path == str(cur)


def test_kms_v1_defaults_and_history(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        one_rule("  - kms:\n      name: vault\n      endpoint: unix:///run/v1.sock\n" + ID),
    )
    b = write(
        tmp_path,
        "b.yaml",
        one_rule(
            "  - kms:\n      name: vault\n      endpoint: unix:///run/other.sock\n"
            "      cachesize: -1\n"
            "      timeout: 500ms\n"
        ),
    )
    ks = load_keyset([a, b])
    v1, v1b = ks.kms_providers("vault")
    assert (v1.api_version, v1.timeout_s, v1.cachesize) == ("v1", 3.0, 1000)
    assert (v1b.timeout_s, v1b.cachesize, v1b.endpoint) == (0.5, -1, "unix:///run/other.sock")
    assert ks.kms_all() == [v1]
    assert ks.kms_names("v1") == ["vault"]
    # One row per provider identity in the key table.
    assert ks.all_keys() == [v1]
    assert v1.fingerprint == v1b.fingerprint and v1.provider == "kms-v1"

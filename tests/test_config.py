"""Reading one encryption config file and validating it the way kube-apiserver would
(snapshot_tools/config.py, and the selector lookup of snapshot_tools/config_model.py).

Formats: YAML and JSON, the legacy kind, K3s/RKE2 JSON and RKE's ``cluster.rkestate``. Error texts
mirror ``validation_encryption.go`` and the masking check in ``encryptionconfig/config.go``; no
error, repr or str shows key material. Key history across files: tests/test_keysets.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from snapshot_tools.config import ConfigFileError, parse_duration
from snapshot_tools.errors import ConfigError
from snapshot_tools.keysets import load_keyset
from tests.support.config_text import (
    HEAD,
    ID,
    K16,
    K16B,
    K28,
    K32,
    K32B,
    aescbc,
    error_of,
    load_text,
    one_rule,
    rules,
    write,
)
from tests.support.fixtures import FIXTURES

# --------------------------------------------------------------------------------------------
# formats


def test_fixture_as_json_equals_yaml(tmp_path: Path) -> None:
    src = FIXTURES / "b-aescbc" / "encryption-config.yaml"
    doc = yaml.safe_load(src.read_text())
    as_json = write(tmp_path, "enc.json", json.dumps(doc, separators=(",", ":")))
    a = load_keyset([src]).all_keys()
    b = load_keyset([as_json]).all_keys()
    assert [(k.provider, k.name, k.secret) for k in a] == [
        (k.provider, k.name, k.secret) for k in b
    ]


CBC_NAME = "aescbckey-2024-01-01T00:00:00Z"  # K3s names new keys <type>key-<RFC3339>
SB_NAME = "secretboxkey-2023-06-01T00:00:00Z"


def test_k3s_encryption_config_json(tmp_path: Path) -> None:
    # Shape of K3s/RKE2 server/cred/encryption-config.json (compact json.Marshal output).
    doc = {
        "kind": "EncryptionConfiguration",
        "apiVersion": "apiserver.config.k8s.io/v1",
        "resources": [
            {
                "resources": ["secrets"],
                "providers": [
                    {"aescbc": {"keys": [{"name": CBC_NAME, "secret": K32}]}},
                    {"secretbox": {"keys": [{"name": SB_NAME, "secret": K32B}]}},
                    {"identity": {}},
                ],
            }
        ],
    }
    ks = load_text(tmp_path, json.dumps(doc, separators=(",", ":")), "encryption-config.json")
    providers = ks.current.providers_for("", "secrets")
    assert providers is not None
    assert [p.kind for p in providers] == ["aescbc", "secretbox", "identity"]
    assert ks.static_names("aescbc") == [CBC_NAME]
    assert ks.static_candidates("secretbox", SB_NAME)[0].secret == bytes(range(32))
    assert ks.current.identity_listed("", "secrets")


def test_json_error_has_line(tmp_path: Path) -> None:
    doc = yaml.safe_load(one_rule(aescbc(("k", "'!!'"))))
    err = error_of(tmp_path, json.dumps(doc, indent=2), "enc.json")
    assert isinstance(err, ConfigFileError)
    assert err.position == "resources[0].providers[0].aescbc.keys[0].secret"
    assert err.line == 15  # the "secret" line of json.dumps(indent=2)
    assert "secrets must be base64 encoded" in str(err)


def test_legacy_kind(tmp_path: Path) -> None:
    # RKE's older template (templates.MultiKeyEncryptionProviderFile) and upstream legacy.yaml.
    text = (
        "apiVersion: v1\nkind: EncryptionConfig\nresources:\n"
        "- resources:\n  - secrets\n  providers:\n"
        + aescbc(("key1", K16), ("key2", K16B))
        + "  - identity: {}"
    )
    ks = load_text(tmp_path, text)
    assert [k.name for k in ks.all_keys()] == ["key1", "key2"]
    writer = ks.current.write_provider("", "secrets")
    assert writer is not None and writer.keys[0].secret == b"secret is secure"


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [
        ("v1", "EncryptionConfiguration"),
        ("apiserver.config.k8s.io/v1", "EncryptionConfig"),
        ("apiserver.config.k8s.io/v1", "Secret"),
        ("apiserver.config.k8s.io/v1beta1", "EncryptionConfiguration"),
    ],
)
def test_wrong_type_meta(tmp_path: Path, api_version: str, kind: str) -> None:
    text = one_rule(ID).replace(HEAD, f"apiVersion: {api_version}\nkind: {kind}\n")
    err = error_of(tmp_path, text)
    assert err.position == "kind"  # type: ignore[attr-defined]
    assert "not an encryption config" in str(err)


def test_missing_kind(tmp_path: Path) -> None:
    err = error_of(tmp_path, "apiVersion: apiserver.config.k8s.io/v1\nresources: []\n")
    assert str(err).startswith(f"{tmp_path / 'c.yaml'}: kind (line 1): kind is required")


def _rke_state(current: str | None, desired: str | None, **extra: object) -> str:
    def state(enc: str | None) -> dict[str, object]:
        out: dict[str, object] = {
            "rkeConfig": {
                "nodes": [
                    {"address": "10.0.0.5", "role": ["controlplane", "etcd"], "user": "rke"}
                ],
                "services": {"kubeApi": {"secretsEncryptionConfig": {"enabled": True}}},
                "kubernetesVersion": "v1.26.8-rancher1-1",
            },
            "certificatesBundle": {
                "kube-ca": {"certificatePEM": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END..."}
            },
        }
        if enc is not None:
            out["encryptionConfig"] = enc
        return out

    doc = {"desiredState": state(desired), "currentState": state(current)}
    doc.update(extra)
    return json.dumps(doc, indent="  ")


# rancher/rke templates.MultiKeyEncryptionProviderFile, as kept in State.EncryptionConfig.
RKE_TEMPLATE = (
    "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
    "- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n{keys}  - identity: {{}}"
)


def _rke_keys(*keys: tuple[str, str]) -> str:
    return "".join(f"      - name: {n}\n        secret: {s}\n" for n, s in keys)


def test_rkestate_current_and_desired(tmp_path: Path) -> None:
    # Mid-rotation: currentState already lists the new key first, desiredState still the old.
    current = RKE_TEMPLATE.format(keys=_rke_keys(("key-new", K32), ("key-old", K16)))
    desired = RKE_TEMPLATE.format(keys=_rke_keys(("key-old", K16)))
    path = write(tmp_path, "cluster.rkestate", _rke_state(current, desired))
    ks = load_keyset([path])
    assert [c.path for c in ks.configs] == [f"{path}#currentState", f"{path}#desiredState"]
    assert all(c.file == str(path) for c in ks.configs)
    writer = ks.current.write_provider("", "secrets")
    assert writer is not None and writer.keys[0].name == "key-new"
    # key-old appears in both with the same material: one candidate, from currentState.
    (old,) = ks.static_candidates("aescbc", "key-old")
    assert old.config == f"{path}#currentState" and old.config_index == 0
    assert ks.static_names("aescbc") == ["key-new", "key-old"]


def test_rkestate_identical_states_give_one_config(tmp_path: Path) -> None:
    enc = RKE_TEMPLATE.format(keys=_rke_keys(("key-abcde", K32)))
    ks = load_keyset([write(tmp_path, "cluster.rkestate", _rke_state(enc, enc))])
    assert len(ks.configs) == 1


def test_rkestate_legacy_template_and_any_name(tmp_path: Path) -> None:
    legacy = "apiVersion: v1\nkind: EncryptionConfig\n" + RKE_TEMPLATE.split("\n", 2)[2].format(
        keys=_rke_keys(("key-zz9", K32))
    )
    # Detected by content too, whatever the file is called.
    ks = load_keyset([write(tmp_path, "state.json", _rke_state(legacy, None))])
    assert [k.name for k in ks.all_keys()] == ["key-zz9"]


def test_rkestate_custom_config_fallback(tmp_path: Path) -> None:
    providers = [{"aesgcm": {"keys": [{"name": "g", "secret": K32}]}}]
    custom = {"resources": [{"resources": ["secrets"], "providers": providers}]}
    doc = json.loads(_rke_state(None, None))
    kube_api = doc["currentState"]["rkeConfig"]["services"]["kubeApi"]
    kube_api["secretsEncryptionConfig"]["customConfig"] = custom
    ks = load_keyset([write(tmp_path, "cluster.rkestate", json.dumps(doc))])
    assert [(k.provider, k.name) for k in ks.all_keys()] == [("aesgcm", "g")]


def test_rkestate_without_encryption(tmp_path: Path) -> None:
    err = error_of(tmp_path, _rke_state(None, None), "cluster.rkestate")
    assert "RKE state holds no encryption config" in str(err)


def test_rkestate_embedded_error_names_section(tmp_path: Path) -> None:
    bad = RKE_TEMPLATE.format(keys=_rke_keys(("key-x", "not*base64")))
    err = error_of(tmp_path, _rke_state(bad, None), "cluster.rkestate")
    assert str(err) == (
        f"{tmp_path / 'cluster.rkestate'} (currentState.encryptionConfig): "
        "resources[0].providers[0].aescbc.keys[0].secret (line 10): secrets must be base64 encoded"
    )


# --------------------------------------------------------------------------------------------
# files that are not a config


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_read_error_is_config_error() -> None:
    # /proc/self/mem exists and opens, but reading offset 0 fails with EIO: a real OSError.
    with pytest.raises(ConfigError, match=r"^/proc/self/mem: cannot read: "):
        load_keyset(["/proc/self/mem"])


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "snap.yaml"
    path.write_bytes(b"\x00\xff\xfe bolt")
    with pytest.raises(ConfigError, match="not a text file"):
        load_keyset([path])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty file"),
        ("# only a comment\n", "empty file"),
        (one_rule(ID) + "---\n" + one_rule(ID), "expected a single document"),
        ("resources: [\n", "invalid YAML"),
        ("- just\n- a list\n", "expected an object, got list"),
    ],
)
def test_unusable_documents(tmp_path: Path, text: str, reason: str) -> None:
    err = error_of(tmp_path, text)
    assert reason in str(err)
    assert "\n" not in str(err)
    assert err.exit_code == 2


def test_invalid_yaml_does_not_quote_the_line(tmp_path: Path) -> None:
    text = one_rule(f"  - aescbc:\n      keys:\n      - name: k\n        secret: {K32}: {K16}\n")
    err = error_of(tmp_path, text)
    assert "invalid YAML" in str(err) and "line 10" in str(err)
    assert K32 not in str(err) and K16 not in str(err)


# --------------------------------------------------------------------------------------------
# durations (KMS timeouts)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3s", 3.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0), ("2h45m", 9900.0),
        ("100us", 1e-4), ("100µs", 1e-4), ("10ns", 1e-8), ("0", 0.0), ("+5s", 5.0),
        ("-1s", -1.0), (".5s", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["3", "", "1d", "s", "3 s", "1.2.3s", "-", "3sec"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("timeout", "seconds"), [("3s", 3.0), ("500ms", 0.5), ("1m30s", 90.0), ("'10s'", 10.0)]
)
def test_kms_timeout_in_config(tmp_path: Path, timeout: str, seconds: float) -> None:
    text = one_rule(KMS + f"      timeout: {timeout}\n")
    (kms,) = load_text(tmp_path, text).kms_providers("k")
    assert kms.timeout_s == pytest.approx(seconds)


# --------------------------------------------------------------------------------------------
# selector semantics (transformerFromOverrides)

SELECTOR_CONFIG = (
    HEAD
    + "resources:\n"
    + "- resources: [secrets]\n  providers:\n" + aescbc(("first", K16))
    + "- resources: [secrets, configmaps]\n  providers:\n  - identity: {}\n"
    + "- resources: ['*.apps']\n  providers:\n"
    + "  - aesgcm:\n      keys: [{name: apps, secret: " + K32 + "}]\n"
    + "- resources: [pandas.awesome.bears.example]\n  providers:\n"
    + "  - kms: {apiVersion: v2, name: bears, endpoint: 'unix:///@bears'}\n"
    + "- resources: ['*.']\n  providers:\n"
    + "  - secretbox:\n      keys: [{name: core, secret: " + K32B + "}]\n"
    + "- resources: ['*.*']\n  providers:\n  - identity: {}\n" + aescbc(("everything", K16B))
)


def test_selector_lookup_order(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, SELECTOR_CONFIG).current

    def kinds(group: str, resource: str) -> list[str]:
        found = cfg.providers_for(group, resource)
        assert found is not None
        return [p.kind for p in found]

    # exact entry; the same exact resource in a later entry appends its providers
    assert kinds("", "secrets") == ["aescbc", "identity"]
    assert kinds("", "configmaps") == ["identity"]
    # <group>.* beats *.*
    assert kinds("apps", "deployments") == ["aesgcm"]
    assert kinds("awesome.bears.example", "pandas") == ["kms"]
    # *. covers the core group only
    assert kinds("", "pods") == ["secretbox"]
    # *.* covers the rest, including CRs that did not exist when the config was written
    assert kinds("batch", "jobs") == ["identity", "aescbc"]
    assert kinds("awesome.bears.example", "koalas") == ["identity", "aescbc"]
    assert cfg.write_provider("", "secrets").keys[0].name == "first"  # type: ignore[union-attr]
    assert cfg.write_provider("batch", "jobs").kind == "identity"  # type: ignore[union-attr]
    assert cfg.identity_listed("", "secrets") and not cfg.identity_listed("apps", "deployments")
    assert cfg.covers("x.y", "z")


def test_uncovered_resource(tmp_path: Path) -> None:
    ks = load_text(tmp_path, one_rule(aescbc(("k", K16))))
    cfg = ks.current
    assert cfg.providers_for("", "configmaps") is None
    assert cfg.write_provider("", "configmaps") is None
    assert not cfg.covers("", "configmaps") and not cfg.identity_listed("", "configmaps")
    assert not ks.covered("", "configmaps") and ks.covered("", "secrets")


def test_exact_before_wildcard_is_not_masked(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, rules(("[secrets]", ID), ("['*.']", aescbc(("k", K16))))).current
    assert [p.kind for p in cfg.providers_for("", "secrets") or ()] == ["identity"]
    assert [p.kind for p in cfg.providers_for("", "pods") or ()] == ["aescbc"]


# --------------------------------------------------------------------------------------------
# validation errors: exact position text


def test_brief_example_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = (
        HEAD
        + "resources:\n- resources:\n  - secrets\n  providers:\n  - aescbc:\n      keys:\n"
        + "      - secret: this-is-not-base64!\n        name: key1\n"
    )
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_keyset(["config.yaml"])
    assert str(info.value) == (
        "config.yaml: resources[0].providers[0].aescbc.keys[0].secret (line 9): "
        "secrets must be base64 encoded"
    )
    assert info.value.exit_code == 2
    err = info.value
    assert isinstance(err, ConfigFileError)
    assert (err.file, err.position, err.line) == (
        "config.yaml",
        "resources[0].providers[0].aescbc.keys[0].secret",
        9,
    )


KMS = "  - kms:\n      apiVersion: v2\n      name: k\n      endpoint: unix:///s\n"

ERROR_CASES = [
    # (id, document, position, reason substring)
    (
        "no-resources",
        HEAD + "resources: []\n",
        "resources",
        "at least one resources is required",
    ),
    (
        "resources-missing",
        HEAD,
        "resources",
        "at least one resources is required",
    ),
    (
        "entry-no-selectors",
        HEAD + "resources:\n- resources: []\n  providers: [identity: {}]\n",
        "resources[0].resources",
        "at least one resources[0].resources is required",
    ),
    (
        "entry-no-providers",
        HEAD + "resources:\n- resources: [secrets]\n  providers: []\n",
        "resources[0].providers",
        "at least one resources[0].providers is required",
    ),
    (
        "two-types",
        one_rule("  - identity: {}\n    aescbc:\n      keys: [{name: k, secret: " + K16 + "}]\n"),
        "resources[0].providers[0]",
        "more than one provider specified in a single element",
    ),
    (
        "no-type",
        one_rule("  - {}\n"),
        "resources[0].providers[0]",
        "provider does not contain any of the expected providers",
    ),
    (
        "keys-empty",
        one_rule("  - aescbc:\n      keys: []\n"),
        "resources[0].providers[0].aescbc.keys",
        "at least one keys is required",
    ),
    (
        "keys-missing",
        one_rule("  - secretbox: {}\n"),
        "resources[0].providers[0].secretbox.keys",
        "at least one keys is required",
    ),
    (
        "key-no-name",
        one_rule(aescbc(("''", K16))),
        "resources[0].providers[0].aescbc.keys[0].name",
        "name is a mandatory field for a key",
    ),
    (
        "key-no-secret",
        one_rule("  - aesgcm:\n      keys:\n      - name: k\n"),
        "resources[0].providers[0].aesgcm.keys[0].secret",
        "secret is a mandatory field for a key",
    ),
    (
        "secret-not-b64",
        one_rule(aescbc(("k", "'%%%%'"))),
        "resources[0].providers[0].aescbc.keys[0].secret",
        "secrets must be base64 encoded",
    ),
    (
        "secret-unpadded",
        one_rule(aescbc(("k", K16.rstrip("=")))),
        "resources[0].providers[0].aescbc.keys[0].secret",
        "secrets must be base64 encoded",
    ),
    (
        "secret-urlsafe",
        one_rule(aescbc(("k", base64.urlsafe_b64encode(b"\xfb\xff" * 8).decode()))),
        "resources[0].providers[0].aescbc.keys[0].secret",
        "secrets must be base64 encoded",
    ),
    (
        "secret-extra-padding",
        one_rule(aescbc(("k", K16 + "=="))),
        "resources[0].providers[0].aescbc.keys[0].secret",
        "secrets must be base64 encoded",
    ),
    (
        "aes-28-bytes",
        one_rule(aescbc(("k", K28))),
        "resources[0].providers[0].aescbc.keys[0].secret",
        "secret is not of the expected length, got 28, expected one of [16 24 32]",
    ),
    (
        "secretbox-16-bytes",
        one_rule("  - secretbox:\n      keys: [{name: s, secret: " + K16 + "}]\n"),
        "resources[0].providers[0].secretbox.keys[0].secret",
        "secret is not of the expected length, got 16, expected one of [32]",
    ),
    (
        "second-key-bad",
        one_rule(aescbc(("a", K16), ("b", "'@@@@'"))),
        "resources[0].providers[0].aescbc.keys[1].secret",
        "secrets must be base64 encoded",
    ),
    (
        "kms-no-name",
        one_rule("  - kms:\n      endpoint: unix:///s\n"),
        "resources[0].providers[0].kms.name",
        "name is a mandatory field for a provider",
    ),
    (
        "kms-v2-colon",
        one_rule(KMS.replace("name: k", "name: a:b")),
        "resources[0].providers[0].kms.name",
        "invalid KMS provider name a:b, must not contain ':'",
    ),
    (
        "kms-no-endpoint",
        one_rule("  - kms:\n      name: k\n"),
        "resources[0].providers[0].kms.endpoint",
        "endpoint is a mandatory field for a kms",
    ),
    (
        "kms-tcp",
        one_rule(KMS.replace("unix:///s", "tcp://127.0.0.1:80")),
        "resources[0].providers[0].kms.endpoint",
        'unsupported scheme "tcp" for KMS provider, only unix is supported',
    ),
    (
        "kms-bare-path",
        one_rule(KMS.replace("unix:///s", "/run/kms.sock")),
        "resources[0].providers[0].kms.endpoint",
        'unsupported scheme "" for KMS provider',
    ),
    (
        "kms-api-v3",
        one_rule(KMS.replace("apiVersion: v2", "apiVersion: v3")),
        "resources[0].providers[0].kms.apiVersion",
        "only v1 and v2 are supported",
    ),
    (
        "kms-timeout-zero",
        one_rule(KMS + "      timeout: 0s\n"),
        "resources[0].providers[0].kms.timeout",
        "timeout should be a positive value",
    ),
    (
        "kms-timeout-negative",
        one_rule(KMS + "      timeout: -3s\n"),
        "resources[0].providers[0].kms.timeout",
        "timeout should be a positive value",
    ),
    (
        "kms-timeout-no-unit",
        one_rule(KMS + "      timeout: '3'\n"),
        "resources[0].providers[0].kms.timeout",
        "invalid duration",
    ),
    (
        "kms-timeout-number",
        one_rule(KMS + "      timeout: 3\n"),
        "resources[0].providers[0].kms.timeout",
        "expected a duration string",
    ),
    (
        "kms-v2-cachesize",
        one_rule(KMS + "      cachesize: 10\n"),
        "resources[0].providers[0].kms.cachesize",
        "cachesize is not supported in v2",
    ),
    (
        "kms-v1-cachesize-0",
        one_rule("  - kms:\n      name: k\n      endpoint: unix:///s\n      cachesize: 0\n"),
        "resources[0].providers[0].kms.cachesize",
        "cachesize should be a positive value, or negative to disable",
    ),
    (
        "kms-cachesize-type",
        one_rule("  - kms:\n      name: k\n      endpoint: unix:///s\n      cachesize: lots\n"),
        "resources[0].providers[0].kms.cachesize",
        "expected a 32-bit integer",
    ),
    (
        "kms-v2-duplicate",
        rules(("[secrets]", KMS), ("[configmaps]", KMS)),
        "resources[1].providers[0].kms.name",
        "duplicate KMS provider name k, names must be unique",
    ),
    (
        "kms-v2-after-v1-same-name",
        one_rule("  - kms:\n      name: k\n      endpoint: unix:///s\n" + KMS),
        "resources[0].providers[1].kms.name",
        "duplicate KMS provider name k",
    ),
    # selectors (validateResourceNames / validateResourceOverlap)
    (
        "star",
        one_rule("  - identity: {}\n", "  - '*'\n"),
        "resources[0].resources[0]",
        "use '*.' to encrypt all the resources",
    ),
    (
        "resource-across-groups",
        one_rule("  - identity: {}\n", "  - secrets.*\n"),
        "resources[0].resources[0]",
        "encrypting the same resource across groups is not supported",
    ),
    (
        "capitals",
        one_rule("  - identity: {}\n", "  - configmaps\n  - Secrets\n"),
        "resources[0].resources[1]",
        "resource name should not contain capital letters",
    ),
    (
        "events-group",
        one_rule("  - identity: {}\n", "  - events.events.k8s.io\n"),
        "resources[0].resources[0]",
        "Use 'events' instead",
    ),
    (
        "events-wildcard",
        one_rule("  - identity: {}\n", "  - '*.events.k8s.io'\n"),
        "resources[0].resources[0]",
        "Use 'events' instead",
    ),
    (
        "extensions",
        one_rule("  - identity: {}\n", "  - ingresses.extensions\n"),
        "resources[0].resources[0]",
        "'extensions' group has been removed",
    ),
    (
        "apiserveripinfo",
        one_rule("  - identity: {}\n", "  - apiserveripinfo\n"),
        "resources[0].resources[0]",
        "resources which do not have REST API/s cannot be encrypted",
    ),
    (
        "serviceipallocations",
        one_rule("  - identity: {}\n", "  - serviceipallocations\n"),
        "resources[0].resources[0]",
        "resources which do not have REST API/s",
    ),
    (
        "servicenodeportallocations",
        one_rule("  - identity: {}\n", "  - servicenodeportallocations\n"),
        "resources[0].resources[0]",
        "resources which do not have REST API/s",
    ),
    (
        "duplicate",
        one_rule("  - identity: {}\n", "  - secrets\n  - secrets\n"),
        "resources[0].resources",
        "the same resource cannot be specified multiple times",
    ),
    (
        "overlap-core",
        one_rule("  - identity: {}\n", "  - secrets\n  - '*.'\n"),
        "resources[0].resources",
        "using overlapping resources such as 'secrets' and '*.'",
    ),
    (
        "overlap-group",
        one_rule("  - identity: {}\n", "  - '*.apps'\n  - deployments.apps\n"),
        "resources[0].resources",
        "overlapping",
    ),
    (
        "overlap-all",
        one_rule("  - identity: {}\n", "  - '*.*'\n  - pandas.awesome.bears.example\n"),
        "resources[0].resources",
        "overlapping",
    ),
    # masking across entries (getTransformerOverridesAndKMSPluginProbes)
    (
        "masked-core",
        rules(("['*.']", ID), ("[configmaps, secrets]", ID)),
        "resources[1].resources[0]",
        'resource "configmaps" is masked by earlier rule "*."',
    ),
    (
        "masked-all",
        rules(("['*.*']", ID), ("[deployments.apps]", ID)),
        "resources[1].resources[0]",
        'resource "deployments.apps" is masked by earlier rule "*.*"',
    ),
    (
        "masked-group-twice",
        rules(("['*.apps']", ID), ("['*.apps']", ID)),
        "resources[1].resources[0]",
        'resource "*.apps" is masked by earlier rule "*.apps"',
    ),
    # strict decoding
    (
        "unknown-top",
        one_rule("  - identity: {}\n") + "metadata: {name: x}\n",
        "metadata",
        'unknown field "metadata"',
    ),
    (
        "unknown-key-field",
        one_rule("  - aescbc:\n      keys: [{name: k, secret: " + K16 + ", size: 16}]\n"),
        "resources[0].providers[0].aescbc.keys[0].size",
        'unknown field "size"',
    ),
    (
        "unknown-provider",
        one_rule("  - aesctr: {keys: []}\n"),
        "resources[0].providers[0].aesctr",
        'unknown field "aesctr"',
    ),
    (
        "unknown-kms-field",
        one_rule(KMS + "      endpiont: unix:///x\n"),
        "resources[0].providers[0].kms.endpiont",
        'unknown field "endpiont"',
    ),
    (
        "identity-with-fields",
        one_rule("  - identity: {enabled: true}\n"),
        "resources[0].providers[0].identity.enabled",
        "unknown field",
    ),
    (
        "duplicate-field",
        one_rule("  - identity: {}\n") + "resources: []\n",
        "resources",
        "duplicate field",
    ),
    (
        "selectors-not-list",
        HEAD + "resources:\n- resources: secrets\n  providers: [identity: {}]\n",
        "resources[0].resources",
        "expected a list, got string",
    ),
    (
        "selector-not-string",
        one_rule("  - identity: {}\n", "  - 5\n"),
        "resources[0].resources[0]",
        "expected a string, got number",
    ),
    (
        "name-not-string",
        one_rule(aescbc(("123", K16))),
        "resources[0].providers[0].aescbc.keys[0].name",
        "expected a string, got number",
    ),
    (
        "provider-not-object",
        one_rule("  - identity\n"),
        "resources[0].providers[0]",
        "expected an object, got string",
    ),
]


@pytest.mark.parametrize(
    ("doc", "position", "reason"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_validation_errors(tmp_path: Path, doc: str, position: str, reason: str) -> None:
    err = error_of(tmp_path, doc)
    assert isinstance(err, ConfigError) and err.exit_code == 2
    assert err.position == position, str(err)  # type: ignore[attr-defined]
    assert reason in err.reason  # type: ignore[attr-defined]
    shown = str(tmp_path / "c.yaml")
    assert str(err).startswith(f"{shown}: {position} (line ")
    assert "\n" not in str(err)
    # Line numbers point into the document.
    assert 1 <= err.line <= doc.count("\n") + 1  # type: ignore[attr-defined]


def test_line_number_of_second_entry(tmp_path: Path) -> None:
    kms = "  - kms:\n      name: k\n      endpoint: tcp://x\n"
    doc = rules(("[secrets]", ID), ("[configmaps]", kms))
    err = error_of(tmp_path, doc)
    assert err.position == "resources[1].providers[0].kms.endpoint"  # type: ignore[attr-defined]
    assert err.line == 11  # type: ignore[attr-defined]


def test_wrong_type_reported_once(tmp_path: Path) -> None:
    err = error_of(tmp_path, HEAD + "resources:\n- resources: secrets\n  providers: [identity: {}]\n")
    assert str(err).endswith("resources[0].resources (line 4): expected a list, got string")


def test_several_errors_counted(tmp_path: Path) -> None:
    err = error_of(tmp_path, one_rule(aescbc(("a", "'!!!!'"), ("''", K28))))
    assert str(err).endswith("secrets must be base64 encoded (and 2 more errors)")


def test_v1_kms_names_may_repeat(tmp_path: Path) -> None:
    # Only KMS v2 names must be unique (v1 only under automatic reload, which we do not model).
    v1 = "  - kms:\n      name: k\n      endpoint: unix:///s\n"
    ks = load_text(tmp_path, rules(("[secrets]", v1), ("[configmaps]", v1)))
    assert ks.kms_names("v1") == ["k"]


def test_valid_selectors_accepted(tmp_path: Path) -> None:
    selectors = ("secrets", "configmaps", "*.apps", "pandas.awesome.bears.example", "events")
    cfg = load_text(tmp_path, rules((json.dumps(list(selectors)), ID))).current
    assert cfg.rules[0].resources == selectors
    assert cfg.covers("apps", "statefulsets") and cfg.covers("", "events")


def test_base64_with_newlines_accepted_like_go(tmp_path: Path) -> None:
    # Go's base64.StdEncoding skips \r and \n; a folded YAML scalar can carry them.
    folded = K32[:20] + "\\n" + K32[20:]
    doc = one_rule(f'  - aescbc:\n      keys:\n      - name: k\n        secret: "{folded}"\n')
    (key,) = load_text(tmp_path, doc).all_keys()
    assert key.secret == base64.b64decode(K32)  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# no key material anywhere


def _forms(b64: str) -> list[str]:
    raw = base64.b64decode(b64)
    return [b64, raw.hex(), repr(raw), raw.decode("latin-1")]


def test_no_material_in_repr_or_str(tmp_path: Path) -> None:
    ks = load_text(tmp_path, SELECTOR_CONFIG)
    texts = [repr(ks), str(ks), repr(ks.configs), str(ks.current)]
    texts += [repr(k) for k in ks.all_keys()] + [str(k) for k in ks.all_keys()]
    texts += [repr(ks.current.providers_for("", "secrets")), repr(ks.current.rules)]
    assert any("fingerprint=" in t for t in texts)
    for secret in (K16, K32, K32B, K16B):
        for form in _forms(secret):
            for text in texts:
                assert form not in text


@pytest.mark.parametrize(
    "doc",
    [
        one_rule(aescbc(("k", K28))),  # wrong length: valid base64 of a real-looking secret
        one_rule("  - secretbox:\n      keys: [{name: s, secret: " + K16 + "}]\n"),
        # a secret as a field name
        one_rule("  - aescbc:\n      keys: [{name: k, secret: " + K16 + ", " + K32 + ": x}]\n"),
        one_rule(aescbc(("k", K16)) + "  - bogus: " + K32 + "\n"),
        one_rule(aescbc(("k", K16)) + "  - " + K16.rstrip("=") + ": {}\n"),  # unpadded, field-like
        one_rule(aescbc(("k", K32)) + ID + "  -\t" + K16 + "\n"),  # YAML error on that line
    ],
)
def test_no_material_in_errors(tmp_path: Path, doc: str) -> None:
    err = error_of(tmp_path, doc)
    for secret in (K16, K32, K28):
        for form in _forms(secret):
            assert form not in str(err)
            assert form not in repr(err)

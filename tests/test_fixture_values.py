"""Every stored value of every fixture decrypts with the fixture's keys and decodes to the data
the manifest says was written at that revision.

Fixtures: shared/fixtures/apiserver-v1.36 (kube-apiserver v1.36.2 + etcd 3.5.1; see its README).
``etcd-raw-values.json`` holds the raw etcd value of every revision written; the manifest's
``objects[].history[]`` holds the data as written at each revision. Static keys come from the
manifest ``keys`` and must agree with ``encryption-config.yaml``. The g-kmsv2 case goes through
:class:`~snapshot_tools.unwrap.PluginUnwrapper` against a real gRPC KMS v2 plugin on a unix socket
(tests/support/kms.py) wrapping with the fixture's KEK, behind a
:class:`~snapshot_tools.unwrap.CachingUnwrapper`.
"""

from __future__ import annotations

import base64
import codecs
import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from snapshot_tools import objects
from snapshot_tools.providers import (
    format_of,
    identity,
    kms_prefix,
    kmsv2,
    static_prefix,
    storage_form,
)
from snapshot_tools.unwrap import CachingUnwrapper, PluginUnwrapper
from tests.support.fixtures import FIXTURES, config_path, fixture_kek, load_manifest
from tests.support.kms import TestKMSPlugin

if TYPE_CHECKING:
    from pathlib import Path

STATIC_CASES = ["a-identity", "b-aescbc", "c-aesgcm", "d-secretbox", "f-secrets-configmaps"]


def _load(case: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    manifest = load_manifest(case)
    raw = json.loads((FIXTURES / case / "etcd-raw-values.json").read_text())["values"]
    assert raw, case
    return manifest, raw


def _history(manifest: dict[str, Any]) -> dict[tuple[str, int], tuple[dict, dict]]:
    out = {}
    for obj in manifest["objects"]:
        for entry in obj["history"]:
            if entry.get("etcd_mod_revision") is not None:
                out[(obj["etcd_key"], entry["etcd_mod_revision"])] = (obj, entry)
    return out


def _static_keys(case: str, manifest: dict[str, Any]) -> dict[tuple[str, str], bytes]:
    """``(provider, name) -> key`` from the manifest, checked against the config file."""
    entries = manifest["keys"].values()
    keys = {(k["provider"], k["name"]): base64.b64decode(k["secret_b64"]) for k in entries}
    for k in manifest["keys"].values():
        assert base64.b64decode(k["secret_b64"]).hex() == k["hex"]
    config = yaml.safe_load(config_path(case).read_text())
    from_config = {}
    for resource in config["resources"]:
        for provider in resource["providers"]:
            for kind, body in provider.items():
                for key in (body or {}).get("keys", []):
                    from_config[(kind, key["name"])] = base64.b64decode(key["secret"])
    assert from_config == keys
    return keys


def _check_decoded(plaintext: bytes, obj: dict[str, Any], entry: dict[str, Any]) -> None:
    assert objects.is_kubernetes_object(plaintext)
    decoded = objects.decode_object(plaintext)
    meta = decoded["metadata"]
    assert (decoded["apiVersion"], decoded["kind"]) == ("v1", obj["kind"])
    assert meta["namespace"] == obj["namespace"]
    assert (meta["name"], meta["uid"]) == (obj["name"], obj["uid"])
    assert meta["creationTimestamp"].endswith("Z")
    assert meta.get("labels", {}) == obj.get("labels", {})
    assert meta.get("annotations", {}) == obj.get("annotations", {})
    if obj["kind"] == "Secret":
        want = {k: base64.b64decode(v) for k, v in entry["data_b64"].items()}
        assert decoded.get("data", {}) == want
        assert decoded.get("type") == entry["type"]
        assert decoded.get("immutable") == entry["immutable"]
    else:
        assert decoded.get("data", {}) == entry["data"]
        want_bin = {k: base64.b64decode(v) for k, v in entry["binaryData_b64"].items()}
        assert decoded.get("binaryData", {}) == want_bin


@pytest.mark.parametrize("case", STATIC_CASES)
def test_static_fixture_values(case: str) -> None:
    manifest, raw = _load(case)
    keys = _static_keys(case, manifest)
    history = _history(manifest)
    forms = set()
    for record in raw:
        value = base64.b64decode(record["value_b64"])
        etcd_key = record["etcd_key"].encode()
        obj, entry = history[(record["etcd_key"], record["mod_revision"])]
        prefix = codecs.decode(entry["etcd_value_prefix"], "unicode_escape").encode("latin-1")
        assert value.startswith(prefix)
        form, name = storage_form(value)
        assert form == entry["provider"]
        forms.add(form)
        fmt = format_of(value)
        assert fmt is not None and fmt.name == form
        if fmt.static is None:
            assert form == "identity"
            plaintext = identity.decrypt(value)
        else:
            assert name is not None
            body = value[len(static_prefix(form, name)) :]
            plaintext = fmt.static.decrypt(keys[(form, name)], body, etcd_key)
        _check_decoded(plaintext, obj, entry)
    assert {p for p, _ in keys} <= forms


def test_kmsv2_fixture_values_through_plugin(tmp_path: Path) -> None:
    case = FIXTURES / "g-kmsv2"
    manifest, raw = _load("g-kmsv2")
    history = _history(manifest)
    kek = fixture_kek()
    calls = [json.loads(line) for line in (case / "kmsplug-calls.jsonl").read_text().splitlines()]
    seed_written = bytes.fromhex(next(c for c in calls if c["rpc"] == "Encrypt")["plaintext_hex"])
    prefix = kms_prefix("v2", "testkms")

    records = []
    for record in raw:
        value = base64.b64decode(record["value_b64"])
        obj, entry = history[(record["etcd_key"], record["mod_revision"])]
        records.append((record["etcd_key"].encode(), value, obj, entry))
    encrypted = [r for r in records if r[1].startswith(prefix)]
    assert len(encrypted) == 14
    assert {r[3]["kms"]["encryptedDEKSource_b64"] for r in encrypted}.__len__() == 1

    with TestKMSPlugin(tmp_path / "kms.sock", kek, key_id="kek-1") as plugin:
        inner = PluginUnwrapper(plugin.endpoint, timeout=5.0, api_version="v2")
        unwrapper = CachingUnwrapper(inner)

        def read(item: tuple[bytes, bytes, dict, dict]) -> tuple[bytes, bytes]:
            etcd_key, value, _obj, _entry = item
            eo = kmsv2.parse(value[len(prefix) :])
            assert eo.key_id == "kek-1"
            assert eo.dek_source_type == kmsv2.HKDF_SHA256_XNONCE_AES_GCM_SEED
            seed = unwrapper.unwrap_v2(eo.encrypted_dek_source, eo.key_id, eo.annotations)
            return seed, kmsv2.decrypt(eo, seed, etcd_key)

        # Concurrent readers of one shared seed: the plugin must see exactly one Decrypt.
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(read, encrypted))
        assert plugin.calls["Decrypt"] == 1
        assert unwrapper.current_key_id() == "kek-1"
        assert unwrapper.current_key_id() == "kek-1"
        assert plugin.calls["Status"] == 1
        unwrapper.close()

    for (seed, plaintext), (_key, _value, obj, entry) in zip(results, encrypted, strict=True):
        assert seed == seed_written
        _check_decoded(plaintext, obj, entry)
    for etcd_key, value, obj, entry in records:
        if not value.startswith(prefix):
            assert etcd_key.startswith(b"/registry/configmaps/")
            _check_decoded(identity.decrypt(value), obj, entry)

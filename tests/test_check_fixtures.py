"""``snapshot-tools check`` on the snapshots a real kube-apiserver v1.36.2 wrote (ground truth).

Provenance: ../shared/fixtures/apiserver-v1.36 (see its README): kube-apiserver v1.36.2 against
etcd 3.5.1, one case per provider. The KMS v2 case is unwrapped through the test plugin in
``tests/support/kms.py`` on a real unix socket, with the fixture's KEK.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest

from snapshot_tools import objects
from snapshot_tools.check import CheckOptions, run_check
from snapshot_tools.keysets import load_keyset
from snapshot_tools.readers import Reader
from snapshot_tools.resources import KeyParser
from snapshot_tools.snapshot import Snapshot
from snapshot_tools.unwrap import KeyAccess, open_unwrappers
from tests.support.fixtures import (
    EXAMPLE,
    EXAMPLE_CONFIG,
    EXAMPLE_SNAPSHOT,
    FIXTURE_CASES,
    KMS_CASE,
    config_path,
    kms_flags,
    load_manifest,
    snapshot_path,
)
from tests.support.kms import short_dir

if TYPE_CHECKING:
    from tests.support.cli import Cli
    from tests.support.kms import TestKMSPlugin

_MANIFEST_PROVIDER = {"kms": "kms-v2"}


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_verdicts_match_manifest_inventory(case: str, cli: Cli, kms_fixture_plugin: TestKMSPlugin) -> None:
    manifest = load_manifest(case)
    flags = kms_flags(case, kms_fixture_plugin.endpoint)
    rc, report = cli.check_json(snapshot_path(case), "--config", config_path(case), *flags)
    # One shared seed in the whole snapshot: exactly one unwrap.
    assert kms_fixture_plugin.calls["Decrypt"] == (1 if case == KMS_CASE else 0)
    assert rc == 0, report["summary"]
    by_key = {o["key"]: o for o in report["objects"]}
    inventory = manifest["etcd_inventory_secrets_configmaps"]
    assert inventory
    for item in inventory:
        provider = _MANIFEST_PROVIDER.get(item["provider"], item["provider"])
        obj = by_key.get(item["etcd_key"])
        configmap = item["etcd_key"].startswith("/registry/configmaps/")
        if provider == "identity" and configmap and case != "f-secrets-configmaps":
            # Plaintext of a resource no config covers is counted, not listed.
            assert obj is None
            continue
        assert obj is not None, item["etcd_key"]
        assert obj["provider"] == provider
        assert obj["key_name"] == (item["key_name"] if provider != "identity" else None)
        assert obj["verdict"] == "current"
        assert obj["revision"] == item["mod_revision"]
        assert obj["plaintext"] is False
    assert report["summary"]["unreadable"] == 0
    assert report["summary"]["objects"] == len(report["objects"])
    assert report["snapshot"]["trailer"] == "valid"


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_decrypted_data_equalsload_manifest(case: str, kms_fixture_plugin: TestKMSPlugin) -> None:
    """The plaintext the resolver recovers decodes to exactly the data the fixture created."""
    manifest = load_manifest(case)
    keyset = load_keyset([config_path(case)])
    kms = {"testkms": kms_fixture_plugin.endpoint} if case == KMS_CASE else {}
    with open_unwrappers(keyset, KeyAccess(kms=kms)) as unwrappers:
        resolver = Reader(keyset, unwrappers, keep_plaintext=True)
        live = {o["etcd_key"]: o for o in manifest["objects"] if not o.get("deleted")}
        seen = 0
        with Snapshot.open(snapshot_path(case)) as snap:
            for rec in snap.latest(b"/registry/"):
                want = live.get(rec.key.decode())
                if want is None:
                    continue
                res = resolver.resolve(rec.key, rec.value, KeyParser("/registry").group_resource(rec.key))
                assert res.plaintext is not None, rec.key
                obj = objects.decode_object(res.plaintext)
                _assert_same_data(want, obj)
                seen += 1
    assert seen == len(live)


def _assert_same_data(want: dict, obj: dict) -> None:
    meta = obj["metadata"]
    assert meta["name"] == want["name"]
    assert meta.get("namespace") == want["namespace"]
    if want["kind"] == "Secret":
        data = {k: base64.b64encode(v).decode() for k, v in (obj.get("data") or {}).items()}
        assert data == (want.get("data_b64") or {})
    else:
        assert (obj.get("data") or {}) == (want.get("data") or {})
        binary = {k: base64.b64encode(v).decode() for k, v in (obj.get("binaryData") or {}).items()}
        assert binary == (want.get("binaryData_b64") or {})


def test_kms_plugin_down_is_exit_4(cli: Cli) -> None:
    case = KMS_CASE
    with short_dir() as d:
        rc, report = cli.check_json(
            snapshot_path(case), "--config", config_path(case), "--kms", f"testkms=unix://{d}/nobody-listens.sock"
        )
    assert rc == 4
    assert report["summary"]["unreadable"] == report["summary"]["objects"] > 0
    assert {o["reason"] for o in report["objects"]} == {"kms-unavailable"}


def test_library_report_has_no_key_material() -> None:
    case = "b-aescbc"
    report = run_check(
        CheckOptions(
            snapshot=str(snapshot_path(case)), access=KeyAccess(configs=(str(config_path(case)),))
        )
    )
    text = json.dumps(report.to_json())
    for key in load_manifest(case)["keys"].values():
        assert key["secret_b64"] not in text
        assert key["hex"] not in text


def test_human_report_lists_findings_without_material(cli: Cli) -> None:
    """The shipped example: after a rotation that dropped the old key, history makes them retired."""
    args = ["check", EXAMPLE_SNAPSHOT, "-c", EXAMPLE / "new-key-only.yaml"]
    rc, out, _ = cli(*args, "-c", EXAMPLE_CONFIG)
    assert rc == 1
    first = out.splitlines()[0]
    # the example snapshot's other resources are plaintext no config covers: counted in the headline
    assert first.startswith("14 objects: 0 current, 0 stale, 14 retired, 0 unreadable; ")
    assert first.endswith(" uncovered plaintext (no config covers their resource)")
    assert "ACTIVE  KEY TYPE  NAME" in out
    assert sum(1 for line in out.splitlines() if line.startswith("retired  ") and "/registry/" in line) == 14
    assert "/registry/secrets/default/basic-auth" in out
    assert "hint: retired" in out
    for key in load_manifest("b-aescbc")["keys"].values():
        assert key["secret_b64"] not in out and key["hex"] not in out
    for text in (EXAMPLE / "new-key-only.yaml").read_text().split():
        if len(text) == 44 and text.endswith("="):
            assert text not in out
    # Without the old config the same objects are unreadable: no such key.
    rc, out, _ = cli(*args)
    assert rc == 1
    listed = [line for line in out.splitlines() if "/registry/" in line]
    assert sum(1 for line in listed if line.startswith("unreadable (no-such-key)")) == 14

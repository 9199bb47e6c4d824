"""Ground truth on disk: the real-apiserver fixtures, the shipped example and the golden vectors.

Fixtures: ``tests/fixtures/apiserver-v1.36/<case>/`` (a copy of ``../shared/fixtures``, so that a
clone tests on its own) written by kube-apiserver v1.36.2 against
etcd 3.5.1, one case per provider (see its README): ``etcd-snapshot.db``,
``encryption-config.yaml``, ``manifest.json`` (inventory, keys, objects as written) and, for
``g-kmsv2``, the test plugin's KEK. The helpers below compare what ``extract`` writes with a
manifest's objects.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "apiserver-v1.36"
FIXTURE_CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) if FIXTURES.is_dir() else []
KMS_CASE = "g-kmsv2"  # the one case read through a KMS plugin (name "testkms" in its config)

EXAMPLE = ROOT / "examples" / "aescbc"  # a kube-apiserver snapshot with aescbc key1 Secrets
EXAMPLE_SNAPSHOT = EXAMPLE / "etcd-snapshot.db"
EXAMPLE_CONFIG = EXAMPLE / "encryption-config.yaml"
EXAMPLE_KEY1_B64 = "Q/6UFRHDGhUKxtX2dDTCg9tmczF4fSjQe9hfAMKnfYg="  # examples/aescbc key1

VECTORS: dict[str, Any] = json.loads(
    (ROOT / "tests" / "vectors" / "k8s_encryption_formats.json").read_text()
)
OLD_SECRET = base64.b64decode(VECTORS["E"]["old_secret_b64"])  # upstream's plaintext Secret


def snapshot_path(case: str) -> Path:
    return FIXTURES / case / "etcd-snapshot.db"


def config_path(case: str) -> Path:
    return FIXTURES / case / "encryption-config.yaml"


def load_manifest(case: str) -> dict[str, Any]:
    return json.loads((FIXTURES / case / "manifest.json").read_text())


def fixture_kek(case: str = KMS_CASE) -> bytes:
    """The KEK of the plugin that wrote the KMS case (tests/support/kms.py serves it)."""
    return bytes.fromhex((FIXTURES / case / "kms-plugin-kek-1.hex").read_text().strip())


def kms_flags(case: str, endpoint: str) -> list[str]:
    """The ``--kms`` flags reading ``case`` needs: the plugin at ``endpoint`` for the KMS case."""
    return ["--kms", f"testkms={endpoint}"] if case == KMS_CASE else []


# -- extract's output against a manifest ------------------------------------------------------


def list_items(out: str) -> list[dict[str, Any]]:
    """The items of the one ``v1 List`` that ``extract -o json`` writes."""
    doc = json.loads(out)
    assert doc["apiVersion"] == "v1"
    assert doc["kind"] == "List"
    return doc["items"]


def by_name(items: list[dict[str, Any]]) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    """Items by (kind, namespace, name); each appears once."""
    out = {}
    for item in items:
        meta = item["metadata"]
        ident = (item["kind"], meta.get("namespace"), meta["name"])
        assert ident not in out, ident
        out[ident] = item
    return out


def assert_matches_manifest(want: dict[str, Any], item: dict[str, Any]) -> None:
    """An extracted item carries exactly the manifest object's identity, metadata and data."""
    meta = item["metadata"]
    assert meta["name"] == want["name"]
    assert meta.get("namespace") == want["namespace"]
    assert meta["uid"] == want["uid"]
    assert meta["resourceVersion"] == want["resourceVersion"]
    assert meta.get("labels") == want.get("labels")
    assert meta.get("annotations") == want.get("annotations")
    assert meta["creationTimestamp"].endswith("Z")
    if want["kind"] == "Secret":
        assert item.get("data", {}) == (want.get("data_b64") or {})
        assert item["type"] == want["type"]
        assert item.get("immutable") == want["immutable"]
    else:
        assert item.get("data", {}) == (want.get("data") or {})
        assert item.get("binaryData", {}) == (want.get("binaryData_b64") or {})
        assert item.get("immutable") == want.get("immutable")


def assert_extract_matches_manifest(
    case: str, items: list[dict[str, Any]]
) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    """``extract -r secrets -r configmaps`` items are the case's whole inventory, object by object.

    Returns the items by (kind, namespace, name) for further checks.
    """
    want_all = load_manifest(case)
    got = by_name(items)
    assert len(got) == len(want_all["etcd_inventory_secrets_configmaps"])
    for want in want_all["objects"]:
        item = got.get((want["kind"], want["namespace"], want["name"]))
        assert item is not None, want["etcd_key"]
        assert_matches_manifest(want, item)
    return got

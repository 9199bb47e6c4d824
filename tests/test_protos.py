"""The committed generated modules are exactly what protos/generate.py produces."""

from __future__ import annotations

import subprocess
import sys

from tests.support.fixtures import ROOT


def test_regenerating_protos_changes_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kms_wire_names_match_upstream() -> None:
    from kms_plugin.proto import kms_v1beta1_pb2, kms_v2_pb2

    v2 = kms_v2_pb2.DESCRIPTOR.services_by_name["KeyManagementService"]
    assert v2.full_name == "v2.KeyManagementService"
    assert {m.name for m in v2.methods} == {"Status", "Encrypt", "Decrypt"}
    v1 = kms_v1beta1_pb2.DESCRIPTOR.services_by_name["KeyManagementService"]
    assert v1.full_name == "v1beta1.KeyManagementService"
    fields = {f.name: f.number for f in kms_v2_pb2.DecryptRequest.DESCRIPTOR.fields}
    assert fields == {"ciphertext": 1, "uid": 2, "key_id": 3, "annotations": 4}

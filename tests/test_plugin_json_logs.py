"""``kms-plugin serve --log-format json``: one JSON line per gRPC call; metrics named like
kube-apiserver's envelope metrics; ``build_info``; no secret material in either (issue 14 item 4).

The plugin runs as a real ``kms-plugin serve`` process on a real unix socket with a keyring; the
calls go through the KMS v2 client like the apiserver's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
from typing import TYPE_CHECKING, Any

import pytest

from kms_plugin import __version__
from kms_plugin.client import KMSv2Client
from kms_plugin.errors import InvalidCiphertext
from kms_plugin.keks.local import Keyring
from kms_plugin.metrics import KEY_ID_LABEL_SETS, PluginMetrics
from kms_plugin.service import MAX_REQUEST_ID
from tests.support.kms import http_get, make_keyring, short_dir, start_serve, wait_for_socket

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
CALL_FIELDS = {"time", "level", "logger", "msg", "api", "method", "code", "latency_ms", "request_id"}


def _sha(key_id: str) -> str:
    return "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()


def _serve(d: Path, *extra: str) -> tuple[subprocess.Popen[bytes], list[str], int]:
    """Start serve with health on an ephemeral port; returns the process, the stderr lines read
    so far and the health port (taken from the start-up line)."""
    proc = start_serve("--listen", f"unix://{d}/p.sock", "--keyring", str(d / "k.json"),
                       "--health-addr", "127.0.0.1:0", *extra)
    assert proc.stderr is not None
    seen: list[str] = []
    while True:
        line = proc.stderr.readline().decode()
        assert line, f"serve exited: {''.join(seen)}"
        seen.append(line)
        found = re.search(r"health on http://127\.0\.0\.1:(\d+)", line)
        if found:
            break
    wait_for_socket(d / "p.sock", proc)
    return proc, seen, int(found[1])


def _stop(proc: subprocess.Popen[bytes], seen: list[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return "".join(seen) + rest.decode()


def _forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("=")]


def test_json_log_line_per_call_and_metrics_without_material() -> None:
    with short_dir() as d:
        make_keyring(d / "k.json")
        keyring = Keyring.load(d / "k.json")
        key_id = keyring.active_key_id
        proc, seen, port = _serve(d, "--log-format", "json")
        plaintext = b"\x8fPLAINTEXT-MARKER\x01" + bytes(range(14))  # 32 bytes, like a seed
        try:
            with KMSv2Client(f"unix://{d}/p.sock") as client:
                st = client.status()
                enc = client.encrypt(plaintext, uid="uid-encrypt-1")
                client.encrypt(plaintext, uid="uid-long-" + "x" * 100_000)  # any caller picks the uid
                assert client.decrypt(enc.ciphertext, enc.key_id, enc.annotations, uid="uid-decrypt-1") == plaintext
                with pytest.raises(InvalidCiphertext):  # an unknown key_id
                    client.decrypt(enc.ciphertext, "sha256:made-up", uid="uid-decrypt-bad")
                tampered = enc.ciphertext[:-1] + bytes([enc.ciphertext[-1] ^ 1])
                with pytest.raises(InvalidCiphertext):
                    client.decrypt(tampered, enc.key_id, enc.annotations, uid="uid-decrypt-tampered")
            code, metrics = http_get("127.0.0.1", port, "/metrics")
            assert code == 200
        finally:
            err = _stop(proc, seen)
    assert st.key_id == key_id
    records = [json.loads(line) for line in err.splitlines()]  # every stderr line is JSON
    calls = [r for r in records if r["logger"] == "kms_plugin.service.calls"]
    for rec in calls:
        assert set(rec) >= CALL_FIELDS, rec
        assert isinstance(rec["latency_ms"], float | int) and rec["latency_ms"] >= 0
        assert rec["api"] == "v2"
        if "key_id_hash" in rec:
            assert HASH.match(rec["key_id_hash"]), rec
    by_uid = {r["request_id"]: r for r in calls}
    # One line per call: each uid the client sent appears exactly once.
    for uid in ("uid-encrypt-1", "uid-decrypt-1", "uid-decrypt-bad", "uid-decrypt-tampered"):
        assert sum(r["request_id"] == uid for r in calls) == 1, uid
    assert by_uid["uid-encrypt-1"]["method"] == "Encrypt"
    assert by_uid["uid-encrypt-1"]["code"] == "OK" and by_uid["uid-encrypt-1"]["level"] == "info"
    assert by_uid["uid-encrypt-1"]["key_id_hash"] == _sha(key_id)
    assert by_uid["uid-decrypt-1"]["method"] == "Decrypt" and by_uid["uid-decrypt-1"]["code"] == "OK"
    assert by_uid["uid-decrypt-bad"]["code"] == "INVALID_ARGUMENT"
    assert by_uid["uid-decrypt-bad"]["level"] == "warning"
    assert by_uid["uid-decrypt-bad"]["key_id_hash"] == _sha("sha256:made-up")
    assert by_uid["uid-decrypt-tampered"]["code"] == "INVALID_ARGUMENT"
    # A caller's uid is kept to MAX_REQUEST_ID characters: one call cannot make a huge line.
    long_ids = [r["request_id"] for r in calls if r["request_id"].startswith("uid-long-")]
    assert [len(i) for i in long_ids] == [MAX_REQUEST_ID]
    assert max(len(line) for line in err.splitlines()) < 2048
    # Status carries no uid: the plugin makes a request id; every Status was answered OK.
    statuses = [r for r in calls if r["method"] == "Status"]
    assert statuses and all(r["request_id"].startswith("gen-") and r["code"] == "OK" for r in statuses)
    assert len({r["request_id"] for r in statuses}) == len(statuses)
    # The key_id itself never appears in a call line, only its hash.
    assert all(key_id not in json.dumps(r) for r in calls)

    # No material: the plaintext, the KEK, the ciphertext, in any usual encoding.
    secrets = [plaintext, enc.ciphertext, *(k.key for k in keyring.keks)]
    for text, where in ((err, "logs"), (metrics, "metrics")):
        for secret in secrets:
            for form in _forms(secret):
                assert form not in text, where
        assert "PLAINTEXT-MARKER" not in text, where

    # Metrics: the apiserver's names, labels and key_id_hash values; build_info with the version.
    assert f'kms_plugin_build_info{{version="{__version__}"}} 1.0' in metrics
    assert re.search(
        r'kms_plugin_kms_operations_latency_seconds_bucket\{grpc_status_code="OK",le="0\.0001",'
        r'method_name="/v2\.KeyManagementService/Encrypt"\} \d', metrics)
    assert ('kms_plugin_kms_operations_latency_seconds_count{grpc_status_code="INVALID_ARGUMENT",'
            'method_name="/v2.KeyManagementService/Decrypt"} 2.0') in metrics
    assert (f'kms_plugin_key_id_hash_total{{key_id_hash="{_sha(key_id)}",'
            'transformation_type="to_storage"} 2.0') in metrics  # two Encrypts
    assert (f'kms_plugin_key_id_hash_total{{key_id_hash="{_sha(key_id)}",'
            'transformation_type="from_storage"} 1.0') in metrics
    assert f'kms_plugin_key_id_hash_last_timestamp_seconds{{key_id_hash="{_sha(key_id)}"' in metrics
    assert f'kms_plugin_key_id_hash_status_last_timestamp_seconds{{key_id_hash="{_sha(key_id)}"}}' in metrics
    # A refused call's made-up key_id never becomes a label.
    assert _sha("sha256:made-up") not in metrics
    # The older names are kept.
    assert 'kms_plugin_operations_total{api="v2",code="OK",method="Encrypt"} 2.0' in metrics


def test_text_format_logs_failed_calls_and_successful_ones_only_when_debugging() -> None:
    def run(*extra: str) -> str:
        with short_dir() as d:
            make_keyring(d / "k.json")
            proc, seen, _ = _serve(d, *extra)
            try:
                with KMSv2Client(f"unix://{d}/p.sock") as client:
                    enc = client.encrypt(b"t" * 32, uid="uid-text-ok")
                    with pytest.raises(InvalidCiphertext):
                        client.decrypt(enc.ciphertext, "sha256:other", uid="uid-text-bad")
            finally:
                err = _stop(proc, seen)
        return err

    info = run("--log-format", "text")
    assert "v2 Decrypt failed: INVALID_ARGUMENT" in info
    assert "v2 Encrypt OK" not in info
    debug = run("--log-format", "text", "--log-level", "debug")
    assert "v2 Encrypt OK" in debug and "v2 Decrypt failed: INVALID_ARGUMENT" in debug


def test_key_id_label_sets_are_bounded() -> None:
    """Like the apiserver's LRU: old key_id series are removed, so rotations never pile up."""
    metrics = PluginMetrics()
    for n in range(100):
        metrics.observe("v2", "Decrypt", "OK", 0.001, f"key-{n}")
        metrics.observe("v2", "Status", "OK", 0.001, f"key-{n}")
    series = _samples(metrics, "kms_plugin_key_id_hash_total")
    assert 0 < len(series) <= KEY_ID_LABEL_SETS * 3
    assert any(s.labels["key_id_hash"] == _sha("key-99") for s in series)
    assert not any(s.labels["key_id_hash"] == _sha("key-0") for s in series)
    assert len(_samples(metrics, "kms_plugin_key_id_hash_status_last_timestamp_seconds")) <= KEY_ID_LABEL_SETS * 3


def _samples(metrics: PluginMetrics, name: str) -> list[Any]:
    return [s for fam in metrics.registry.collect() for s in fam.samples if s.name == name]

"""KMS unwrapping: the caching layer (once per DEK source, concurrency bound, cached failures)
and the plugin unwrapper against a real gRPC plugin on a real unix socket
(tests/support/kms.py), including the error mapping to ``snapshot_tools.errors``."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
import pytest

from kms_plugin.client import KMSv1Client, KMSv2Client
from snapshot_tools.errors import ConfigError, InvalidCiphertext, KMSUnavailable, KMSUnreachable
from snapshot_tools.providers import kms_prefix, kmsv1, kmsv2
from snapshot_tools.unwrap import CachingUnwrapper, PluginUnwrapper
from tests.support.fixtures import KMS_CASE, config_path, fixture_kek, snapshot_path
from tests.support.kms import TestKMSPlugin, short_dir

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from tests.support.cli import Cli


class GateUnwrapper:
    """A hand-written inner unwrapper: blocks until released, records calls and concurrency."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.calls: list[bytes] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def _enter(self, ciphertext: bytes) -> None:
        with self.lock:
            self.calls.append(ciphertext)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
        self._enter(ciphertext)
        try:
            assert self.release.wait(10)
            if ciphertext.startswith(b"bad"):
                raise InvalidCiphertext("refused")
            if ciphertext.startswith(b"down"):
                raise KMSUnreachable("plugin down")
            if ciphertext.startswith(b"refuse"):
                raise KMSUnavailable("key disabled")
            return b"plain:" + ciphertext
        finally:
            self._leave()

    def unwrap_v1(self, ciphertext: bytes) -> bytes:
        return self.unwrap_v2(ciphertext, "", {})

    def current_key_id(self) -> str | None:
        return "kid"


def _wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_same_source_unwrapped_once_under_concurrency() -> None:
    inner = GateUnwrapper()
    caching = CachingUnwrapper(inner)
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(caching.unwrap_v2, b"src", "k", {"a.io": b"1"}) for _ in range(64)]
        _wait_for(lambda: inner.in_flight == 1, "the first unwrap")
        inner.release.set()
        results = [f.result(timeout=10) for f in futures]
    assert results == [b"plain:src"] * 64
    assert inner.calls == [b"src"]


def test_identity_includes_key_id_and_annotations() -> None:
    inner = GateUnwrapper()
    inner.release.set()
    caching = CachingUnwrapper(inner)
    caching.unwrap_v2(b"src", "k1", {})
    caching.unwrap_v2(b"src", "k2", {})
    caching.unwrap_v2(b"src", "k1", {"a.io": b"1"})
    caching.unwrap_v2(b"src", "k1", {"a.io": b"2"})
    caching.unwrap_v2(b"src", "k1", {"a.io": b"2"})
    caching.unwrap_v1(b"src")
    caching.unwrap_v1(b"src")
    assert len(inner.calls) == 5


def test_concurrency_is_bounded() -> None:
    inner = GateUnwrapper()
    caching = CachingUnwrapper(inner, max_concurrency=2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(caching.unwrap_v1, b"dek-%d" % i) for i in range(8)]
        _wait_for(lambda: inner.in_flight == 2, "two unwraps in flight")
        time.sleep(0.2)  # give a broken bound the chance to let a third one in
        assert inner.in_flight == 2
        inner.release.set()
        assert sorted(f.result(timeout=10) for f in futures) == sorted(
            b"plain:dek-%d" % i for i in range(8)
        )
    assert inner.max_in_flight == 2 and len(inner.calls) == 8
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        CachingUnwrapper(inner, max_concurrency=0)


def test_failures_are_cached_and_unavailability_fails_fast() -> None:
    inner = GateUnwrapper()
    inner.release.set()
    caching = CachingUnwrapper(inner)
    for _ in range(3):
        with pytest.raises(InvalidCiphertext, match=r"^refused$"):
            caching.unwrap_v2(b"bad-1", "k", {})
    assert len(inner.calls) == 1
    assert caching.unwrap_v2(b"good", "k", {}) == b"plain:good"
    with pytest.raises(KMSUnavailable, match="plugin down"):
        caching.unwrap_v1(b"down")
    # Once unavailable: new sources fail at once, without another call; cached ones still work.
    with pytest.raises(KMSUnavailable, match="plugin down"):
        caching.unwrap_v1(b"another")
    assert caching.unwrap_v2(b"good", "k", {}) == b"plain:good"
    assert len(inner.calls) == 3
    assert caching.current_key_id() == "kid"


def test_kms_unavailable_is_not_kept_and_does_not_stop_other_sources() -> None:
    # A refusal about the key (disabled, throttled, no permission) is no answer about the
    # source: the next ask tries again, and other sources are still unwrapped.
    inner = GateUnwrapper()
    inner.release.set()
    caching = CachingUnwrapper(inner)
    for _ in range(2):
        with pytest.raises(KMSUnavailable, match="key disabled") as info:
            caching.unwrap_v2(b"refuse-1", "k", {})
        assert not isinstance(info.value, KMSUnreachable)
    assert len(inner.calls) == 2
    assert caching.unwrap_v2(b"good", "k", {}) == b"plain:good"
    assert len(inner.calls) == 3


# -- the plugin unwrapper over a real unix socket --------------------------------------------------


@pytest.fixture
def plugin(tmp_path: Path) -> TestKMSPlugin:
    with TestKMSPlugin(tmp_path / "kms.sock", os.urandom(32), key_id="kek-7") as running:
        yield running


def test_plugin_unwrap_v2_and_error_mapping(plugin: TestKMSPlugin) -> None:
    with KMSv2Client(plugin.endpoint) as client:
        seed = os.urandom(32)
        wrapped = client.encrypt(seed)
    assert wrapped.key_id == "kek-7"
    caching = CachingUnwrapper(PluginUnwrapper(plugin.endpoint, timeout=5.0))
    assert caching.unwrap_v2(wrapped.ciphertext, "kek-7", {}) == seed
    assert caching.current_key_id() == "kek-7"

    # A whole object: encrypt in seed mode, read back through the plugin.
    etcd_key = b"/registry/secrets/ns/s"
    payload = kmsv2.encrypt(
        seed, b"k8s\x00x", etcd_key, encrypted_dek_source=wrapped.ciphertext, key_id="kek-7"
    )
    obj = kmsv2.parse(payload)
    source = caching.unwrap_v2(obj.encrypted_dek_source, obj.key_id, obj.annotations)
    assert kmsv2.decrypt(obj, source, etcd_key) == b"k8s\x00x"
    assert plugin.calls["Decrypt"] == 1

    tampered = bytearray(wrapped.ciphertext)
    tampered[-1] ^= 1
    for _ in range(2):
        with pytest.raises(InvalidCiphertext, match="refused to decrypt the data key"):
            caching.unwrap_v2(bytes(tampered), "kek-7", {})
    with pytest.raises(InvalidCiphertext, match="NOT_FOUND"):
        caching.unwrap_v2(wrapped.ciphertext, "kek-other", {})
    assert plugin.calls["Decrypt"] == 3
    with pytest.raises(KMSUnavailable, match="apiVersion v2; it cannot unwrap KMS v1"):
        PluginUnwrapper(plugin.endpoint).unwrap_v1(b"x")
    caching.close()


def test_plugin_unwrap_v1(plugin: TestKMSPlugin) -> None:
    dek = os.urandom(32)
    with KMSv1Client(plugin.endpoint) as client:
        encrypted_dek = client.encrypt(dek)
    etcd_key = b"/registry/secrets/ns/v1"
    value = kms_prefix("v1", "p") + kmsv1.encrypt(dek, encrypted_dek, b"k8s\x00v1", etcd_key)
    unwrapper = PluginUnwrapper(plugin.endpoint, api_version="v1")
    got_dek, data = kmsv1.split(value[len(kms_prefix("v1", "p")) :])
    assert unwrapper.unwrap_v1(got_dek) == dek
    assert kmsv1.decrypt_payload(dek, data, etcd_key) == (b"k8s\x00v1", "gcm")
    assert unwrapper.current_key_id() is None
    with pytest.raises(InvalidCiphertext):
        unwrapper.unwrap_v1(b"\x00" * 40)
    unwrapper.close()


def test_plugin_unavailable(tmp_path: Path) -> None:
    missing = PluginUnwrapper(f"unix://{tmp_path}/nothing.sock", timeout=1.0)
    asked: list[bytes] = []

    class Counting:
        def unwrap_v2(self, ciphertext: bytes, key_id: str, annotations: Mapping[str, bytes]) -> bytes:
            asked.append(ciphertext)
            return missing.unwrap_v2(ciphertext, key_id, annotations)

        def unwrap_v1(self, ciphertext: bytes) -> bytes:
            raise AssertionError("not called")

        def current_key_id(self) -> str | None:
            return None

    caching = CachingUnwrapper(Counting())
    with pytest.raises(KMSUnreachable, match=r"nothing.sock"):
        caching.unwrap_v2(b"x", "k", {})
    with pytest.raises(KMSUnreachable):
        caching.unwrap_v2(b"y", "k", {})
    assert asked == [b"x"]  # unreachable: later sources fail fast
    with pytest.raises(KMSUnavailable):
        missing.current_key_id()


@pytest.mark.parametrize("endpoint", ["", "tcp://127.0.0.1:1", "unix://host/path", "/plain/path"])
def test_bad_endpoints_are_config_errors(endpoint: str) -> None:
    with pytest.raises(ConfigError):
        PluginUnwrapper(endpoint)


def test_bad_api_version() -> None:
    with pytest.raises(ConfigError, match="apiVersion must be v1 or v2"):
        PluginUnwrapper("unix:///tmp/x.sock", api_version="v3")


# -- the one error mapping, end to end: a real plugin, `snapshot-tools check` ------------------

# What a plugin's gRPC status on Decrypt makes of every KMS v2 value: (verdict, exit code).
# Only an answer about the ciphertext itself is wrong-key (DESIGN.md "Keys and verdicts").
DECRYPT_STATUS_ROWS = [
    (grpc.StatusCode.FAILED_PRECONDITION, "unreadable (kms-unavailable)", 4),  # key disabled
    (grpc.StatusCode.PERMISSION_DENIED, "unreadable (kms-unavailable)", 4),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "unreadable (kms-unavailable)", 4),  # throttled
    (grpc.StatusCode.INTERNAL, "unreadable (kms-unavailable)", 4),
    (grpc.StatusCode.UNAVAILABLE, "unreadable (kms-unavailable)", 4),
    (grpc.StatusCode.INVALID_ARGUMENT, "unreadable (wrong-key)", 1),  # invalid ciphertext
    (grpc.StatusCode.NOT_FOUND, "unreadable (wrong-key)", 1),  # unknown key_id
]


@pytest.mark.parametrize(("code", "verdict", "exit_code"), DECRYPT_STATUS_ROWS, ids=lambda v: getattr(v, "name", None))
def test_check_verdict_follows_the_plugins_decrypt_status(
    code: grpc.StatusCode, verdict: str, exit_code: int, cli: Cli
) -> None:
    with short_dir() as d, TestKMSPlugin(d / "kms.sock", fixture_kek(), decrypt_error=code) as plugin:
        rc, out, _ = cli(
            "check", snapshot_path(KMS_CASE), "--config", config_path(KMS_CASE), "--kms", f"testkms={plugin.endpoint}"
        )
        decrypts = plugin.calls["Decrypt"]
    assert rc == exit_code, out
    # object rows end in their etcd key (group rows of the grouped report do not)
    rows = [line for line in out.splitlines() if line.startswith("unreadable") and "/registry/" in line]
    assert rows and all(line.startswith(verdict + " ") for line in rows), out
    # A refusal is not kept as the answer for the shared seed: each object asked again. An
    # answer about the ciphertext (and an unreachable plugin) is asked once.
    if verdict.endswith("(kms-unavailable)") and code != grpc.StatusCode.UNAVAILABLE:
        assert decrypts == len(rows) > 1
    else:
        assert decrypts == 1

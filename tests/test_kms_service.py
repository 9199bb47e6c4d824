"""The served plugin driven by the project's client over a real unix socket (in-process server)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from kms_plugin.client import KMSv1Client, KMSv2Client
from kms_plugin.endpoint import parse_unix_endpoint
from kms_plugin.errors import ConfigError, InvalidCiphertext, PluginUnavailable
from kms_plugin.keks.local import Keyring
from tests.support.cli import plugin_cli
from tests.support.kms import health_get, served, short_dir, start_serve, wait_for_socket

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from kms_plugin.server import PluginServer


@pytest.fixture(scope="module")
def plugin() -> Iterator[PluginServer]:
    with short_dir() as d, served(d, enable_v1=True) as server:
        yield server


@pytest.fixture
def client(plugin: PluginServer) -> Iterator[KMSv2Client]:
    with KMSv2Client(plugin.config.listen) as c:
        yield c


def parse_endpoint(endpoint: str) -> str:
    return parse_unix_endpoint(endpoint).grpc_target


def test_parse_endpoint() -> None:
    assert parse_endpoint("unix:///var/run/kms.sock") in ("unix:/var/run/kms.sock", "unix:///var/run/kms.sock")
    assert parse_endpoint("unix:///@kms-provider.sock") == "unix-abstract:kms-provider.sock"
    for bad in ("", "/var/run/kms.sock", "tcp://127.0.0.1:1", "unix://host/x.sock", "unix:///@", "unix://"):
        with pytest.raises(ConfigError):
            parse_endpoint(bad)


def test_unreachable_endpoints() -> None:
    with short_dir() as d:
        with pytest.raises(PluginUnavailable, match="does not exist"):
            KMSv2Client(f"unix://{d}/none.sock", timeout=1).status()
        import socket

        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(d / "stale.sock"))
        stale.close()
        with pytest.raises(PluginUnavailable, match="UNAVAILABLE"):
            KMSv2Client(f"unix://{d}/stale.sock", timeout=1).status()


def test_status_and_round_trip(plugin: PluginServer, client: KMSv2Client) -> None:
    st = client.status()
    assert (st.version, st.healthz) == ("v2", "ok")
    assert st.key_id == Keyring.load(plugin.config.keyring).active_key_id
    seed = os.urandom(32)
    enc = client.encrypt(seed)
    assert enc.key_id == st.key_id  # exactly the Status key_id
    assert enc.annotations == {}
    assert 0 < len(enc.ciphertext) <= 1024
    assert seed not in enc.ciphertext
    assert client.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
    # The same plaintext wraps differently each time (fresh nonce).
    assert client.encrypt(seed).ciphertext != enc.ciphertext


def test_decrypt_refusals(client: KMSv2Client) -> None:
    enc = client.encrypt(b"s" * 32)
    with pytest.raises(InvalidCiphertext, match=r"INVALID_ARGUMENT.*not in keyring"):
        client.decrypt(enc.ciphertext, "sha256:" + "1" * 64)
    with pytest.raises(InvalidCiphertext, match="key_id is empty"):
        client.decrypt(enc.ciphertext, "")
    tampered = bytearray(enc.ciphertext)
    tampered[-1] ^= 0x80
    with pytest.raises(InvalidCiphertext, match="failed authentication"):
        client.decrypt(bytes(tampered), enc.key_id)
    with pytest.raises(InvalidCiphertext, match="truncated"):
        client.decrypt(enc.ciphertext[:30], enc.key_id)
    with pytest.raises(InvalidCiphertext, match="bad magic"):
        client.decrypt(b"1" + enc.ciphertext[1:], enc.key_id)
    with pytest.raises(InvalidCiphertext, match="over 1024"):
        client.decrypt(enc.ciphertext + b"\0" * 1024, enc.key_id)
    with pytest.raises(InvalidCiphertext, match="empty"):
        client.decrypt(b"", enc.key_id)


def test_annotation_rules_and_limits(client: KMSv2Client) -> None:
    enc = client.encrypt(b"a" * 32)
    with pytest.raises(InvalidCiphertext, match="foreign annotation"):
        client.decrypt(enc.ciphertext, enc.key_id, {"encrypted-kek.reference.encryption.k8s.io": b"x"})
    with pytest.raises(InvalidCiphertext, match="not a fully qualified"):
        client.decrypt(enc.ciphertext, enc.key_id, {"NotAnFQDN": b"x"})
    with pytest.raises(InvalidCiphertext, match="over 32768"):
        client.decrypt(enc.ciphertext, enc.key_id, {"big.kms-plugin.local": b"x" * 32768})
    # Under our domain and within the limit, but the local keyring writes none: still refused.
    with pytest.raises(InvalidCiphertext, match="unexpected annotations"):
        client.decrypt(enc.ciphertext, enc.key_id, {"a.kms-plugin.local": b"x" * 100})


def test_encrypt_limits(client: KMSv2Client) -> None:
    with pytest.raises(InvalidCiphertext, match="plaintext is empty"):
        client.encrypt(b"")
    with pytest.raises(InvalidCiphertext, match="at most"):
        client.encrypt(b"x" * 1024)


def test_v1beta1_on_the_same_socket(plugin: PluginServer, client: KMSv2Client) -> None:
    with KMSv1Client(plugin.config.listen) as v1:
        assert v1.version() == "v1beta1"
        cipher = v1.encrypt(b"k" * 32)
        assert v1.decrypt(cipher) == b"k" * 32
        # The same wrapped format: a v1 ciphertext unwraps through v2 with the Status key_id.
        assert client.decrypt(cipher, client.status().key_id) == b"k" * 32
        with pytest.raises(InvalidCiphertext):
            v1.decrypt(cipher[:-1])


def test_v1_is_off_unless_enabled() -> None:
    with (
        short_dir() as d,
        served(d) as server,
        KMSv1Client(server.config.listen) as v1,
        pytest.raises(Exception, match="UNIMPLEMENTED"),
    ):
        v1.version()


def test_rotation_while_serving() -> None:
    with short_dir() as d, served(d) as server, KMSv2Client(server.config.listen) as c:
        before = c.status().key_id
        old = [c.encrypt(os.urandom(32)) for _ in range(3)]
        seeds_ok = [c.decrypt(e.ciphertext, e.key_id) for e in old]
        assert plugin_cli("keyring", "rotate", str(server.config.keyring)) == 0
        after = c.status()  # the very next Status shows the new key_id
        assert after.healthz == "ok"
        assert after.key_id != before
        assert after.key_id == Keyring.load(server.config.keyring).active_key_id
        new = c.encrypt(b"n" * 32)
        assert new.key_id == after.key_id
        assert [c.decrypt(e.ciphertext, e.key_id) for e in old] == seeds_ok
        # A key_id that disagrees with the KEK named in the ciphertext is refused.
        with pytest.raises(InvalidCiphertext, match="disagrees"):
            c.decrypt(old[0].ciphertext, after.key_id)
        # A second rotation: keys from two generations ago still decrypt; key_ids never repeat.
        assert plugin_cli("keyring", "rotate", str(server.config.keyring)) == 0
        third = c.status().key_id
        assert len({before, after.key_id, third}) == 3
        assert c.decrypt(old[1].ciphertext, old[1].key_id) == seeds_ok[1]
        assert c.decrypt(new.ciphertext, new.key_id) == b"n" * 32
        # A fresh keyring (old KEKs dropped) no longer knows the old key_ids.
        assert plugin_cli("keyring", "init", "--force", str(server.config.keyring)) == 0
        with pytest.raises(InvalidCiphertext, match="not in keyring"):
            c.decrypt(old[0].ciphertext, old[0].key_id)
        _, metrics = health_get(server, "/metrics")
        assert 'kms_plugin_keyring_reloads_total{result="ok"} 3.0' in metrics


def test_bad_reload_reports_unhealthy_and_keeps_serving() -> None:
    with short_dir() as d, served(d) as server, KMSv2Client(server.config.listen) as c:
        enc = c.encrypt(b"q" * 32)
        good = server.config.keyring.read_bytes()
        server.config.keyring.write_bytes(b'{"version": 1, "keks": []}')
        st = c.status()
        assert st.healthz.startswith("keyring reload failed") and "holds no KEKs" in st.healthz
        assert st.key_id == enc.key_id
        assert c.decrypt(enc.ciphertext, enc.key_id) == b"q" * 32
        assert c.encrypt(b"w" * 32).key_id == st.key_id
        assert health_get(server, "/healthz")[0] == 503
        code, body = health_get(server, "/readyz")
        assert code == 503 and "holds no KEKs" in body
        assert health_get(server, "/livez") == (200, "ok\n")  # user-caused: no restart
        assert plugin_cli("status", "--endpoint", server.config.listen) == 1
        server.config.keyring.write_bytes(good)
        assert c.status().healthz == "ok"
        assert health_get(server, "/healthz") == (200, "ok\n")
        _, metrics = health_get(server, "/metrics")
        assert 'kms_plugin_keyring_reloads_total{result="error"} 1.0' in metrics


def test_health_and_metrics(plugin: PluginServer, client: KMSv2Client) -> None:
    enc = client.encrypt(b"m" * 32)
    client.decrypt(enc.ciphertext, enc.key_id)
    with pytest.raises(InvalidCiphertext):
        client.decrypt(enc.ciphertext, "sha256:nope")
    for path in ("/healthz", "/readyz", "/livez"):
        assert health_get(plugin, path) == (200, "ok\n")
    assert health_get(plugin, "/nope")[0] == 404
    code, text = health_get(plugin, "/metrics")
    assert code == 200
    assert 'kms_plugin_operations_total{api="v2",code="OK",method="Encrypt"}' in text
    assert 'kms_plugin_errors_total{api="v2",code="INVALID_ARGUMENT",method="Decrypt"}' in text
    assert 'kms_plugin_operation_duration_seconds_bucket{api="v2",le="0.001",method="Decrypt"}' in text
    keyring = Keyring.load(plugin.config.keyring)
    assert f'kms_plugin_key_id_info{{kek_id="{keyring.active.id}",key_id="{enc.key_id}"}} 1.0' in text
    assert "kms_plugin_active_kek_age_seconds " in text
    assert 'kms_plugin_keyring_keks{state="active"} 1.0' in text
    for kek in keyring.keks:
        for form in (kek.key.hex(), kek.key.hex().upper(), base64.b64encode(kek.key).decode()):
            assert form not in text


def test_status_command(plugin: PluginServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert plugin_cli("status", "--endpoint", plugin.config.listen, "--roundtrip") == 0
    out = capsys.readouterr().out
    assert "healthz:   ok" in out and "roundtrip: ok" in out
    assert Keyring.load(plugin.config.keyring).active_key_id in out
    assert plugin_cli("status", "--endpoint", plugin.config.listen, "--output", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == "v2" and doc["healthy"] is True
    assert plugin_cli("status", "--endpoint", "unix:///tmp/kms-plugin-nobody.sock") == 4
    assert "does not exist" in capsys.readouterr().err
    assert plugin_cli("status", "--endpoint", "tcp://127.0.0.1:1") == 2


def test_abstract_socket() -> None:
    name = f"kms-plugin-test-{os.getpid()}-{time.monotonic_ns()}"
    with short_dir() as d:
        from kms_plugin.server import PluginServer, ServeConfig

        Keyring.generate()
        plugin_cli("keyring", "init", str(d / "k.json"))
        config = ServeConfig(listen=f"unix:///@{name}", keyring=d / "k.json", health_addr="off")
        server = PluginServer(config)
        server.start()
        try:
            with KMSv2Client(f"unix:///@{name}") as c:
                enc = c.encrypt(b"z" * 32)
                assert c.decrypt(enc.ciphertext, enc.key_id) == b"z" * 32
            with pytest.raises(ConfigError, match="live listener"):
                PluginServer(config).start()
        finally:
            server.stop(grace=1)


def _load(endpoint: str, clients: int, calls: int) -> tuple[int, int]:
    """``clients`` threads share ``calls`` mixed Encrypt/Decrypt calls; returns (ok, errors)."""
    shares = [calls // clients + (1 if i < calls % clients else 0) for i in range(clients)]
    errors = [0]
    done = [0]
    lock = threading.Lock()

    def worker(idx: int) -> None:
        ok = bad = 0
        with KMSv2Client(endpoint, timeout=30) as c:
            seed = os.urandom(32)
            enc = c.encrypt(seed)
            ok += 1
            for i in range(shares[idx] - 1):
                try:
                    if i % 2:
                        enc = c.encrypt(seed)
                    elif c.decrypt(enc.ciphertext, enc.key_id) != seed:
                        bad += 1
                        continue
                    ok += 1
                except Exception:  # noqa: BLE001 - counted
                    bad += 1
        with lock:
            done[0] += ok
            errors[0] += bad

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return done[0], errors[0]


@pytest.mark.slow
def test_load_64_clients_100k_calls() -> None:
    # The server runs in its own process (as deployed), so it and the clients use both cores.
    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        proc = start_serve("--listen", f"unix://{d}/p.sock", "--keyring", str(d / "k.json"),
                           "--health-addr", "off")
        try:
            wait_for_socket(d / "p.sock", proc)
            ok, errors = _load(f"unix://{d}/p.sock", 64, 100_000)
        finally:
            proc.terminate()
            assert proc.wait(30) == 0
    assert errors == 0
    assert ok == 100_000


def test_refuses_bad_annotation_domain(tmp_path: Path) -> None:
    from kms_plugin.server import PluginServer, ServeConfig

    with short_dir() as d:
        plugin_cli("keyring", "init", str(d / "k.json"))
        with pytest.raises(ConfigError, match="annotation-domain"):
            PluginServer(ServeConfig(listen=f"unix://{d}/p.sock", keyring=d / "k.json",
                                     annotation_domain="local", health_addr="off"))

"""The PKCS#11 backend against a real SoftHSM2 token, through the plugin's gRPC unix socket.

Each test gets a private SoftHSM2 token store (``tests/support/softhsm.py``); keys are made with
``kms-plugin pkcs11 init-key`` / ``rotate-key`` (rotation in a separate process, as an operator
would run it), and the plugin is the real server on a real unix socket.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11

from kms_plugin.api import pkcs11_settings
from kms_plugin.client import KMSv1Client, KMSv2Client
from kms_plugin.errors import InvalidCiphertext, PluginError
from kms_plugin.keks import pkcs11format
from kms_plugin.keks.pkcs11 import RESCAN_MIN_INTERVAL
from tests.support.aws import wait_for
from tests.support.cli import KMS_PLUGIN, plugin_cli
from tests.support.kms import health_get, serve_config, serving, short_dir, start_serve, wait_for_socket
from tests.support.softhsm import MODULE, softhsm_token

if TYPE_CHECKING:
    from pathlib import Path

    from kms_plugin.server import PluginServer
    from tests.support.softhsm import Token


def _settings(token: Token, key: str = "kek", pin_file: Path | None = None):
    return pkcs11_settings(MODULE, token.label, key, f"@{pin_file or token.pin_file}")


def _client(d: Path) -> KMSv2Client:
    return KMSv2Client(f"unix://{d / 'p.sock'}", timeout=5)


def _subprocess_cli(token: Token, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KMS_PLUGIN, *argv], env=token.env(), capture_output=True, text=True, timeout=60, check=False
    )


_OPS = re.compile(
    r'^kms_plugin_remote_calls_total\{operation="(?:Encrypt|Decrypt)",outcome="ok"\} (\S+)$', re.MULTILINE
)


def _token_ops(server: PluginServer) -> float:
    """Wraps and unwraps done in the token so far (the plugin's remote-call metric)."""
    return sum(float(v) for v in _OPS.findall(health_get(server, "/metrics")[1]))


@pytest.fixture
def token() -> Token:
    with softhsm_token() as tok:
        assert plugin_cli("pkcs11", "init-key", *tok.flags()) == 0
        yield tok


@pytest.mark.parametrize("local_kek", [True, False])
def test_round_trip_over_the_socket(token: Token, local_kek: bool, capsys) -> None:
    with short_dir() as d:
        config = serve_config(d, pkcs11=_settings(token), local_kek=local_kek, enable_v1=True)
        with serving(config) as server, _client(d) as c:
            status = c.status()
            assert status.healthz == "ok"
            assert status.key_id.startswith("sha256:") and len(status.key_id) == 71
            before = _token_ops(server)
            for _ in range(20):
                seed = os.urandom(32)
                enc = c.encrypt(seed)
                assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
            # With the local KEK the token wraps it once (and the probe's round trips, if any run);
            # without it, every call is one operation in the token.
            ops = _token_ops(server) - before
            assert (ops < 8) if local_kek else (ops >= 40)
            seed = os.urandom(32)
            enc = c.encrypt(seed)
            assert enc.key_id == status.key_id
            assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
            if local_kek:
                # The local KEK travels wrapped by the token (the "kx" format) in the annotation.
                assert enc.ciphertext[:3] == b"kh\x01"
                wrapped_kek = enc.annotations["encrypted-local-kek.kms-plugin.local"]
                assert wrapped_kek[:3] == b"kx\x01"
            else:
                assert enc.ciphertext[:3] == b"kx\x01" and enc.annotations == {}
                assert enc.ciphertext[3:11] == pkcs11format.key_ref(enc.key_id)
            bad = bytearray(enc.ciphertext)
            bad[-1] ^= 1
            with pytest.raises(InvalidCiphertext):
                c.decrypt(bytes(bad), enc.key_id, enc.annotations)
            with pytest.raises(InvalidCiphertext):
                c.decrypt(enc.ciphertext, "sha256:" + "0" * 64, enc.annotations)
            # KMS v1 on the same socket: the token wraps directly (v1 has no annotations).
            with KMSv1Client(f"unix://{d / 'p.sock'}", timeout=5) as v1:
                cipher = v1.encrypt(seed)
                assert cipher[:3] == b"kx\x01"
                assert v1.decrypt(cipher) == seed
    assert token.pin not in capsys.readouterr().err


def test_rotation_without_restart(token: Token) -> None:
    with short_dir() as d:
        config = serve_config(d, pkcs11=_settings(token), probe_interval=0.2)
        with serving(config), _client(d) as c:
            old_id = c.status().key_id
            seed = os.urandom(32)
            old = c.encrypt(seed)
            rotated = _subprocess_cli(token, "pkcs11", "rotate-key", *token.flags())
            assert rotated.returncode == 0, rotated.stderr
            assert "kek-2 is current" in rotated.stdout
            new_id = wait_for(lambda: (k := c.status().key_id) != old_id and k, timeout=10)
            new = c.encrypt(seed)
            assert new.key_id == new_id != old.key_id
            # The old key stays in the token for Decrypt: values written before still read.
            assert c.decrypt(old.ciphertext, old.key_id, old.annotations) == seed
            assert c.decrypt(new.ciphertext, new.key_id, new.annotations) == seed
    listed = _subprocess_cli(token, "pkcs11", "list-keys", *token.flags(), "-o", "json")
    rows = json.loads(listed.stdout)
    assert [(r["label"], r["current"]) for r in rows] == [("kek-1", False), ("kek-2", True)]
    assert rows[1]["key_id"] == new_id and rows[0]["key_id"] == old_id


def test_decrypt_miss_rereads_the_key_list(token: Token) -> None:
    """A value from an instance that already rotated is read before this one's next probe."""
    with short_dir() as d:
        config = serve_config(d, pkcs11=_settings(token), local_kek=False, probe_interval=3600)
        with serving(config), _client(d) as c:
            old_id = c.status().key_id
            assert _subprocess_cli(token, "pkcs11", "rotate-key", *token.flags()).returncode == 0
            with short_dir() as d2:
                other = serve_config(d2, pkcs11=_settings(token), local_kek=False)
                with serving(other), _client(d2) as c2:
                    seed = os.urandom(32)
                    enc = c2.encrypt(seed)
                    assert enc.key_id != old_id
                    # Misses re-read the list at most once per RESCAN_MIN_INTERVAL (start-up just read it).
                    time.sleep(RESCAN_MIN_INTERVAL)
                    assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed


def test_key_is_generated_in_the_token_and_not_extractable(token: Token) -> None:
    lib = pkcs11.lib(MODULE)
    tok = lib.get_token(token_label=token.label)
    with tok.open(user_pin=token.pin) as session:
        keys = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: "kek-1"}))
        assert len(keys) == 1
        key = keys[0]
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.LOCAL] is True  # generated inside the token, never imported
        with pytest.raises(p11.AttributeSensitive):
            key[Attribute.VALUE]
    # The same through the CLI (never material).
    rows = json.loads(_subprocess_cli(token, "pkcs11", "list-keys", *token.flags(), "-o", "json").stdout)
    assert [(r["label"], r["sensitive"], r["extractable"]) for r in rows] == [("kek-1", True, False)]


def test_init_key_refuses_an_existing_family_and_rotate_needs_one(token: Token) -> None:
    again = _subprocess_cli(token, "pkcs11", "init-key", *token.flags())
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        "kms-plugin: error: token already holds kek-1; use kms-plugin pkcs11 rotate-key"
    ]
    none = _subprocess_cli(token, "pkcs11", "rotate-key", *token.flags("other"))
    assert none.returncode == 2
    assert "no key other-<n>" in none.stderr


def test_a_bare_pin_on_argv_is_refused_without_echoing_it(token: Token) -> None:
    flags = [*token.flags()[:-1], token.pin]
    for argv in (["pkcs11", "list-keys", *flags], ["serve", "--listen", "unix:///tmp/x.sock", *flags]):
        res = _subprocess_cli(token, *argv)
        assert res.returncode == 2
        assert "--pkcs11-pin takes @FILE" in res.stderr
        assert token.pin not in res.stderr + res.stdout
    # The environment works instead of the file.
    env = {**token.env(), "KMS_PLUGIN_PKCS11_PIN": token.pin}
    res = subprocess.run([*KMS_PLUGIN, "pkcs11", "list-keys", *token.flags()[:-2]], env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "kek-1" in res.stdout


def test_wrong_pin_keeps_livez_up_and_says_why(token: Token, tmp_path: Path, caplog, capsys) -> None:
    wrong = tmp_path / "pin"
    wrong.write_text("not-the-pin-9876\n")
    wrong.chmod(0o600)
    caplog.set_level(logging.DEBUG)
    with short_dir() as d:
        config = serve_config(d, pkcs11=_settings(token, pin_file=wrong), probe_interval=0.2)
        with serving(config) as server, _client(d) as c:
            status = c.status()
            assert "refused the PIN" in status.healthz
            assert health_get(server, "/livez")[0] == 200
            code, body = health_get(server, "/healthz")
            assert code == 503 and "refused the PIN" in body
            with pytest.raises(PluginError) as info:
                c.encrypt(os.urandom(32))
            assert info.value.code == "FAILED_PRECONDITION"
            # Later probes do not offer the token the same wrong PIN again (HSMs lock the user).
            wait_for(lambda: "not retried until the PIN changes" in c.status().healthz, timeout=10)
            # Fixed in the file: the next probe logs in, no restart.
            wrong.write_text(token.pin + "\n")
            wait_for(lambda: c.status().healthz == "ok", timeout=10)
            assert health_get(server, "/healthz")[0] == 200
            seed = os.urandom(32)
            enc = c.encrypt(seed)
            assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
    captured = capsys.readouterr()
    assert token.pin not in caplog.text + captured.out + captured.err
    assert "not-the-pin-9876" not in caplog.text + captured.out + captured.err


@pytest.mark.parametrize("local_kek", [True, False])
def test_token_removed_keeps_livez_up_then_recovers(token: Token, local_kek: bool) -> None:
    with short_dir() as d:
        config = serve_config(d, pkcs11=_settings(token), probe_interval=0.2, local_kek=local_kek)
        with serving(config) as server, _client(d) as c:
            seed = os.urandom(32)
            enc = c.encrypt(seed)
            assert c.status().healthz == "ok"
            moved = token.tokendir.with_name("tokens.gone")
            token.tokendir.rename(moved)
            wait_for(lambda: "cannot initialise" in c.status().healthz, timeout=10)
            code, body = health_get(server, "/healthz")
            assert code == 503 and "pkcs11" in body
            assert health_get(server, "/livez")[0] == 200
            with pytest.raises(PluginError) as info:
                c.encrypt(seed)
            assert info.value.code == "FAILED_PRECONDITION"
            if local_kek:
                # The unwrapped local KEK is cached: values already written stay readable.
                assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
            else:
                with pytest.raises(PluginError) as info:
                    c.decrypt(enc.ciphertext, enc.key_id, enc.annotations)
                assert info.value.code == "FAILED_PRECONDITION"
            # Put back: the module is re-initialised and the same key serves again.
            moved.rename(token.tokendir)
            wait_for(lambda: c.status().healthz == "ok", timeout=10)
            assert c.status().key_id == enc.key_id
            assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
            again = c.encrypt(seed)
            assert c.decrypt(again.ciphertext, again.key_id, again.annotations) == seed


def test_serve_refuses_a_missing_module_and_mixed_backends(token: Token, tmp_path: Path) -> None:
    sock = f"unix://{tmp_path / 'p.sock'}"
    flags = token.flags()
    flags[1] = str(tmp_path / "nope.so")
    res = _subprocess_cli(token, "serve", "--listen", sock, "--health-addr", "off", *flags)
    assert res.returncode == 2
    assert "--pkcs11-module" in res.stderr and "no such file" in res.stderr
    loose = tmp_path / "pin"
    loose.write_text(token.pin)
    loose.chmod(0o644)
    res = _subprocess_cli(token, "serve", "--listen", sock, "--health-addr", "off", *token.flags(pin=str(loose)))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"kms-plugin: error: --pkcs11-pin @{loose}: readable by group or others (mode 0644); chmod 0600 it"
    ]
    keyring = tmp_path / "k.json"
    res = _subprocess_cli(token, "serve", "--listen", sock, "--keyring", str(keyring), *token.flags())
    assert res.returncode == 2
    assert "may not be used with --keyring" in res.stderr


def test_concurrent_calls_straight_to_the_token(token: Token) -> None:
    """8 clients at once, every call in the token (no local KEK): calls into the module are
    serialised, so SoftHSM (initialised for a single thread) neither fails nor crashes."""
    with short_dir() as d:
        sock = d / "p.sock"
        # SOFTHSM2_CONF is in this process's environment (softhsm_token), so the server has it.
        proc = start_serve("--listen", f"unix://{sock}", "--health-addr", "off", "--no-local-kek", *token.flags())
        try:
            wait_for_socket(sock, proc)
            errors: list[str] = []

            def work() -> None:
                with _client(d) as c:
                    for _ in range(60):
                        seed = os.urandom(32)
                        try:
                            enc = c.encrypt(seed)
                            assert c.decrypt(enc.ciphertext, enc.key_id, enc.annotations) == seed
                        except Exception as exc:  # noqa: BLE001 - collected, asserted below
                            errors.append(repr(exc))

            threads = [threading.Thread(target=work) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)

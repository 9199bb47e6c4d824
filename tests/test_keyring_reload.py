"""Unreadable keyring files: a serving plugin keeps its last good keyring; the CLI exits 2.

Covers what used to escape as internal errors: JSON nested deeper than the parser recurses, a
number too long to convert, non-UTF-8 bytes, wrong JSON types, an oversized file, a FIFO.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from typing import TYPE_CHECKING

import pytest

from kms_plugin.client import KMSv2Client
from kms_plugin.errors import ConfigError
from kms_plugin.keks.local import MAX_KEYRING_BYTES, Keyring, load_keyring, parse_keyring
from tests.support.cli import KMS_PLUGIN
from tests.support.kms import health_get, make_keyring, served, short_dir

if TYPE_CHECKING:
    from pathlib import Path


_KEY = base64.b64encode(b"k" * 32).decode()


def _entry(**changes: object) -> dict[str, object]:
    entry = {"id": "a1", "created": "2026-01-02T03:04:05Z", "state": "active", "key": _KEY}
    return {**entry, **changes}


def _doc(**changes: object) -> bytes:
    return json.dumps({"version": 1, "keks": [_entry(**changes)]}).encode()


# kind -> (file bytes, or None for a FIFO; what the one-line error says)
BAD: dict[str, tuple[bytes | None, str]] = {
    "deep-list": (b"[" * 100_000, "nested too deeply"),
    "deep-object": (b'{"a":' * 100_000, "nested too deeply"),
    "deep-in-a-kek": (
        b'{"version": 1, "keks": [{"id": "a1", "state": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}",
        "nested too deeply",
    ),
    "binary": (bytes(range(256)) * 4, "malformed JSON"),
    "bad-utf8": (b'{"version": 1, "keks": ["\xff\xfe"]}', "malformed JSON"),
    "long-number": (b'{"version": ' + b"9" * 5000 + b"}", "malformed JSON"),
    "oversized": (b" " * (MAX_KEYRING_BYTES + 1), f"larger than {MAX_KEYRING_BYTES} bytes"),
    "version-true": (b'{"version": true, "keks": []}', "unsupported version True"),
    "state-list": (_doc(state=["active"]), "state must be one of active, decrypt-only, not a list"),
    "key-number": (_doc(key=12), "key must be 32 bytes"),
    "key-non-ascii": (_doc(key="\u00e9" * 44), "key is not valid base64"),
    "created-overflow": (_doc(created="0001-01-01T00:00:00+01:00"), "RFC 3339"),
    "created-year-999": (_doc(created="0999-01-01T00:00:00Z"), "RFC 3339"),
    "id-newline": (_doc(id="a1\n"), "id must match"),
    "fifo": (None, "not a regular file"),
}


def _write_bad(path: Path, kind: str) -> None:
    data, _ = BAD[kind]
    path.unlink(missing_ok=True)
    if data is None:
        os.mkfifo(path, 0o600)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_library_refuses_with_a_config_error(kind: str) -> None:
    with short_dir() as d:
        path = d / "k.json"
        _write_bad(path, kind)
        with pytest.raises(ConfigError, match=BAD[kind][1]) as info:
            load_keyring(path)
        assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_parse_keyring_bounds_its_input() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        parse_keyring(b" " * (MAX_KEYRING_BYTES + 1), "k.json")


def test_serving_plugin_keeps_the_last_good_keyring_on_any_bad_file() -> None:
    with short_dir() as d, served(d) as server, KMSv2Client(server.config.listen) as c:
        path = server.config.keyring
        assert path is not None
        good = path.read_bytes()
        enc = c.encrypt(b"g" * 32)
        assert health_get(server, "/healthz") == (200, "ok\n")
        errors = 0
        for kind, (_, reason) in sorted(BAD.items()):
            _write_bad(path, kind)
            errors += 1
            st = c.status()
            assert st.healthz.startswith("keyring reload failed"), (kind, st.healthz)
            assert reason in st.healthz, (kind, st.healthz)
            assert st.key_id == enc.key_id
            assert c.decrypt(enc.ciphertext, enc.key_id) == b"g" * 32
            again = c.encrypt(b"h" * 32)
            assert again.key_id == enc.key_id
            assert c.decrypt(again.ciphertext, again.key_id) == b"h" * 32
            code, body = health_get(server, "/healthz")
            assert code == 503 and "keyring reload failed" in body and reason in body, kind
            assert health_get(server, "/livez") == (200, "ok\n")  # user-caused: no restart
            # Fixed again: health recovers before the next bad file.
            path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(good)
            assert c.status().healthz == "ok", kind
            assert health_get(server, "/healthz") == (200, "ok\n"), kind
        _, metrics = health_get(server, "/metrics")
        counted = re.search(r'kms_plugin_keyring_reloads_total\{result="error"\} (\S+)', metrics)
        # >=: a bad file is re-read (and counted) again after each second it stays bad.
        assert counted is not None and float(counted[1]) >= errors


def _one_line_exit_2(res: subprocess.CompletedProcess[bytes], reason: str) -> None:
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("kms-plugin: error: keyring "), err
    assert reason in err
    assert "internal error" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "kind", ["deep-list", "deep-in-a-kek", "binary", "long-number", "oversized", "fifo"]
)
def test_cli_list_and_serve_exit_2_with_one_line(kind: str) -> None:
    with short_dir() as d:
        path = d / "k.json"
        _write_bad(path, kind)
        reason = BAD[kind][1]
        for args in (
            ["keyring", "list", str(path)],
            ["keyring", "rotate", str(path)],
            ["serve", "--listen", f"unix://{d}/p.sock", "--keyring", str(path),
             "--health-addr", "off"],
        ):
            res = subprocess.run([*KMS_PLUGIN, *args], check=False, capture_output=True, timeout=60)
            _one_line_exit_2(res, reason)
            assert res.stdout == b""
        assert not (d / "p.sock").exists()


def test_a_good_keyring_still_loads_and_lists() -> None:
    with short_dir() as d:
        path = d / "k.json"
        keyring = make_keyring(path)
        res = subprocess.run(
            [*KMS_PLUGIN, "keyring", "list", str(path), "--output", "json"],
            check=False,
            capture_output=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert [r["key_id"] for r in json.loads(res.stdout)] == [keyring.active_key_id]
        assert Keyring.load(path).active_key_id == keyring.active_key_id

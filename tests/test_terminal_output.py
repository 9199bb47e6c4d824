"""Human output never carries raw control bytes from user data (etcd keys, paths, names).

A crafted etcd key with ESC, BEL, CR or LF could rewrite the operator's terminal through the
``check`` table, ``status`` or ``extract``'s stderr list; each must show it escaped.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from hypothesis import given
from hypothesis import strategies as st

from kms_plugin.terminal import printable
from snapshot_tools.providers import aescbc, static_prefix
from tests.support.cli import snapshot_tools_process
from tests.support.configs import rule, static, write_config
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

# ESC [2J clears the screen; OSC 0 sets the window title; BEL, CR, LF, DEL, C1 CSI, RLO.
HOSTILE = "evil\x1b[2J\x1b]0;pwned\x07\r\nfake\x7f\u009b\u202e"
CONTROL = {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)} | {"\u202e"}
KEY = bytes(range(32))


def _cbc_value(plaintext: bytes) -> bytes:
    # A value under aescbc key "k1" of another material: check calls it wrong-key and lists it.
    return static_prefix("aescbc", "k1") + aescbc.encrypt(bytes(range(1, 33)), plaintext)


def _snapshot(tmp_path: Path) -> Path:
    return write_snapshot(
        tmp_path / "hostile.db",
        {f"/registry/secrets/default/{HOSTILE}": _cbc_value(b"k8s\x00secret"), f"/registry/{HOSTILE}/x": b"plain"},
    )


def _config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "c.json", rule(["secrets"], static("aescbc", ("k1", KEY))))


def _assert_clean(text: str) -> None:
    allowed = {"\n"}
    bad = sorted({ch for ch in text if ch in CONTROL and ch not in allowed})
    assert not bad, f"raw control characters in human output: {bad!r}"
    # The key's CR/LF must not start a line of its own.
    assert not any(line.startswith("fake") for line in text.splitlines())


def test_check_table_escapes_etcd_keys(tmp_path: Path) -> None:
    proc = snapshot_tools_process("check", str(_snapshot(tmp_path)), "--config", str(_config(tmp_path)))
    assert proc.returncode == 1, proc.stderr  # wrong-key
    _assert_clean(proc.stdout)
    _assert_clean(proc.stderr)
    assert printable(f"/registry/secrets/default/{HOSTILE}") in proc.stdout
    # JSON keeps the exact key (its encoder escapes control characters itself).
    proc = snapshot_tools_process("check", str(_snapshot(tmp_path)), "--config", str(_config(tmp_path)), "-o", "json")
    _assert_clean(proc.stdout)
    keys = [o["key"] for o in json.loads(proc.stdout)["objects"]]
    assert f"/registry/secrets/default/{HOSTILE}" in keys


def test_status_escapes_resource_names(tmp_path: Path) -> None:
    proc = snapshot_tools_process("status", str(_snapshot(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    _assert_clean(proc.stdout)
    _assert_clean(proc.stderr)
    assert printable(HOSTILE) in proc.stdout


def test_extract_stderr_escapes_skipped_keys(tmp_path: Path) -> None:
    proc = snapshot_tools_process("extract", str(_snapshot(tmp_path)), "--config", str(_config(tmp_path)))
    assert proc.returncode == 1  # the one Secret is unreadable
    _assert_clean(proc.stderr)
    assert printable(HOSTILE) in proc.stderr


@given(st.text())
def test_printable_is_safe_and_reversible(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert not CONTROL & set(shown)
    # Unambiguous: decoding the escapes gives the text back.
    assert shown.encode("ascii", "backslashreplace").decode("unicode_escape") == text


def test_error_lines_escape_paths(tmp_path: Path) -> None:
    missing = tmp_path / f"no-such-{HOSTILE.replace(chr(10), '').replace(chr(13), '')}.db"
    proc = snapshot_tools_process("status", str(missing))
    assert proc.returncode == 3
    _assert_clean(proc.stderr)
    assert len(proc.stderr.splitlines()) == 1
    assert "\\x1b[2J" in proc.stderr

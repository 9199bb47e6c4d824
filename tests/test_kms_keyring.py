"""The local keyring and our wrapped format, offline (no server)."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms_plugin.errors import ConfigError, InvalidCiphertext, UnknownKeyId
from kms_plugin.keks import format as wire
from kms_plugin.keks.local import (
    ACTIVE,
    DECRYPT_ONLY,
    Kek,
    Keyring,
    LocalKeyringBackend,
    key_id_for,
    parse_keyring,
    save_keyring,
)
from tests.support.cli import plugin_cli
from tests.support.kms import short_dir

KEYRING = Keyring.generate()


def _doc(*entries: dict[str, str]) -> bytes:
    return json.dumps({"version": 1, "keks": list(entries)}).encode()


def _entry(kek_id: str = "a1", state: str = ACTIVE, key: bytes = b"k" * 32) -> dict[str, str]:
    return {
        "id": kek_id,
        "created": "2026-01-02T03:04:05Z",
        "state": state,
        "key": base64.b64encode(key).decode(),
    }


@given(st.binary(min_size=1, max_size=wire.max_plaintext(KEYRING.active.id)))
@settings(max_examples=50, deadline=None)
def test_wrap_unwrap_round_trip(plaintext: bytes) -> None:
    ciphertext, key_id, annotations = KEYRING.wrap(plaintext)
    assert key_id == KEYRING.active_key_id
    assert annotations == {}
    assert len(plaintext) < 8 or plaintext not in ciphertext
    assert KEYRING.unwrap(ciphertext, key_id) == plaintext
    assert KEYRING.unwrap(ciphertext) == plaintext  # offline: routed by the header alone


def test_header_names_the_kek_and_is_authenticated() -> None:
    ciphertext = KEYRING.wrap(b"s" * 32).ciphertext
    parsed = wire.parse(ciphertext)
    assert parsed.kek_id == KEYRING.active.id
    assert ciphertext.startswith(b"kp\x01" + bytes([len(KEYRING.active.id)]))
    assert len(ciphertext) == 32 + wire.overhead(KEYRING.active.id)


def test_every_flipped_byte_is_refused() -> None:
    ciphertext = KEYRING.wrap(os.urandom(32)).ciphertext
    for i in range(len(ciphertext)):
        bad = bytearray(ciphertext)
        bad[i] ^= 0x01
        with pytest.raises((InvalidCiphertext, UnknownKeyId)):
            KEYRING.unwrap(bytes(bad))


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 20, 40, -1])
def test_truncated_ciphertext_is_refused(cut: int) -> None:
    ciphertext = KEYRING.wrap(os.urandom(32)).ciphertext
    with pytest.raises(InvalidCiphertext):
        KEYRING.unwrap(ciphertext[:cut])


def test_header_cannot_be_moved_to_another_kek() -> None:
    rotated = KEYRING.rotated()
    old = rotated.keks[0]
    ciphertext = rotated.wrap(b"x" * 32).ciphertext
    # Re-label the ciphertext with the other KEK's id of the same length: AAD must catch it.
    body = ciphertext[len(wire.header_for(rotated.active.id)) :]
    forged = wire.header_for(old.id) + body
    with pytest.raises(InvalidCiphertext, match="failed authentication"):
        rotated.unwrap(forged)


def test_key_id_rules_across_rotation() -> None:
    rotated = KEYRING.rotated()
    assert rotated.active_key_id != KEYRING.active_key_id
    assert rotated.keks[0].state == DECRYPT_ONLY
    assert rotated.keks[0].key_id == KEYRING.active_key_id  # stable for the same KEK
    old_ct = KEYRING.wrap(b"o" * 32)
    assert rotated.knows_key_id(old_ct.key_id)
    assert rotated.unwrap(old_ct.ciphertext, old_ct.key_id) == b"o" * 32
    with pytest.raises(InvalidCiphertext, match="disagrees"):
        rotated.unwrap(old_ct.ciphertext, rotated.active_key_id)
    with pytest.raises(UnknownKeyId):
        rotated.unwrap(old_ct.ciphertext, "sha256:" + "0" * 64)
    with pytest.raises(UnknownKeyId):
        Keyring.generate().unwrap(old_ct.ciphertext)
    assert rotated.key_id_for(KEYRING.active.id) == KEYRING.active_key_id


def test_key_id_is_a_hash_of_identity_not_material() -> None:
    kek = KEYRING.active
    assert kek.key_id == key_id_for(kek.id, kek.created)
    assert kek.key_id.startswith("sha256:") and len(kek.key_id) == 7 + 64
    same_identity = Kek(kek.id, kek.created, ACTIVE, os.urandom(32))
    assert same_identity.key_id == kek.key_id
    assert kek.key.hex() not in kek.key_id
    assert kek.key.hex() not in repr(kek) and kek.key.hex() not in repr(KEYRING)


def test_annotations_are_refused_by_the_local_keyring() -> None:
    wrapped = KEYRING.wrap(b"a" * 32)
    with pytest.raises(InvalidCiphertext, match="annotations"):
        KEYRING.unwrap(wrapped.ciphertext, wrapped.key_id, {"x.kms-plugin.local": b"1"})


def test_plaintext_size_limits() -> None:
    with pytest.raises(ValueError, match="empty"):
        KEYRING.wrap(b"")
    with pytest.raises(ValueError, match="fit in 1 KiB"):
        KEYRING.wrap(b"x" * (wire.max_plaintext(KEYRING.active.id) + 1))
    assert len(KEYRING.wrap(b"x" * wire.max_plaintext(KEYRING.active.id)).ciphertext) == 1024


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "top level must be an object"),
        (json.dumps({"version": 2, "keks": []}).encode(), "unsupported version"),
        (_doc(), "holds no KEKs"),
        (_doc(_entry("a1", DECRYPT_ONLY)), "no active KEK"),
        (_doc(_entry("a1"), _entry("b2")), "2 active KEKs"),
        (_doc(_entry("a1"), _entry("a1", DECRYPT_ONLY)), "duplicate KEK id"),
        (_doc(_entry(key=b"short")), "must be 32 bytes"),
        (_doc({**_entry(), "key": "!!notbase64"}), "not valid base64"),
        (_doc({**_entry(), "state": "enabled"}), "state must be one of"),
        (_doc({**_entry(), "created": "yesterday"}), "RFC 3339"),
        (_doc({**_entry(), "created": "2026-01-02T03:04:05"}), "RFC 3339"),
        (_doc({**_entry(), "id": "has space"}), "id must match"),
        (_doc({**_entry(), "extra": "x"}), "unknown field"),
        (_doc({k: v for k, v in _entry().items() if k != "key"}), "lacks key"),
    ],
)
def test_bad_keyring_documents(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_keyring(data, "k.json")
    text = str(info.value)
    assert "\n" not in text
    assert base64.b64encode(b"k" * 32).decode() not in text


def test_unsafe_modes_refused() -> None:
    with short_dir() as d:
        path = d / "k.json"
        save_keyring(path, KEYRING, replace=False)
        assert Keyring.load(path).active_key_id == KEYRING.active_key_id
        for mode in (0o640, 0o604, 0o620, 0o602):
            path.chmod(mode)
            with pytest.raises(ConfigError, match="group or others"):
                Keyring.load(path)


def test_save_is_0600_and_refuses_to_clobber() -> None:
    with short_dir() as d:
        path = d / "k.json"
        save_keyring(path, KEYRING, replace=False)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(ConfigError, match="already exists"):
            save_keyring(path, Keyring.generate(), replace=False)
        assert Keyring.load(path).active_key_id == KEYRING.active_key_id
        # No temp files left; the writer lock file stays (its identity must be stable).
        assert sorted(p.name for p in d.iterdir()) == ["k.json", "k.json.lock"]
        assert stat.S_IMODE((d / "k.json.lock").stat().st_mode) == 0o600


def test_cli_init_rotate_list(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d:
        path = d / "k.json"
        assert plugin_cli("keyring", "init", str(path)) == 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        first = Keyring.load(path)
        assert plugin_cli("keyring", "init", str(path)) == 2
        assert "already exists" in capsys.readouterr().err
        inode = path.stat().st_ino
        assert plugin_cli("keyring", "rotate", str(path)) == 0
        second = Keyring.load(path)
        assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [k.state for k in second.keks] == [DECRYPT_ONLY, ACTIVE]
        assert second.keks[0].id == first.active.id
        assert second.keks[0].key == first.active.key
        capsys.readouterr()
        assert plugin_cli("keyring", "list", str(path), "--output", "json") == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["key_id"] for r in rows] == [k.key_id for k in second.keks]
        assert plugin_cli("keyring", "list", str(path)) == 0
        out = capsys.readouterr().out
        for kek in second.keks:
            assert kek.id in out
            assert kek.key.hex() not in out
            assert base64.b64encode(kek.key).decode() not in out
        assert plugin_cli("keyring", "init", "--force", str(path)) == 0
        assert Keyring.load(path).active_key_id not in {k.key_id for k in second.keks}


def test_backend_reload_keeps_serving_on_a_bad_file() -> None:
    with short_dir() as d:
        path = d / "k.json"
        save_keyring(path, KEYRING, replace=False)
        events: list[str] = []
        backend = LocalKeyringBackend(path, on_reload=lambda r, _k, _m: events.append(r))
        old = backend.wrap(b"p" * 32)
        assert backend.status().healthy
        save_keyring(path, KEYRING.rotated(), replace=True)
        st1 = backend.status()
        assert st1.healthy and st1.key_id != KEYRING.active_key_id
        path.write_text("{broken")
        st2 = backend.status()
        assert not st2.healthy and st2.user_caused
        assert "malformed JSON" in st2.reason
        assert st2.key_id == st1.key_id  # the last good keyring keeps serving
        assert backend.unwrap(old.ciphertext, old.key_id, {}) == b"p" * 32
        save_keyring(path, KEYRING, replace=True)
        st3 = backend.status()
        assert st3.healthy and st3.key_id == KEYRING.active_key_id
        assert events == ["ok", "error", "ok"]


def test_created_times_parse_with_offsets() -> None:
    entry = {**_entry(), "created": "2026-01-02T05:04:05+02:00"}
    keyring = parse_keyring(_doc(entry), "k.json")
    assert keyring.active.created == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

"""The PKCS#11 naming, key_id and wire-format rules, and where the PIN may come from (tables)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest

from kms_plugin.errors import ConfigError, InvalidCiphertext
from kms_plugin.keks import pkcs11format as fmt
from kms_plugin.keks.pkcs11pin import PIN_ENV, PinSource, pin_source

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("label", "generation"),
    [
        ("kek-1", 1),
        ("kek-12", 12),
        ("kek-0", None),  # generations start at 1
        ("kek-01", None),  # one spelling per number
        ("kek-", None),
        ("kek-1a", None),
        ("kek-٣", None),  # a non-ASCII digit
        ("kek2-1", None),  # another family
        ("other-1", None),
        ("kek", None),
    ],
)
def test_generation_of(label: str, generation: int | None) -> None:
    assert fmt.generation_of("kek", label) == generation


@pytest.mark.parametrize("label", ["kek", "k8s.secrets", "a/b:c_d-e"])
def test_base_label_accepted(label: str) -> None:
    assert fmt.check_base_label(label) == label


@pytest.mark.parametrize("label", ["", "kek-3", "-kek", "k e k", "k\nek", "x" * 97])
def test_base_label_refused(label: str) -> None:
    with pytest.raises(ConfigError, match="--pkcs11-key-label"):
        fmt.check_base_label(label)


def test_current_is_the_highest_generation() -> None:
    refs = [fmt.KeyRef(f"k-{n}", n, bytes([n]), f"id{n}") for n in (2, 10, 3)]
    current = fmt.pick_current(refs)
    assert current is not None and current.label == "k-10"
    assert fmt.pick_current([]) is None


def test_key_id_binds_serial_cka_id_and_label_and_shows_none_of_them() -> None:
    base = fmt.key_id_for("40ffa0286cec28a3", b"\x01" * 16, "kek-1")
    expected = hashlib.sha256(b"kms-plugin-pkcs11-kek:40ffa0286cec28a3\x00" + b"01" * 16 + b"\x00kek-1")
    assert base == "sha256:" + expected.hexdigest()
    others = {
        fmt.key_id_for("40ffa0286cec28a4", b"\x01" * 16, "kek-1"),
        fmt.key_id_for("40ffa0286cec28a3", b"\x02" * 16, "kek-1"),
        fmt.key_id_for("40ffa0286cec28a3", b"\x01" * 16, "kek-2"),
    }
    assert base not in others and len(others) == 3
    assert "kek" not in base and "40ffa" not in base


def test_parse_round_trip_and_exact_errors() -> None:
    ref = fmt.key_ref("sha256:" + "ab" * 32)
    header = fmt.header(ref)
    assert header == b"kx\x01" + ref and len(header) == fmt.HEADER_SIZE
    body = b"c" * 32 + b"t" * 16
    sealed = fmt.parse(header + b"n" * 12 + body)
    assert (sealed.header, sealed.ref, sealed.nonce, sealed.body) == (header, ref, b"n" * 12, body)
    for bad, why in (
        (b"ka\x01" + bytes(40), "not in the kms-plugin PKCS#11 format"),
        (b"kx\x02" + bytes(40), "unsupported kms-plugin PKCS#11 format version"),
        (header + b"n" * 12 + b"t" * 16, "truncated"),
    ):
        with pytest.raises(InvalidCiphertext, match=why):
            fmt.parse(bad)
    assert fmt.MAX_PLAINTEXT == 1024 - 11 - 12 - 16


def test_pin_from_argv_is_refused_without_echo() -> None:
    for value in ("1234", "secret-pin", "@"):
        with pytest.raises(ConfigError) as info:
            pin_source(value)
        assert "takes @FILE" in str(info.value)
        assert value == "@" or value not in str(info.value)
    assert pin_source(None) == PinSource()


def test_pin_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pin"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    assert pin_source(f"@{path}").read() == "s3cret"
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by group or others") as info:
        pin_source(f"@{path}").read()
    assert "s3cret" not in str(info.value)
    path.chmod(0o600)
    path.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        pin_source(f"@{path}").read()
    with pytest.raises(ConfigError, match="No such file"):
        pin_source(f"@{tmp_path / 'missing'}").read()
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(ConfigError):
        pin_source(f"@{link}").read()
    monkeypatch.delenv(PIN_ENV, raising=False)
    with pytest.raises(ConfigError, match=PIN_ENV):
        PinSource().read()
    monkeypatch.setenv(PIN_ENV, "from-env")
    assert PinSource().read() == "from-env"
    assert "from-env" not in repr(PinSource())

"""``snapshot_tools.k3s_bootstrap``: tokens, the bootstrap value, both plaintext formats, key variants.

Records are sealed by ``tests/support/k3s.py`` from the spec's recipe; the facts pinned here
(``ShortHash("abc", 12)``, the empty-token key, the normalisation table) are K3s's own unit-test
facts quoted in ``spec/k3s-rke2-bootstrap.md`` sections 1 and 4.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.errors import BootstrapError, InvalidCiphertext, TokenError
from snapshot_tools.k3s_bootstrap import BootstrapRecord, decrypt_value, find_bootstrap, parse_plaintext, parse_state
from snapshot_tools.k3s_token import normalize_token, read_token, short_hash, token_hash
from snapshot_tools.keysets import ConfigBytes, load_keyset
from tests.support.k3s import (
    CA_HASH,
    IDENTITY,
    aescbc,
    bootstrap_files,
    bootstrap_json,
    bootstrap_record,
    full_token,
    k3s_config,
    seal,
    state_for,
)

if TYPE_CHECKING:
    from pathlib import Path

KEY = bytes(range(32))
CONFIG = k3s_config(aescbc(("aescbckey", KEY)), IDENTITY)


def rec(key: str, value: bytes, revision: int = 5) -> BootstrapRecord:
    return BootstrapRecord(key, key.removeprefix("/bootstrap/"), len(value), revision, value)


# -- tokens ----------------------------------------------------------------------------------------


def test_short_hash_pins_k3s_unit_test_values() -> None:
    assert short_hash("abc", 12) == "ba7816bf8f01"
    assert short_hash("") == "e3b0c44298fc"  # the empty-token key


@pytest.mark.parametrize(
    ("token", "password"),
    [
        (f"K10{CA_HASH}::server:pw", "pw"),
        (f"K10{CA_HASH}::node:s3cr:et", "s3cr:et"),  # split once on ":" after "::"
        ("pw", "pw"),
        ("a:b", "a:b"),  # bare with a colon: K10:::a:b, kept whole
        ("K10::server:pw", "pw"),  # an empty CA hash is allowed
        ("0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),  # getServerPass
    ],
)
def test_normalisation_table(token: str, password: str) -> None:
    assert normalize_token(token) == password


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abcdef.0123456789abcdef",  # a kubeadm bootstrap token is no server passphrase
        f"K10{CA_HASH}::abcdef.0123456789abcdef",
        "K10deadbeef::server:pw",  # CA hash not 64 characters
        f"K10{CA_HASH}::server:",  # no password
        f"K10{CA_HASH}::server",
    ],
)
def test_malformed_tokens_are_refused_without_echo(token: str) -> None:
    with pytest.raises(TokenError) as err:
        normalize_token(token)
    if token:
        assert token not in str(err.value)


def test_token_hash_is_of_the_password() -> None:
    assert token_hash(full_token("pw")) == hashlib.sha256(b"pw").hexdigest()[:12]


def test_read_token_file_is_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {full_token('pw')}\n\n")
    assert read_token(f"@{path}") == full_token("pw")
    assert read_token(" as given ") == " as given "  # a CLI token is used as given


@pytest.mark.parametrize("content", [b"", b" \n\t"])
def test_read_token_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(TokenError, match="empty"):
        read_token(f"@{path}")


def test_read_token_missing_and_fifo(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="no such file"):
        read_token(f"@{tmp_path / 'nope'}")
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TokenError, match="not a regular file"):
        read_token(f"@{fifo}")


# -- the value ------------------------------------------------------------------------------------


def test_decrypt_round_trip_and_wrong_passphrase() -> None:
    value = seal("pw", b"hello", salt="0123456789abcdef")
    assert value.startswith(b"0123456789abcdef:")
    assert decrypt_value("pw", value) == b"hello"
    with pytest.raises(InvalidCiphertext):
        decrypt_value("other", value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"no-colon-here", "not : delimited"),
        (b"0123456789abcdef:!!!", "not base64"),
        (b"0123456789abcdef:AAAA", "shorter than a nonce and a tag"),
        (b"\xff\xfe:AAAA", "not ASCII"),
    ],
)
def test_malformed_values(value: bytes, reason: str) -> None:
    with pytest.raises(BootstrapError, match=reason):
        decrypt_value("pw", value)


@pytest.mark.parametrize("legacy", [False, True])
def test_both_plaintext_formats(legacy: bool) -> None:
    files = bootstrap_files(CONFIG)
    plain = parse_plaintext(bootstrap_json(files, legacy=legacy))
    assert plain.format == ("legacy" if legacy else "current")
    assert {n: f.content for n, f in plain.files.items()} == files
    stamps = {f.timestamp for f in plain.files.values()}
    assert stamps == ({None} if legacy else {"2024-05-01T10:00:00.123456789Z"})
    assert "BEGIN" not in repr(plain.files["ServerCAKey"])  # content never in repr


@pytest.mark.parametrize(
    "data", [b"not json", b"[1, 2]", b'{"A": {"Content": 5}}', b'{"A": 1}', b'{"A": {"X": "y"}}', b'{"A": "!!"}']
)
def test_bad_plaintext(data: bytes) -> None:
    with pytest.raises(BootstrapError):
        parse_plaintext(data)


def test_state_stage_and_hash() -> None:
    st = parse_state("EncryptionHash", state_for(CONFIG, "reencrypt_finished"), CONFIG)
    assert (st.stage, st.matches) == ("reencrypt_finished", True)
    other = parse_state("EncryptionHash", state_for(b"other", "rotate"), CONFIG)
    assert (other.stage, other.matches) == ("rotate", False)
    junk = parse_state("EncryptionState", b"garbage", CONFIG)
    assert (junk.stage, junk.hash, junk.matches) == (None, None, None)


# -- key variants ---------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("given", [full_token("pw"), "pw"])
def test_token_key(given: str, legacy: bool) -> None:
    key, value = bootstrap_record("pw", bootstrap_files(CONFIG), legacy=legacy)
    data = find_bootstrap([rec(key, value)], given, "snap.db")
    assert data.variant == "token"
    assert data.origin == f"snap.db#{key}"
    assert data.encryption_config == CONFIG
    assert data.format == ("legacy" if legacy else "current")
    assert data.state is not None and data.state.matches is True
    assert data.notes() == []


def test_empty_token_key() -> None:
    key, value = bootstrap_record("", bootstrap_files(CONFIG))
    assert key == "/bootstrap/e3b0c44298fc"
    data = find_bootstrap([rec(key, value)], full_token("pw"), "snap.db")
    assert data.variant == "empty-token"
    assert data.encryption_config == CONFIG
    assert any("empty-token" in n for n in data.notes())


def test_unnormalised_token_key() -> None:
    token = full_token("pw")
    key, value = bootstrap_record(token, bootstrap_files(CONFIG))  # old releases: --token verbatim
    data = find_bootstrap([rec(key, value)], token, "snap.db")
    assert data.variant == "unnormalised-token"
    assert data.encryption_config == CONFIG


def test_lock_only() -> None:
    with pytest.raises(BootstrapError, match="lock"):
        find_bootstrap([rec("/bootstrap/" + short_hash("pw"), b"")], "pw", "snap.db")


def test_no_records() -> None:
    with pytest.raises(BootstrapError, match="no /bootstrap"):
        find_bootstrap([], "pw", "snap.db")


def test_wrong_token_names_the_needed_hash() -> None:
    key, value = bootstrap_record("right", bootstrap_files(CONFIG))
    with pytest.raises(TokenError) as err:
        find_bootstrap([rec(key, value)], full_token("wrong"), "snap.db")
    msg = str(err.value)
    assert short_hash("right") in msg
    assert short_hash("wrong") in msg
    assert "wrong" not in msg.replace(short_hash("wrong"), "")


def test_damaged_record() -> None:
    key, value = bootstrap_record("pw", bootstrap_files(CONFIG))
    # Flip a bit of the decoded tag, not a base64 character: the last character before
    # "=" padding carries bits the decoder ignores, so changing it may change nothing.
    salt, _, b64 = value.partition(b":")
    blob = bytearray(base64.b64decode(b64))
    blob[-1] ^= 0x01
    flipped = salt + b":" + base64.b64encode(bytes(blob))
    with pytest.raises(BootstrapError, match="damaged"):
        find_bootstrap([rec(key, flipped)], "pw", "snap.db")
    with pytest.raises(BootstrapError, match="damaged"):
        find_bootstrap([rec(key, b"garbage")], "pw", "snap.db")


def test_two_keys_uses_the_one_the_token_opens() -> None:
    mine = bootstrap_record("pw", bootstrap_files(CONFIG))
    other = bootstrap_record("other", bootstrap_files(k3s_config(IDENTITY)))
    records = sorted([rec(*mine), rec(*other)], key=lambda r: r.key)
    data = find_bootstrap(records, "pw", "snap.db")
    assert data.record.key == mine[0]
    assert data.encryption_config == CONFIG
    assert [r.key for r in data.others] == [other[0]]
    assert any(other[0] in n and short_hash("other") in n for n in data.notes())


def test_state_mismatch_is_a_note() -> None:
    files = bootstrap_files(CONFIG)
    files["EncryptionHash"] = state_for(b"previous config", "rotate")
    data = find_bootstrap([rec(*bootstrap_record("pw", files))], "pw", "snap.db")
    assert any("does not match" in n for n in data.notes())


def test_keyset_from_bytes_is_current_without_paths_and_history_with(tmp_path: Path) -> None:
    origin = "snap.db#/bootstrap/" + short_hash("pw")
    alone = load_keyset([], [ConfigBytes(origin, CONFIG)])
    assert alone.current.path == origin
    assert [(k.name, k.config) for k in alone.all_keys()] == [("aescbckey", origin)]
    other = tmp_path / "c.json"
    other.write_bytes(k3s_config(aescbc(("aescbckey-2024-01-01T00:00:00Z", bytes(32)))))
    both = load_keyset([str(other)], [ConfigBytes(origin, CONFIG)])
    assert [c.path for c in both.configs] == [str(other), origin]


def test_damaged_candidate_is_noted_when_another_opens() -> None:
    mine = bootstrap_record("pw", bootstrap_files(CONFIG))
    empty = bootstrap_record("", bootstrap_files(CONFIG))
    records = sorted([rec(mine[0], b"garbage"), rec(*empty)], key=lambda r: r.key)
    data = find_bootstrap(records, "pw", "snap.db")
    assert data.variant == "empty-token"
    notes = data.notes()
    assert sum(mine[0] in n for n in notes) == 1
    assert any("damaged" in n for n in notes)

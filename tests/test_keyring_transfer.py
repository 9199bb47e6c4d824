"""``kms-plugin keyring export|import``: KEKs between hosts under a passphrase (scrypt + AES-GCM)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kms_plugin.keks.audit import read_audit
from kms_plugin.keks.local import DECRYPT_ONLY, Keyring
from kms_plugin.keks.transfer import PASSPHRASE_ENV
from tests.support.cli import KMS_PLUGIN
from tests.support.kms import file_mode
from tests.support.lifecycle import assert_no_material, run_plugin

PHRASE = "correct horse battery staple"


@pytest.fixture
def phrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "phrase"
    path.write_text(PHRASE + "\n")
    path.chmod(0o600)
    return path


def _three(capsys: pytest.CaptureFixture[str], path: Path) -> Keyring:
    assert run_plugin(capsys, "keyring", "init", path).code == 0
    assert run_plugin(capsys, "keyring", "rotate", path).code == 0
    assert run_plugin(capsys, "keyring", "rotate", path).code == 0
    return Keyring.load(path)


def test_round_trip_across_two_keyrings(
    tmp_path: Path, phrase_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _three(capsys, tmp_path / "a.json")
    out = tmp_path / "keks.export"
    res = run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", out, "--passphrase-file", phrase_file)
    assert res.code == 0, res.err
    assert file_mode(out) == 0o600
    assert_no_material(out, list(src.keks))
    assert PHRASE not in out.read_text() and PHRASE not in res.out + res.err

    dst_path = tmp_path / "b.json"
    assert run_plugin(capsys, "keyring", "init", dst_path).code == 0
    own = Keyring.load(dst_path).active
    res = run_plugin(capsys, "keyring", "import", dst_path, "--from", out, "--passphrase-file", phrase_file)
    assert res.code == 0, res.err
    dst = Keyring.load(dst_path)
    # The destination keeps its own active KEK; imported ones are decrypt-only, material intact.
    assert dst.active.id == own.id
    imported = {k.id: k for k in dst.keks if k.id != own.id}
    assert set(imported) == {k.id for k in src.keks}
    assert {k.state for k in imported.values()} == {DECRYPT_ONLY}
    for kek in src.keks:
        assert imported[kek.id].key == kek.key and imported[kek.id].key_id == kek.key_id
    # What the source keyring wrapped, the destination unwraps.
    wrapped = src.wrap(b"seed" * 8)
    assert dst.unwrap(wrapped.ciphertext, wrapped.key_id) == b"seed" * 8
    assert file_mode(dst_path) == 0o600

    # Importing again: identical KEKs are skipped, nothing changes.
    res = run_plugin(capsys, "keyring", "import", dst_path, "--from", out, "--passphrase-file", phrase_file)
    assert res.code == 0 and "added none" in res.out
    assert [k.id for k in Keyring.load(dst_path).keks] == [k.id for k in dst.keks]
    last = read_audit(dst_path)[-1]
    assert last["action"] == "import" and last["kek_ids"] == [] and len(last["skipped"]) == 3


def test_import_activate_creates_a_replica_keyring(
    tmp_path: Path, phrase_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _three(capsys, tmp_path / "a.json")
    out = tmp_path / "all.export"
    phrase = ("--passphrase-file", phrase_file)
    assert run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", out, *phrase).code == 0
    replica = tmp_path / "replica.json"
    res = run_plugin(capsys, "keyring", "import", replica, "--from", out, "--passphrase-file", phrase_file)
    assert res.code == 2 and "does not exist" in res.err  # no keyring and no --activate
    res = run_plugin(capsys, "keyring", "import", replica, "--from", out, *phrase, "--activate", src.active.id)
    assert res.code == 0, res.err
    copy = Keyring.load(replica)
    assert copy.active_key_id == src.active_key_id  # both hosts report the same key_id
    assert [(k.id, k.state) for k in copy.keks] == [(k.id, k.state) for k in src.keks]


def test_selected_keks_and_conflicting_ids(
    tmp_path: Path, phrase_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _three(capsys, tmp_path / "a.json")
    first = src.keks[0]
    out = tmp_path / "one.export"
    phrase = ("--passphrase-file", phrase_file)
    res = run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", out, "--kek", first.id, *phrase)
    assert res.code == 0 and first.id in res.out
    res = run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", tmp_path / "x", "--kek", "nope",
                     "--passphrase-file", phrase_file)  # fmt: skip
    assert res.code == 2 and "nope" in res.err and not (tmp_path / "x").exists()

    # A keyring holding the same id with other material: the import is refused as a whole.
    other = tmp_path / "b.json"
    assert run_plugin(capsys, "keyring", "init", other).code == 0
    doc = json.loads(other.read_text())
    doc["keks"].append({**doc["keks"][0], "id": first.id, "state": DECRYPT_ONLY})
    other.write_text(json.dumps(doc))
    before = other.read_bytes()
    res = run_plugin(capsys, "keyring", "import", other, "--from", out, "--passphrase-file", phrase_file)
    assert res.code == 2 and "different material" in res.err
    assert other.read_bytes() == before


def test_wrong_passphrase_damaged_file_and_refusals(
    tmp_path: Path, phrase_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _three(capsys, tmp_path / "a.json")
    out = tmp_path / "k.export"
    monkeypatch.setenv(PASSPHRASE_ENV, PHRASE)
    assert run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", out).code == 0
    dst = tmp_path / "b.json"
    assert run_plugin(capsys, "keyring", "init", dst).code == 0
    before = dst.read_bytes()

    monkeypatch.setenv(PASSPHRASE_ENV, "not the passphrase")
    res = run_plugin(capsys, "keyring", "import", dst, "--from", out)
    assert res.code == 2
    assert res.err.count("\n") == 1 and "wrong passphrase" in res.err and "not the passphrase" not in res.err

    monkeypatch.setenv(PASSPHRASE_ENV, PHRASE)
    lines = out.read_bytes().split(b"\n")
    damaged = {
        "truncated": out.read_bytes()[:60],
        "header": lines[0].replace(b'"n":32768', b'"n":16384') + b"\n" + lines[1] + b"\n",
        "hostile-kdf": lines[0].replace(b'"n":32768', b'"n":1073741824') + b"\n" + lines[1] + b"\n",
        "garbage": b"\x00\xff" * 100,
    }
    for name, data in damaged.items():
        bad = tmp_path / f"{name}.export"
        bad.write_bytes(data)
        res = run_plugin(capsys, "keyring", "import", dst, "--from", bad)
        # A changed header is authenticated data: it fails like a wrong passphrase (exit 2).
        assert res.code == (2 if name == "header" else 3), (name, res)
        assert res.err.count("\n") == 1 and "Traceback" not in res.err
    assert dst.read_bytes() == before

    # Never overwrite, never through a symlink, never the keyring itself.
    res = run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", out)
    assert res.code == 2 and "already exists" in res.err
    link = tmp_path / "link.export"
    link.symlink_to(tmp_path / "elsewhere")
    assert run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", link).code == 2
    assert not (tmp_path / "elsewhere").exists()
    assert run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", tmp_path / "a.json").code == 2

    # No passphrase at all, a short one, a passphrase file others can read.
    monkeypatch.delenv(PASSPHRASE_ENV)
    res = run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", tmp_path / "n.export")
    assert res.code == 2 and PASSPHRASE_ENV in res.err
    monkeypatch.setenv(PASSPHRASE_ENV, "short")
    assert run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", tmp_path / "n.export").code == 2
    phrase_file.chmod(0o644)
    res = run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", tmp_path / "n.export",
                     "--passphrase-file", phrase_file)  # fmt: skip
    assert res.code == 2 and "chmod 600" in res.err
    assert not (tmp_path / "n.export").exists()


def test_passphrase_never_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _three(capsys, tmp_path / "a.json")
    # There is no option that takes the passphrase itself.
    res = run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", tmp_path / "o", "--passphrase", PHRASE)
    assert res.code == 2 and not (tmp_path / "o").exists()
    assert PHRASE not in res.err
    # A real process reading it from the environment: its argv (what ps shows) never holds it.
    env = {**os.environ, PASSPHRASE_ENV: PHRASE}
    proc = subprocess.Popen(
        [*KMS_PLUGIN, "keyring", "export", str(tmp_path / "a.json"), "--to", str(tmp_path / "p.export")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # what ps shows, read while it runs
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert PHRASE.encode() not in cmdline + out + err
    assert PHRASE.encode() not in (tmp_path / "a.json.audit.log").read_bytes()


def test_mutated_exports_fail_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    _three(capsys, tmp_path / "a.json")
    monkeypatch.setenv(PASSPHRASE_ENV, PHRASE)
    out = tmp_path / "k.export"
    assert run_plugin(capsys, "keyring", "export", tmp_path / "a.json", "--to", out).code == 0
    dst = tmp_path / "b.json"
    assert run_plugin(capsys, "keyring", "init", dst).code == 0
    before = dst.read_bytes()
    good = out.read_bytes()
    rng = random.Random(14)
    for i in range(24):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if i % 4 == 0:
            data = data[: rng.randrange(len(data))]
        bad = tmp_path / f"m{i}.export"
        bad.write_bytes(bytes(data))
        res = run_plugin(capsys, "keyring", "import", dst, "--from", bad)
        assert res.code in (2, 3), (i, res)
        assert res.err.count("\n") == 1 and "internal error" not in res.err
    assert dst.read_bytes() == before

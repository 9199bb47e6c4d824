"""The keyring lifecycle without etcd: what the retire proof counts (synthetic snapshots), the
retired-KEK archive (restore, purge), the audit log, and the lock against concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_plugin.keks import format as wire
from kms_plugin.keks.archive import archive_path
from kms_plugin.keks.audit import audit_path, read_audit
from kms_plugin.keks.local import ACTIVE, Keyring, keyring_lock
from snapshot_tools.providers import kms_prefix, kmsv1
from tests.support.kms import file_mode, short_dir
from tests.support.lifecycle import Sealer, assert_no_material, run_plugin
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from pathlib import Path


# The real CLI, started only once the gate file exists (as in test_keyring_concurrency).
_GATED = (
    "import os, sys, time\n"
    "from kms_plugin.cli import main\n"
    "gate = sys.argv.pop(1)\n"
    "while not os.path.exists(gate):\n"
    "    time.sleep(0.001)\n"
    "main()\n"
)


def _keyring(capsys: pytest.CaptureFixture[str], path: Path, rotations: int = 2) -> Keyring:
    assert run_plugin(capsys, "keyring", "init", path).code == 0
    for _ in range(rotations):
        assert run_plugin(capsys, "keyring", "rotate", path).code == 0
    return Keyring.load(path)


def _proof(capsys: pytest.CaptureFixture[str], keyring: Path, kek: str, *args: str | os.PathLike[str]):
    res = run_plugin(capsys, "keyring", "retire", keyring, kek, *args, "--dry-run", "-o", "json")
    return res, (json.loads(res.out) if res.out.strip() else {})


def test_proof_counts_each_kind_of_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.json"
    a, b, c = _keyring(capsys, path).keks
    stranger = Keyring.generate().active  # a KEK this keyring never held
    under_b = Sealer(b)
    tampered = bytearray(Sealer(b).value("/registry/secrets/x/t"))
    tampered[-3] ^= 1  # inside the key_id or wrapped seed: no longer authenticates under B
    v1_dek = wire.seal(AESGCM(a.key), a.id, os.urandom(32))
    values = {
        "/registry/secrets/x/b1": under_b.value("/registry/secrets/x/b1"),
        "/registry/secrets/x/c1": Sealer(c).value("/registry/secrets/x/c1"),
        "/registry/configmaps/x/plain": b'{"kind":"ConfigMap"}',
        "/registry/secrets/x/aws": kms_prefix("v2", "aws") + Sealer(b).value("/k")[len(kms_prefix("v2", "ours")):],
    }
    snap = write_snapshot(tmp_path / "s.db", values)
    res, report = _proof(capsys, path, a.id, "--proof", snap)
    assert res.code == 0, res
    assert report["values_by_kek"] == {b.id: 2, c.id: 1} and report["not_kms"] == 1

    # A KMS v1 value whose DEK A wrapped (provider name with a ':') needs A.
    v1 = kms_prefix("v1", "old:name") + kmsv1.join(v1_dek, os.urandom(40))
    snap = write_snapshot(tmp_path / "v1.db", {**values, "/registry/secrets/y/v1": v1})
    res, report = _proof(capsys, path, a.id, "--proof", snap)
    assert res.code == 1 and report["needing"][0]["what"] == "secrets" and report["needing"][0]["count"] == 1

    # Values whose KEK cannot be proven: refused, each reason named.
    bad = {
        **values,
        "/registry/secrets/z/stranger": Sealer(stranger).value("/registry/secrets/z/stranger"),
        "/registry/secrets/z/tampered": bytes(tampered),
        "/registry/secrets/z/broken": kms_prefix("v2", "ours") + b"\xff\x01junk",
        "/registry/secrets/z/future": b"k8s:enc:kms:v9:ours:xx",
    }
    snap = write_snapshot(tmp_path / "bad.db", bad)
    res, report = _proof(capsys, path, a.id, "--proof", snap)
    assert res.code == 1 and "could not be read" in res.err
    reasons = " | ".join(row["what"] for row in report["unreadable"])
    assert stranger.id in reasons and "malformed KMS v2" in reasons and "unknown k8s:enc:" in reasons
    assert sum(row["count"] for row in report["unreadable"]) == 4
    # Once --provider says which names this keyring serves, the stranger under another name is
    # another keyring's value; the same under our name stays unreadable.
    theirs = kms_prefix("v2", "theirs") + Sealer(stranger).value("/k")[len(kms_prefix("v2", "ours")) :]
    other = {**values, "/registry/secrets/z/s": theirs}
    snap = write_snapshot(tmp_path / "other.db", other)
    res, report = _proof(capsys, path, a.id, "--proof", snap, "--provider", "ours")
    assert res.code == 0 and report["other_kms"] == {"theirs": 1}
    res, report = _proof(capsys, path, a.id, "--proof", snap, "--provider", "theirs")
    assert res.code == 1
    # --provider narrows what counts as ours: a name no source stores values under is refused.
    res, _report = _proof(capsys, path, a.id, "--proof", snap, "--provider", "ours", "--provider", "oursx")
    assert res.code == 2 and "--provider 'oursx': no value of the sources" in res.err

    # A foreign-format value is not ours by default, unreadable once --provider says it is.
    foreign = {"/registry/secrets/x/f": kms_prefix("v2", "ours") + _foreign_payload()}
    snap = write_snapshot(tmp_path / "f.db", foreign)
    res, report = _proof(capsys, path, a.id, "--proof", snap)
    assert res.code == 0 and report["other_kms"] == {"ours": 1}
    res, report = _proof(capsys, path, a.id, "--proof", snap, "--provider", "ours")
    assert res.code == 1 and "not in the keyring's wrapped format" in report["unreadable"][0]["what"]
    assert [k.id for k in Keyring.load(path).keks] == [a.id, b.id, c.id]  # --dry-run, refusals: unchanged


def _foreign_payload() -> bytes:
    from snapshot_tools.providers import kmsv2

    return kmsv2.encrypt(os.urandom(32), b"{}", b"/registry/secrets/x/f", encrypted_dek_source=b"1" + os.urandom(60),
                         key_id="arn:aws:kms:eu-west-1:1:key/x")  # fmt: skip


def test_a_snapshot_older_than_the_demotion_proves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.json"
    a, b, _ = _keyring(capsys, path).keks
    snap = write_snapshot(tmp_path / "s.db", {"/registry/secrets/x/b": Sealer(b).value("/registry/secrets/x/b")})
    before = b.created.timestamp() - 60  # written while A was still active
    os.utime(snap, (before, before))
    res, report = _proof(capsys, path, a.id, "--proof", snap)
    assert res.code == 1 and "before KEK" in report["problems"][0]
    res = run_plugin(capsys, "keyring", "retire", path, a.id)
    assert res.code == 2 and "--proof" in res.err
    res = run_plugin(capsys, "keyring", "retire", path, "nope", "--proof", snap)
    assert res.code == 2 and "nope" in res.err


def test_archive_restore_purge_and_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.json"
    a, b, c = _keyring(capsys, path).keks
    snap = write_snapshot(tmp_path / "s.db", {"/registry/secrets/x/c": Sealer(c).value("/registry/secrets/x/c")})
    for kek in (a, b):
        assert run_plugin(capsys, "keyring", "retire", path, kek.id, "--proof", snap).code == 0
    assert [k.id for k in Keyring.load(path).keks] == [c.id]
    assert file_mode(archive_path(path)) == 0o600
    # Rotate, then retire C too: the archive is re-sealed under the new active KEK, so it
    # never depends on a KEK that left.
    assert run_plugin(capsys, "keyring", "rotate", path).code == 0
    d = Keyring.load(path).active
    snap2 = write_snapshot(tmp_path / "s2.db", {"/registry/secrets/x/d": Sealer(d).value("/registry/secrets/x/d")})
    assert run_plugin(capsys, "keyring", "retire", path, c.id, "--proof", snap2).code == 0
    entries = json.loads(archive_path(path).read_text())["keks"]
    assert {e["id"] for e in entries} == {a.id, b.id, c.id} and {e["sealed_by"] for e in entries} == {d.id}

    res = run_plugin(capsys, "keyring", "restore", path, b.id)
    assert res.code == 0
    assert {k.id: k.state for k in Keyring.load(path).keks} == {d.id: ACTIVE, b.id: "decrypt-only"}
    assert run_plugin(capsys, "keyring", "restore", path, b.id).code == 2  # no longer archived

    # Purge needs the confirmation flag and known ids; then the keys are gone for good.
    assert run_plugin(capsys, "keyring", "purge", path, a.id).code == 2
    res = run_plugin(capsys, "keyring", "purge", path, "nope", "--yes-destroy-keys")
    assert res.code == 2 and "nope" in res.err
    assert run_plugin(capsys, "keyring", "purge", path, a.id, "--yes-destroy-keys").code == 0
    assert {e["id"] for e in json.loads(archive_path(path).read_text())["keks"]} == {c.id}
    assert run_plugin(capsys, "keyring", "purge", path, "--all", "--yes-destroy-keys").code == 0
    assert json.loads(archive_path(path).read_text())["keks"] == []

    log = audit_path(path)
    assert file_mode(log) == 0o600
    actions = [(r["action"], r["kek_ids"]) for r in read_audit(path)]
    assert actions == [
        ("init", [a.id]),
        ("rotate", [b.id, a.id]),
        ("rotate", [c.id, b.id]),
        ("retire", [a.id]),
        ("retire", [b.id]),
        ("rotate", [d.id, c.id]),
        ("retire", [c.id]),
        ("restore", [b.id]),
        ("purge", [a.id]),
        ("purge", [c.id]),
    ]
    for record in read_audit(path):
        assert {"time", "keyring", "user", "uid", "host", "pid", "tool", "version"} <= record.keys()
        assert record["keyring"] == str(path)
    assert_no_material(log, [a, b, c, d])

    # A damaged archive stops a retire and is named (exit 3); the keyring is unchanged.
    archive_path(path).write_text("{not json")
    archive_path(path).chmod(0o600)
    res = run_plugin(capsys, "keyring", "retire", path, b.id, "--proof", snap2)
    assert res.code == 3 and "archive" in res.err
    assert len(Keyring.load(path).keks) == 2


def test_retire_waits_for_the_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d:
        path = d / "k.json"
        a = _keyring(capsys, path).keks[0]
        snap = write_snapshot(d / "s.db", {"/registry/secrets/x/p": b"{}"})
        with keyring_lock(path):
            proc = subprocess.Popen(
                [sys.executable, "-c", "from kms_plugin.cli import main; main()",
                 "keyring", "retire", str(path), a.id, "--proof", str(snap)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(3)  # the proof is done well before; the change must wait for the lock
            assert proc.poll() is None
            assert a.id in {k.id for k in Keyring.load(path).keks}
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert a.id not in {k.id for k in Keyring.load(path).keks}


def test_concurrent_retire_and_rotations_lose_no_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d:
        path = d / "k.json"
        a, b, c = _keyring(capsys, path).keks
        snap = write_snapshot(d / "s.db", {"/registry/secrets/x/p": b"{}"})
        gate = d / "gate"
        argvs = [["keyring", "retire", str(path), a.id, "--proof", str(snap)],
                 ["keyring", "retire", str(path), b.id, "--proof", str(snap)]]  # fmt: skip
        argvs += [["keyring", "rotate", str(path)]] * 4
        cmd = [sys.executable, "-c", _GATED, str(gate)]
        procs = [subprocess.Popen([*cmd, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
        time.sleep(1.5)
        gate.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
        final = Keyring.load(path)
        ids = [k.id for k in final.keks]
        assert a.id not in ids and b.id not in ids and c.id in ids
        assert len(ids) == 1 + 4  # C and the four rotations' KEKs
        assert [k.state for k in final.keks].count(ACTIVE) == 1
        archived = {e["id"] for e in json.loads(archive_path(path).read_text())["keks"]}
        assert archived == {a.id, b.id}
        actions = [r["action"] for r in read_audit(path)]
        assert actions.count("rotate") == 2 + 4 and actions.count("retire") == 2


def test_an_unsafe_audit_log_stops_the_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.json"
    keyring = _keyring(capsys, path, rotations=0)
    log = audit_path(path)
    log.chmod(0o644)
    res = run_plugin(capsys, "keyring", "rotate", path)
    assert res.code == 2 and "chmod 600" in res.err
    assert Keyring.load(path).keks == keyring.keks  # nothing changed without its audit line
    log.unlink()
    log.symlink_to(tmp_path / "elsewhere.log")
    res = run_plugin(capsys, "keyring", "rotate", path)
    assert res.code == 2 and "audit log" in res.err
    assert not (tmp_path / "elsewhere.log").exists()
    assert Keyring.load(path).keks == keyring.keks


def test_the_plugin_does_not_load_snapshot_tools() -> None:
    # Only `keyring retire` and `pkcs11 retire-key` reach snapshot_tools, from inside the command:
    # serving never does.
    code = (
        "import sys, kms_plugin.cli, kms_plugin.server, kms_plugin.keks.lifecycle, kms_plugin.keks.transfer\n"
        "import kms_plugin.pkcs11_lifecycle_cli, kms_plugin.keks.pkcs11life, kms_plugin.keks.pkcs11\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'snapshot_tools'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_stop_signal_mid_change_waits_for_the_audit_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM arrives between the keyring's rename and its audit line: the change and its line
    # are both written, then the command stops (Interrupt: exit 143 from the CLI).
    import signal

    from kms_plugin.errors import Interrupt
    from kms_plugin.keks import lifecycle

    path = tmp_path / "k.json"
    before = _keyring(capsys, path, rotations=0)
    write = lifecycle._write_keyring

    def write_then_signal(*args: Any, **kwargs: Any) -> None:
        write(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(50):  # let the handler run here, were it free to
            time.sleep(0.001)

    monkeypatch.setattr(lifecycle, "_write_keyring", write_then_signal)
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # never the default kill
    try:
        with pytest.raises(Interrupt) as info:
            lifecycle.rotate(path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.signum == signal.SIGTERM and seen == []
    after = Keyring.load(path)
    assert after.active.id != before.active.id
    assert [r["action"] for r in read_audit(path)][-1] == "rotate"

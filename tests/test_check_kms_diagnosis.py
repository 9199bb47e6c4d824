"""Issue 11 items 6 and 7: a KMS that cannot be reached is named with why; KMS verdicts show key_ids.

Real unix sockets and a real gRPC plugin (``tests/support/kms.py``); the g-kmsv2 fixture was
written by a real kube-apiserver through a plugin whose key_id is ``kek-1``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from kms_plugin.keks.local import Keyring, save_keyring
from snapshot_tools.providers import kms_prefix, kmsv2
from tests.support.cli import snapshot_tools_process
from tests.support.configs import kms, rule, write_config
from tests.support.fixtures import KMS_CASE, config_path, fixture_kek, snapshot_path
from tests.support.k8s_objects import json_object
from tests.support.kms import TestKMSPlugin, short_dir
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.cli import Cli

SNAP = snapshot_path(KMS_CASE)
CONFIG = config_path(KMS_CASE)
GENERIC = "a KMS plugin could not be reached"


def _check(cli: Cli, endpoint: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    result = cli("check", SNAP, "--config", CONFIG, "--kms", f"testkms={endpoint}", *extra, "-o", "json")
    return result.code, json.loads(result.out), result.err


def _unreachable_line(err: str, endpoint: str) -> str:
    lines = [line for line in err.splitlines() if endpoint in line and "unreachable" in line]
    assert len(lines) == 1, err
    assert GENERIC not in err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def sockdir() -> Iterator[Path]:
    with short_dir() as d:
        yield d


def test_missing_socket_is_named_on_stderr_and_in_json(cli: Cli, sockdir: Path) -> None:
    endpoint = f"unix://{sockdir}/nobody.sock"
    rc, report, err = _check(cli, endpoint)
    assert rc == 4
    line = _unreachable_line(err, endpoint)
    assert "testkms" in line and "no socket" in line
    assert report["kms"] == [
        {"provider": "testkms", "endpoint": endpoint, "status": "unreachable", "reason": "no-socket"}
    ]


def test_not_a_socket(cli: Cli, sockdir: Path) -> None:
    path = sockdir / "file.sock"
    path.write_text("")
    endpoint = f"unix://{path}"
    rc, report, err = _check(cli, endpoint)
    assert rc == 4
    assert "not a socket" in _unreachable_line(err, endpoint)
    assert report["kms"][0]["reason"] == "not-a-socket"


def test_connection_refused(cli: Cli, sockdir: Path) -> None:
    path = sockdir / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))  # a socket file nobody listens on: connect() is refused
    try:
        endpoint = f"unix://{path}"
        rc, report, err = _check(cli, endpoint)
    finally:
        sock.close()
    assert rc == 4
    assert "connection refused" in _unreachable_line(err, endpoint)
    assert report["kms"][0]["reason"] == "connection-refused"


def test_timeout_and_debug_detail(cli: Cli, sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sockdir / "mute.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accepts, then never speaks HTTP/2
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    monkeypatch.setenv("K8S_AT_REST_DEBUG", "1")
    try:
        endpoint = f"unix://{path}"
        rc, report, err = _check(cli, endpoint)
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        sock.close()
    assert rc == 4
    line = _unreachable_line(err, endpoint)
    assert "timed out" in line
    assert "DEADLINE_EXCEEDED" in line  # the gRPC detail, only with K8S_AT_REST_DEBUG=1
    assert report["kms"][0]["reason"] == "timeout"


def test_no_debug_detail_by_default(cli: Cli, sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K8S_AT_REST_DEBUG", raising=False)
    path = sockdir / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    try:
        endpoint = f"unix://{path}"
        _, _, err = _check(cli, endpoint)
    finally:
        sock.close()
    assert "UNAVAILABLE" not in _unreachable_line(err, endpoint)


# Everything imported first (the stdlib may not be readable by nobody), then privileges dropped.
_AS_NOBODY = (
    "import os, json, decimal, fractions, zoneinfo, encodings.idna, encodings.utf_8_sig; "
    "from snapshot_tools.cli import main; "
    "import kms_plugin.client, kms_plugin.keks.local, snapshot_tools.check, snapshot_tools.extract; "
    "os.setgroups([]); os.setgid(65534); os.setuid(65534); main()"
)


def test_permission_denied(sockdir: Path) -> None:
    """A socket the user may not write to: connect(2) is refused with EACCES (run as nobody
    when the tests run as root, since root connects anywhere)."""
    path = sockdir / "locked.sock"
    os.chmod(sockdir, 0o755)  # noqa: S103 - others may enter, the socket itself is 0600
    with TestKMSPlugin(path, fixture_kek()) as plugin:
        os.chmod(path, 0o600)
        argv = ["check", SNAP, "--config", CONFIG, "--kms", f"testkms={plugin.endpoint}", "-o", "json"]
        if os.geteuid() == 0:
            run = subprocess.run(
                [sys.executable, "-c", _AS_NOBODY, *map(str, argv)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        else:
            run = snapshot_tools_process(*argv)
    assert run.returncode == 4, run.stderr
    assert "permission denied" in _unreachable_line(run.stderr, plugin.endpoint)
    assert json.loads(run.stdout)["kms"][0]["reason"] == "permission-denied"


def test_extract_names_the_endpoint_too(cli: Cli, sockdir: Path) -> None:
    endpoint = f"unix://{sockdir}/nobody.sock"
    result = cli("extract", SNAP, "--config", CONFIG, "--kms", f"testkms={endpoint}")
    assert result.code == 4
    assert "no socket" in _unreachable_line(result.err, endpoint)


def test_reachable_plugin_has_no_kms_problem(cli: Cli, sockdir: Path) -> None:
    with TestKMSPlugin(sockdir / "kms.sock", fixture_kek()) as plugin:
        rc, report, err = _check(cli, plugin.endpoint)
    assert rc == 0
    assert report["kms"] == []
    assert "unreachable" not in err


def test_refusing_plugin_is_named_as_unavailable(cli: Cli, sockdir: Path) -> None:
    with TestKMSPlugin(sockdir / "kms.sock", fixture_kek(), decrypt_error=grpc.StatusCode.FAILED_PRECONDITION) as p:
        rc, report, err = _check(cli, p.endpoint)
    assert rc == 4
    assert report["kms"] == [
        {"provider": "testkms", "endpoint": p.endpoint, "status": "unavailable", "reason": "failed_precondition"}
    ]
    assert len([line for line in err.splitlines() if p.endpoint in line]) == 1
    assert GENERIC not in err


# -- item 7: key_ids ------------------------------------------------------------------------


def test_kms_rows_carry_stored_and_current_key_id(cli: Cli, sockdir: Path) -> None:
    with TestKMSPlugin(sockdir / "kms.sock", fixture_kek(), key_id="kek-2") as plugin:
        plugin.servicer.accept_key_ids.add("kek-1")  # rotated: the old KEK still decrypts
        _, report, _ = _check(cli, plugin.endpoint)
        human = cli("check", SNAP, "--config", CONFIG, "--kms", f"testkms={plugin.endpoint}")
    kms_rows = [o for o in report["objects"] if o["provider"] == "kms-v2"]
    assert kms_rows
    for o in kms_rows:
        assert o["verdict"] == "stale"
        assert o["kms_key_id"] == "kek-1"
        assert o["kms_current_key_id"] == "kek-2"
        assert o["kek_id"] is None
    for o in report["objects"]:
        if o["provider"] != "kms-v2":
            assert o["kms_key_id"] is None and o["kms_current_key_id"] is None
    assert "KEY ID" in human.out
    assert "stored key_id kek-1 is not the plugin's current key_id kek-2" in human.out
    assert "reused" not in human.out


def test_current_kms_rows_have_equal_key_ids(cli: Cli, sockdir: Path) -> None:
    with TestKMSPlugin(sockdir / "kms.sock", fixture_kek()) as plugin:
        rc, report, _ = _check(cli, plugin.endpoint)
    assert rc == 0
    rows = [o for o in report["objects"] if o["provider"] == "kms-v2"]
    assert rows and {(o["kms_key_id"], o["kms_current_key_id"]) for o in rows} == {("kek-1", "kek-1")}


def test_unknown_key_id_hint_speaks_of_key_ids(cli: Cli, sockdir: Path) -> None:
    with TestKMSPlugin(sockdir / "kms.sock", fixture_kek(), key_id="kek-9") as plugin:
        result = cli("check", SNAP, "--config", CONFIG, "--kms", f"testkms={plugin.endpoint}")
        rc, report, _ = _check(cli, plugin.endpoint)
    assert rc == 1
    bad = [o for o in report["objects"] if o["reason"] == "wrong-key"]
    assert bad and {o["kms_key_id"] for o in bad} == {"kek-1"}
    assert "key_id kek-1" in result.out
    assert "reused" not in result.out


def test_keyring_maps_key_id_to_kek(cli: Cli, tmp_path: Path) -> None:
    keyring = Keyring.generate()
    path = tmp_path / "keyring.json"
    save_keyring(path, keyring, replace=False)
    seed = os.urandom(32)
    wrapped = keyring.wrap(seed)
    values = {}
    for i in range(5):
        key = f"/registry/secrets/default/s{i}"
        values[key] = kms_prefix("v2", "ours") + kmsv2.encrypt(
            seed,
            json_object(key),
            key.encode(),
            encrypted_dek_source=wrapped.ciphertext,
            key_id=wrapped.key_id,
            annotations=dict(wrapped.annotations),
        )
    snap = write_snapshot(tmp_path / "snap.db", values)
    cfg = write_config(tmp_path / "enc.json", rule(["secrets"], kms("ours", "unix:///tmp/unused.sock")))
    kek = keyring.describe()[0]["id"]
    result = cli("check", snap, "-c", cfg, "--keyring", f"ours={path}", "-o", "json")
    assert result.code == 0, result.err
    objs = result.json()["objects"]
    assert {(o["kms_key_id"], o["kms_current_key_id"], o["kek_id"]) for o in objs} == {
        (wrapped.key_id, wrapped.key_id, kek)
    }
    save_keyring(path, keyring.rotated(), replace=True)  # now stale, so listed in the table
    human = cli("check", snap, "-c", cfg, "--keyring", f"ours={path}")
    assert human.code == 0, human.err
    assert f"{wrapped.key_id} (kek {kek})" in human.out

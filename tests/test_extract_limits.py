"""``extract`` on hostile objects: one object too deep to render is skipped, the rest written.

The snapshot is built with ``tests/bbolt_builder.py`` (etcd's ``key`` bucket of encoded
``mvccpb.KeyValue`` records), the objects by hand: a JSON custom resource and Secrets in
Kubernetes protobuf (spec 9.1) whose managedFields hold deep FieldsV1 JSON.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from snapshot_tools.cli import main
from snapshot_tools.extract import MAX_DEPTH
from tests.bbolt_builder import build_db, kv_bytes, revision_key


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _uvarint(number << 3 | 2) + _uvarint(len(payload)) + payload


def _secret(ns: str, name: str, password: bytes, fields_v1: bytes | None = None) -> bytes:
    meta = _field(1, name.encode()) + _field(3, ns.encode())
    if fields_v1 is not None:  # ObjectMeta.managedFields[0].fieldsV1.Raw
        meta += _field(17, _field(1, b"kubectl") + _field(7, _field(1, fields_v1)))
    raw = _field(1, meta) + _field(2, _field(1, b"password") + _field(2, password)) + _field(3, b"Opaque")
    type_meta = _field(1, b"v1") + _field(2, b"Secret")
    return b"k8s\x00" + _field(1, type_meta) + _field(2, raw) + b"\x1a\x00\x22\x00"


def _nested_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _widget(name: str, depth: int) -> bytes:
    spec = _nested_json(depth)
    return b'{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"' + name.encode() + b'","namespace":"ns"},"spec":' + spec + b"}"


def _snapshot(tmp_path: Path, values: dict[str, bytes]) -> Path:
    records = {}
    for rev, (key, value) in enumerate(sorted(values.items()), start=2):
        records[revision_key(rev)] = kv_bytes(key.encode(), create=rev, mod=rev, version=1, value=value)
    path = tmp_path / "hostile.db"
    path.write_bytes(build_db({b"key": records, b"meta": {b"consistent_index": (1).to_bytes(8, "big")}}))
    return path


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "identity.yaml"
    path.write_text(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "  - resources: [secrets, widgets.example.com]\n    providers:\n      - identity: {}\n"
    )
    return path


def _extract(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["extract", *args])
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def test_too_deep_custom_resource_is_skipped_and_the_rest_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Deep enough to break a recursive renderer, shallow enough for json.loads to parse it.
    snap = _snapshot(
        tmp_path,
        {
            "/registry/example.com/widgets/ns/deep": _widget("deep", 600),
            "/registry/example.com/widgets/ns/fine": _widget("fine", MAX_DEPTH - 10),
        },
    )
    rc, out, err = _extract([str(snap), "-c", str(_config(tmp_path)), "-r", "widgets.example.com", "-o", "json"], capsys)
    assert rc == 1, err
    items = json.loads(out)["items"]
    assert [i["metadata"]["name"] for i in items] == ["fine"]
    assert "/registry/example.com/widgets/ns/deep" in err
    assert "undecodable" in err
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("output", ["yaml", "json"])
@pytest.mark.parametrize("show_managed", [False, True])
def test_deep_managed_fields_do_not_abort_the_run(
    output: str, show_managed: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = _snapshot(
        tmp_path,
        {
            "/registry/secrets/ns/hostile": _secret("ns", "hostile", b"pw-1", _nested_json(5000)),  # json.loads gives up
            "/registry/secrets/ns/deep": _secret("ns", "deep", b"pw-2", _nested_json(600)),  # json.loads parses it
            "/registry/secrets/ns/plain": _secret("ns", "plain", b"pw-3"),
        },
    )
    args = [str(snap), "-c", str(_config(tmp_path)), "-o", output] + (["--show-managed-fields"] if show_managed else [])
    rc, out, err = _extract(args, capsys)
    assert "internal error" not in err and "Traceback" not in err
    doc = json.loads(out) if output == "json" else __import__("yaml").safe_load(out)
    names = {i["metadata"]["name"]: i for i in doc["items"]}
    assert base64.b64decode(names["plain"]["data"]["password"]) == b"pw-3"
    # Unparsable FieldsV1 stays bytes (base64 in the output) rather than failing the object.
    assert base64.b64decode(names["hostile"]["data"]["password"]) == b"pw-1"
    if show_managed:
        assert rc == 1, err  # the 600-deep managedFields cannot be rendered: skipped, listed
        assert "deep" not in names
        assert "/registry/secrets/ns/deep" in err
    else:
        assert rc == 0, err  # managedFields are dropped: nothing deep is left to render
        assert base64.b64decode(names["deep"]["data"]["password"]) == b"pw-2"

"""``extract`` on hostile objects: one object too deep to render is skipped, the rest written.

The snapshot is built with ``tests/support/snapshots.py`` (etcd's ``key`` bucket of encoded
``mvccpb.KeyValue`` records), the objects by hand: a JSON custom resource and Secrets in
Kubernetes protobuf (spec 9.1) whose managedFields hold deep FieldsV1 JSON.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.extract import MAX_DEPTH
from tests.support import k8s_objects as k8s
from tests.support.configs import IDENTITY, rule, write_config
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli


def _secret(ns: str, name: str, password: bytes, fields_v1: bytes | None = None) -> bytes:
    """A Secret whose managedFields[0].fieldsV1.Raw is ``fields_v1``."""
    return k8s.secret(k8s.object_meta(name, ns, fields_v1=fields_v1), {"password": password})


def _nested_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _widget(name: str, depth: int) -> bytes:
    spec = _nested_json(depth)
    head = b'{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"' + name.encode()
    return head + b'","namespace":"ns"},"spec":' + spec + b"}"


def _config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "identity.json", rule(["secrets", "widgets.example.com"], IDENTITY))


def test_too_deep_custom_resource_is_skipped_and_the_rest_written(
    tmp_path: Path, cli: Cli
) -> None:
    # Deep enough to break a recursive renderer, shallow enough for json.loads to parse it.
    snap = write_snapshot(
        tmp_path / "hostile.db",
        {
            "/registry/example.com/widgets/ns/deep": _widget("deep", 600),
            "/registry/example.com/widgets/ns/fine": _widget("fine", MAX_DEPTH - 10),
        },
    )
    rc, out, err = cli("extract", str(snap), "-c", str(_config(tmp_path)), "-r", "widgets.example.com", "-o", "json")
    assert rc == 1, err
    items = json.loads(out)["items"]
    assert [i["metadata"]["name"] for i in items] == ["fine"]
    assert "/registry/example.com/widgets/ns/deep" in err
    assert "undecodable" in err
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("output", ["yaml", "json"])
@pytest.mark.parametrize("show_managed", [False, True])
def test_deep_managed_fields_do_not_abort_the_run(
    output: str, show_managed: bool, tmp_path: Path, cli: Cli
) -> None:
    snap = write_snapshot(
        tmp_path / "hostile.db",
        {
            # json.loads gives up on the first, parses the second
            "/registry/secrets/ns/hostile": _secret("ns", "hostile", b"pw-1", _nested_json(5000)),
            "/registry/secrets/ns/deep": _secret("ns", "deep", b"pw-2", _nested_json(600)),
            "/registry/secrets/ns/plain": _secret("ns", "plain", b"pw-3"),
        },
    )
    args = [str(snap), "-c", str(_config(tmp_path)), "-o", output] + (["--show-managed-fields"] if show_managed else [])
    rc, out, err = cli("extract", *args)
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

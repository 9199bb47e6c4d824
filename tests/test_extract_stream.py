"""``extract`` that scales (issue 11 items 12 and 13): a streamed List, label selectors,
``--output-dir``, and the hint for a re-create on a fresh cluster.

Provenance: the real-apiserver fixtures (../shared/fixtures/apiserver-v1.36) for output shape and
labels; hostile names are built here with ``tests.support.snapshots.write_snapshot`` (identity).
"""

from __future__ import annotations

import base64
import json
import os
import stat
from typing import TYPE_CHECKING

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot_tools.errors import UsageError
from snapshot_tools.extract import (
    ExtractOptions,
    ExtractResult,
    iter_extract,
    path_component,
    render_json,
    render_yaml,
)
from snapshot_tools.label_selector import parse_selector
from snapshot_tools.unwrap import KeyAccess
from tests.support import k8s_objects as k8s
from tests.support.configs import IDENTITY, rule, write_config
from tests.support.fixtures import FIXTURE_CASES, config_path, list_items, load_manifest, snapshot_path
from tests.support.snapshots import write_snapshot

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli

HINT = "to re-create these objects on a fresh cluster, add --strip-server-fields"
SKIP_HASH = ["--skip-hash-check"]  # write_snapshot builds a raw bbolt file without the trailer


def _base(case: str) -> list[str]:
    return [str(snapshot_path(case)), "--config", str(config_path(case)), "-r", "secrets", "-r", "configmaps"]


# -- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FIXTURE_CASES[:4])
def test_streamed_output_is_one_document_equal_to_whole_rendering(case: str, cli: Cli) -> None:
    rc, out_json, _ = cli("extract", *_base(case), "-o", "json")
    if rc == 4 or not out_json:
        pytest.skip("needs a KMS plugin")
    items = list_items(out_json)
    # Byte for byte what the whole-document renderers give for the same items.
    assert out_json == render_json({"apiVersion": "v1", "kind": "List", "items": items})
    rc, out_yaml, _ = cli("extract", *_base(case))
    assert rc == 0
    assert out_yaml == render_yaml({"apiVersion": "v1", "items": items, "kind": "List"})
    assert list(yaml.safe_load_all(out_yaml)) == [json.loads(out_json) | {"kind": "List"}]
    # kind last: output cut short after any item is no List kubectl would apply.
    assert out_yaml.endswith("\nkind: List\n")


def test_library_yields_items_one_at_a_time() -> None:
    case = "c-aesgcm"
    opts = ExtractOptions(snapshot=str(snapshot_path(case)), access=KeyAccess(configs=(str(config_path(case)),)))
    result = ExtractResult()
    items = iter_extract(opts, result)
    first = next(items)
    assert first["kind"] == "Secret"
    assert result.written == 1  # counted as it goes: nothing is built ahead
    rest = list(items)
    assert result.written == result.matched == 1 + len(rest)
    assert result.exit_code == 0
    assert result.items == []  # the streaming path keeps no list


# -- label selectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "want"),
    [
        ("app=fixture", {"app": "fixture"}, True),
        ("app==fixture", {"app": "fixture"}, True),
        ("app!=fixture", {"app": "fixture"}, False),
        ("app!=fixture", {}, True),  # as Kubernetes: a missing label is "not equal"
        ("app in (a, fixture)", {"app": "fixture"}, True),
        ("app in (a,b)", {"app": "fixture"}, False),
        ("app notin (a,b)", {}, True),
        ("app notin (a,fixture)", {"app": "fixture"}, False),
        ("app", {"app": ""}, True),
        ("!app", {"app": ""}, False),
        ("!app", {"x": "y"}, True),
        ("app=fixture,tier=backend", {"app": "fixture"}, False),
        ("app=fixture, tier in (backend)", {"app": "fixture", "tier": "backend"}, True),
        ("example.com/role=db", {"example.com/role": "db"}, True),
        ("app=", {"app": ""}, True),
        ("", {}, True),
    ],
)
def test_selector_semantics(text: str, labels: dict[str, str], want: bool) -> None:
    assert parse_selector(text).matches(labels) is want


@pytest.mark.parametrize(
    "text", ["app=(web", "app in ()", "app in (a", "a,,b", "=x", "app=a b", "-bad=x", "a/b/c=x", "k=" + "v" * 64, "k>1"]
)
def test_malformed_selector_is_usage_error(text: str, cli: Cli) -> None:
    with pytest.raises(UsageError):
        parse_selector(text)
    rc, out, err = cli("extract", *_base("c-aesgcm"), "-l", text)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "--selector" in err
    assert "Traceback" not in err


def test_selector_and_namespace_filter_the_fixture(cli: Cli) -> None:
    case = "c-aesgcm"
    objects = load_manifest(case)["objects"]
    labelled = {(o["kind"], o["name"]) for o in objects if (o.get("labels") or {}).get("app") == "fixture"}
    rc, out, _ = cli("extract", *_base(case), "-o", "json", "-l", "app=fixture")
    assert rc == 0
    assert {(i["kind"], i["metadata"]["name"]) for i in list_items(out)} == labelled
    rc, out, _ = cli("extract", *_base(case), "-o", "json", "--selector", "app in (fixture),tier!=backend")
    assert [i["metadata"]["name"] for i in list_items(out)] == ["cm-basic"]
    rc, out, _ = cli("extract", *_base(case), "-o", "json", "-l", "!app", "-n", "beta-2")
    assert {i["metadata"]["name"] for i in list_items(out)} == {"tls", "cm-empty", "unicode-values"}
    rc, out, err = cli("extract", *_base(case), "-l", "app=nothing-has-this")
    assert (rc, out, err) == (1, "", "snapshot-tools: no object matched\n")


# -- --output-dir ------------------------------------------------------------------------------


def test_output_dir_one_file_per_object(tmp_path: Path, cli: Cli) -> None:
    case = "c-aesgcm"
    target = tmp_path / "restore"
    rc, out, err = cli("extract", *_base(case), "--output-dir", str(target))
    assert rc == 0, err
    assert out == ""  # nothing on stdout: the values are in the files
    assert f"writing decrypted Secret data to {target}" in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    files = sorted(p for p in target.rglob("*") if p.is_file())
    manifest = load_manifest(case)["objects"]
    assert len(files) == len(load_manifest(case)["etcd_inventory_secrets_configmaps"])  # apiserver-made too
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        doc = yaml.safe_load(path.read_text())
        meta = doc["metadata"]
        want_name = path_component(f"{doc['kind'].lower()}-{meta['name']}") + ".yaml"  # long names: cut + hash
        assert path.relative_to(target).parts == (meta["namespace"], want_name)
    one = yaml.safe_load((target / "default" / "secret-opaque-simple.yaml").read_text())
    want = next(o for o in manifest if o["name"] == "opaque-simple")
    assert one["data"] == want["data_b64"]

    # A non-empty DIR is refused (one line, exit 2) unless --force.
    rc, out, err = cli("extract", *_base(case), "--output-dir", str(target), "-o", "json")
    assert (rc, out) == (2, "")
    assert err.count("\n") == 1 and "not empty" in err and "--force" in err
    rc, _, err = cli("extract", *_base(case), "--output-dir", str(target), "-o", "json", "--force")
    assert rc == 0, err
    doc = json.loads((target / "default" / "secret-opaque-simple.json").read_text())
    assert doc["data"] == want["data_b64"]


def test_output_dir_refuses_symlink_and_file(tmp_path: Path, cli: Cli) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (link, afile, tmp_path / "missing" / "dir"):
        rc, out, err = cli("extract", *_base("c-aesgcm"), "--output-dir", str(bad))
        assert (rc, out) == (2, ""), err
        assert err.count("\n") == 1
    assert not list(real.iterdir())
    rc, _, err = cli("extract", *_base("c-aesgcm"), "--force")
    assert rc == 2 and "--output-dir" in err


def test_output_dir_names_cannot_escape(tmp_path: Path, cli: Cli) -> None:
    hostile = {
        "../../escape": "../..",
        "a/b": "a",
        "..": "..",
        "_cluster": "_cluster",
    }
    values = {
        f"/registry/secrets/ns/h{i}": k8s.secret(k8s.object_meta(name, ns), {"pw": b"p"})
        for i, (name, ns) in enumerate(hostile.items())
    }
    snap = write_snapshot(tmp_path / "hostile.db", values)
    config = write_config(tmp_path / "identity.json", rule(["secrets"], IDENTITY))
    target = tmp_path / "out"
    rc, _, err = cli("extract", str(snap), "-c", str(config), "--output-dir", str(target), *SKIP_HASH)
    assert rc == 0, err
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".yaml"]
    assert len(files) == len(hostile)
    for path in files:
        assert target in path.parents
        assert len(path.relative_to(target).parts) == 2
        doc = yaml.safe_load(path.read_text())
        assert doc["metadata"]["name"] in hostile
    assert path_component("..") == "%2E."
    assert path_component("a/b") == "a%2Fb"
    assert path_component("") == "%"
    long = path_component("x" * 300)
    assert len(long) == 200 and "~" in long


# -- item 13: restoring on a fresh cluster -----------------------------------------------------


def test_server_fields_kept_by_default_with_one_hint_line(cli: Cli) -> None:
    case = "c-aesgcm"
    rc, out, err = cli("extract", *_base(case), "-o", "json")
    assert rc == 0
    assert all("resourceVersion" in i["metadata"] and "uid" in i["metadata"] for i in list_items(out))
    assert err.count(HINT) == 1
    rc, out, err = cli("extract", *_base(case), "-o", "json", "--strip-server-fields")
    assert rc == 0
    assert not any("resourceVersion" in i["metadata"] or "uid" in i["metadata"] for i in list_items(out))
    assert HINT not in err


def test_no_secret_value_on_stderr(tmp_path: Path, cli: Cli) -> None:
    case = "c-aesgcm"
    values = {
        v for o in load_manifest(case)["objects"] for v in (o.get("data_b64") or {}).values() if len(v) >= 8
    }
    for extra in ([], ["-o", "json"], ["--output-dir", str(tmp_path / "d")], ["-l", "app"]):
        _, _, err = cli("extract", *_base(case), *extra)
        for v in values:
            assert v not in err
            assert base64.b64decode(v).decode("utf-8", "replace") not in err or len(base64.b64decode(v)) < 8
    assert os.listdir(tmp_path / "d")


# -- the fast JSON path ------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json_values, max_size=6))
def test_fast_json_is_byte_identical_to_json_dumps(doc: dict) -> None:
    assert render_json(doc) == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


_yaml_text = st.text(alphabet="aAyYnNoO01_./+=:- e~'#\"\n", max_size=10) | st.sampled_from(
    ["on", "Off", "NULL", "~", "=", "<<", ".inf", "-.Inf", ".NaN", "1e3", "0x1F", "1_0", "-", "a:", "a:b",
     "2026-11-23T10:52:24Z", "/x+y=", "."]
)  # fmt: skip
_yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _yaml_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_yaml_text, children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(_yaml_text, _yaml_values, min_size=1, max_size=5)
    | st.lists(st.dictionaries(_yaml_text, _yaml_values, max_size=4), max_size=3)
)
def test_fast_yaml_is_byte_identical_to_yaml_dump(doc: dict | list) -> None:
    assert render_yaml(doc) == _slow_yaml(doc)


def _slow_yaml(doc: object) -> str:
    from snapshot_tools.extract import _ManifestDumper

    return yaml.dump(
        doc, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 30
    )


def test_fast_yaml_takes_a_typical_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db-1", "namespace": "ns-3", "uid": "0f3a-77", "resourceVersion": "12",
                     "creationTimestamp": "2026-11-23T10:52:24Z", "labels": {"app.kubernetes.io/name": "db"}},
        "data": {"password": "cGFzc3dvcmQ=", "token": "+/Zm9v"},
        "type": "Opaque",
    }  # fmt: skip
    want = _slow_yaml([secret])
    monkeypatch.setattr(yaml, "dump", None)  # the fast path must not need it
    assert render_yaml([secret]) == want

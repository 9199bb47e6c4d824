"""The shortcuts ``check`` takes for speed give exactly the answers of the plain paths.

* ``resources.KeyParser`` (parse_etcd_key cached by parent path) against ``parse_etcd_key``;
* ``Reader`` with its caches and the last-key fast path (with and without ``keep_plaintext``)
  against a fresh resolver per value with ``keep_plaintext=True`` (no shared results, no fast
  path);
* ``CheckReport.json_chunks`` (one object per line, fragments shared) against ``to_json``, on a
  snapshot written through a real etcd with awkward keys.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot_tools.check import CheckOptions, run_check
from snapshot_tools.keysets import load_keyset
from snapshot_tools.providers import aescbc, aesgcm, static_prefix
from snapshot_tools.readers import Reader
from snapshot_tools.resources import BUILTIN_PREFIXES, KeyParser, parse_etcd_key, resource_label
from snapshot_tools.unwrap import KeyAccess
from tests.support.configs import IDENTITY, rule, static, write_config
from tests.support.k8s_objects import json_object

if TYPE_CHECKING:
    from pathlib import Path

A, AB, K1_OLD, K1_NEW, G, STRANGER = (bytes([i]) * 32 for i in range(1, 7))

# -- key parser ------------------------------------------------------------------------------

_HEADS = [*sorted(BUILTIN_PREFIXES), "example.com/widgets", "apps.example.io", "unknownthing", "ranges"]
_SEGMENT = st.one_of(
    st.sampled_from(["", "ns", "kube-system", "a.b", "ranges", "serviceips", "x y", "\u00e9t\u00e9"]),
    st.text(alphabet="abc/.-_", max_size=6),
)


@st.composite
def _keys(draw: st.DrawFn) -> bytes:
    prefix = draw(st.sampled_from(["/registry/", "/registry", "/other/", "/", ""]))
    parts = [draw(st.sampled_from(_HEADS)), *draw(st.lists(_SEGMENT, max_size=4))]
    key = (prefix + "/".join(parts)).encode()
    if draw(st.booleans()) and draw(st.booleans()):
        key += b"/\xff\xfe"  # not UTF-8: never an object key
    return key


@settings(max_examples=300, deadline=None)
@given(st.lists(_keys(), min_size=1, max_size=40), st.sampled_from(["/registry", "registry/", "/other", "/"]))
def test_key_parser_matches_parse_etcd_key(keys: list[bytes], prefix: str) -> None:
    parser = KeyParser(prefix)
    for key in keys * 2:  # the second round answers from the cache
        ref = parse_etcd_key(key, prefix)
        gr, base, name, label = parser.parse(key)
        if ref is None:
            assert (gr, base, name, label) == (None, None, None, None), key
        else:
            assert gr == (ref.group, ref.resource), key
            assert base == (ref.resource, ref.group, ref.namespace), key
            assert name == ref.name, key
            assert label == resource_label(ref), key


@pytest.mark.parametrize("prefix", ["/registry", "/"])
def test_key_parser_where_the_last_segment_picks_the_resource(prefix: str) -> None:
    # Under `ranges/` and `services/` the second segment is part of the resource prefix, and
    # `ranges/serviceips` is itself an object: a cache by parent path must not apply there.
    base = prefix.rstrip("/")
    keys = [f"{base}/{k}".encode() for k in (
        "ranges/serviceips", "ranges/servicenodeports", "ranges/other", "services/specs",
        "services/endpoints", "services/specs/ns/svc", "services/endpoints/ns/svc",
        "example.com/widgets", "example.com/widgets/w", "namespaces/default", "namespaces/kube-system",
    )]  # fmt: skip
    parser = KeyParser(prefix)
    for key in keys * 2:
        ref = parse_etcd_key(key, prefix)
        want = (None, None) if ref is None else ((ref.group, ref.resource), ref.name)
        got = parser.parse(key)
        assert (got[0], got[2]) == want, key


def test_key_parser_shares_one_entry_per_parent_path() -> None:
    parser = KeyParser("/registry")
    first = parser.parse(b"/registry/secrets/ns/a")
    second = parser.parse(b"/registry/secrets/ns/b")
    assert first[1] is second[1]  # the report renders each base once
    assert second[2] == "b"
    assert parser.parse(b"/registry/secrets/ns/") == (None, None, None, None)


# -- resolver caches and fast path -----------------------------------------------------------


def _obj(name: str) -> bytes:
    return json_object(name)


def _configs(tmp_path: Path) -> list[str]:
    current = write_config(
        tmp_path / "c0.json",
        rule(["secrets"], static("aescbc", ("a", A), ("a:b", AB), ("k1", K1_NEW))),
        rule(["configmaps"], IDENTITY, static("aescbc", ("a", A))),
    )
    older = write_config(
        tmp_path / "c1.json",
        rule(["secrets", "configmaps"], static("aesgcm", ("g", G[:16])), static("aescbc", ("k1", K1_OLD))),
    )
    return [str(current), str(older)]


def _values(rng: random.Random) -> list[tuple[bytes, bytes, tuple[str, str]]]:
    out = []
    for i in range(400):
        res = rng.choice(["secrets", "configmaps"])
        key = f"/registry/{res}/ns/o{i}".encode()
        kind = rng.choice(["a", "a", "a", "ab", "k1new", "k1old", "stranger", "gcm", "moved", "short",
                           "plain", "nokey"])  # fmt: skip
        if kind == "a":
            value = static_prefix("aescbc", "a") + aescbc.encrypt(A, _obj(str(i)))
        elif kind == "ab":  # "a:b": a value that also starts like one of key "a"
            value = static_prefix("aescbc", "a:b") + aescbc.encrypt(AB, _obj(str(i)))
        elif kind == "k1new":
            value = static_prefix("aescbc", "k1") + aescbc.encrypt(K1_NEW, _obj(str(i)))
        elif kind == "k1old":
            value = static_prefix("aescbc", "k1") + aescbc.encrypt(K1_OLD, _obj(str(i)))
        elif kind == "stranger":
            value = static_prefix("aescbc", "a") + aescbc.encrypt(STRANGER, _obj(str(i)))
        elif kind in ("gcm", "moved"):
            aad = key if kind == "gcm" else b"/registry/secrets/elsewhere/x"
            value = static_prefix("aesgcm", "g") + aesgcm.encrypt(G[:16], _obj(str(i)), aad)
        elif kind == "short":
            value = static_prefix("aescbc", "a") + aescbc.encrypt(A, _obj(str(i)))[:24]
        elif kind == "plain":
            value = _obj(str(i))
        else:
            value = static_prefix("aescbc", "zz") + aescbc.encrypt(A, _obj(str(i)))
        out.append((key, value, ("", res)))
    return out


def _facts(res) -> tuple:
    return (res.verdict, res.provider, res.key_name, res.reason, res.plaintext_flag,
            getattr(res.key, "fingerprint", None), getattr(res.key, "config", None))  # fmt: skip


def test_resolver_shortcuts_agree_with_a_fresh_resolver_per_value(tmp_path: Path) -> None:
    keyset = load_keyset(_configs(tmp_path))
    values = _values(random.Random(7))
    fast = Reader(keyset, {})
    got = [_facts(fast.resolve(k, v, gr)) for k, v, gr in values]
    want = []
    use: dict[tuple[str, str, str], int] = {}
    for k, v, gr in values:
        plain = Reader(keyset, {}, keep_plaintext=True)
        want.append(_facts(plain.resolve(k, v, gr)))
        for slot, n in plain.key_use.items():
            use[slot] = use.get(slot, 0) + n
    assert got == want
    assert fast.key_use == use
    # The data does exercise every outcome the shortcuts could confuse.
    verdicts = {(f[0], f[2], f[3]) for f in got}
    assert ("current", "a", None) in verdicts and ("stale", "a:b", None) in verdicts
    assert ("retired", "k1", None) in verdicts and ("unreadable", "a", "wrong-key") in verdicts
    assert ("unreadable", "g", "wrong-key") in verdicts and ("unreadable", "a", "corrupt") in verdicts
    assert ("unreadable", "zz", "no-such-key") in verdicts


def test_resolver_shortcuts_keep_plaintext_agree_with_a_fresh_resolver_per_value(tmp_path: Path) -> None:
    # reencrypt/extract read with keep_plaintext=True: the last-key fast path must then hand
    # out a result of its own per value, carrying that value's plaintext.
    keyset = load_keyset(_configs(tmp_path))
    values = _values(random.Random(11))
    fast = Reader(keyset, {}, keep_plaintext=True)
    got = [fast.resolve(k, v, gr) for k, v, gr in values]
    want = []
    use: dict[tuple[str, str, str], int] = {}
    for k, v, gr in values:
        plain = Reader(keyset, {}, keep_plaintext=True)
        want.append(plain.resolve(k, v, gr))
        for slot, n in plain.key_use.items():
            use[slot] = use.get(slot, 0) + n
    assert [(_facts(r), r.plaintext) for r in got] == [(_facts(r), r.plaintext) for r in want]
    assert fast.key_use == use
    read = [r for r in got if r.plaintext is not None]
    assert len({id(r) for r in read}) == len(read)  # no shared (mutable) results
    assert fast.static.last is not None  # the last-read shortcut was armed, so it was exercised
    assert sum(1 for r in got if r.verdict == "current" and r.key_name == "a") > 10


# -- JSON writer -----------------------------------------------------------------------------


@pytest.mark.etcd
def test_json_chunks_equal_to_json_on_awkward_keys(etcd_server, tmp_path: Path) -> None:
    cfgs = _configs(tmp_path)
    client = etcd_server.client()
    s = "/registry/secrets/ns/"
    client.put(s + "plain", _obj("p"))
    client.put(s + 'quo"te\\back', static_prefix("aescbc", "a") + aescbc.encrypt(A, _obj("q")))
    client.put(s + "\u00e9t\u00e9-\u2603", static_prefix("aescbc", "k1") + aescbc.encrypt(K1_OLD, _obj("u")))
    client.put(b"/registry/secrets/ns/bad\xff", static_prefix("aescbc", "a") + aescbc.encrypt(A, _obj("b")))
    client.put("/elsewhere/thing", static_prefix("aescbc", "nope") + b"\x00" * 32)
    client.put("/registry/configmaps/ns/cm", _obj("cm"))
    client.put("/registry/namespaces/default", b"not covered: only counted")
    client.put(s + "gone", static_prefix("aescbc", "a") + aescbc.encrypt(A, _obj("g")))
    client.delete(s + "gone")
    snap = tmp_path / "snap.db"
    etcd_server.snapshot_save(snap)
    for all_revisions in (False, True):
        access = KeyAccess(configs=tuple(map(str, cfgs)))
        report = run_check(CheckOptions(snapshot=str(snap), access=access, all_revisions=all_revisions))
        for batch in (1, 3, 2048):
            assert json.loads("".join(report.json_chunks(batch=batch))) == report.to_json()
        doc = report.to_json()
        assert doc["summary"]["objects"] == len(doc["objects"]) == (7 if all_revisions else 6)
        assert doc["summary"]["uncovered_plaintext"] == 1
        keys = {o["key"] for o in doc["objects"]}
        assert "/registry/secrets/ns/bad\\xff" in keys and s + "\u00e9t\u00e9-\u2603" in keys
        assert sum(doc["summary"][v] for v in ("current", "stale", "retired", "unreadable")) == len(keys)

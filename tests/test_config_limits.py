"""Hostile or broken encryption-config files through ``snapshot-tools check --config FILE``.

Every bad file must end in exit code 2 with one stderr line, promptly: alias bombs, huge and
deeply nested documents, control characters, FIFOs and devices. Error messages must not quote
file content: no character of a secret, no unknown field name that is not a plain identifier.
The resource-overlap check must stay linear (a config with tens of thousands of selectors).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshot_tools.config import (
    _DUPLICATE,
    _OVERLAP,
    MAX_CONFIG_BYTES,
    ConfigFileError,
    _Builder,
    parse_config_text,
)
from snapshot_tools.resources import parse_group_resource
from tests.support.cli import snapshot_tools_process
from tests.support.config_text import HEAD, write
from tests.support.fixtures import EXAMPLE_CONFIG, EXAMPLE_KEY1_B64, EXAMPLE_SNAPSHOT

if TYPE_CHECKING:
    from pathlib import Path

KEY = EXAMPLE_KEY1_B64


def check(config: Path, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``check EXAMPLE --config config``; a hang fails the test through TimeoutExpired."""
    return snapshot_tools_process(
        "check", EXAMPLE_SNAPSHOT, "--config", config,
        timeout=timeout, errors="surrogateescape", stdin=subprocess.DEVNULL,
    )  # fmt: skip


def assert_config_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2 and exactly one stderr line (containing ``words``); returns that line."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "internal error" not in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def config_text(selectors: list[str] | None = None, extra: str = "") -> str:
    sel = "".join(f"  - {s}\n" for s in selectors or ["secrets"])
    return (
        f"{HEAD}resources:\n- resources:\n{sel}  providers:\n  - aescbc:\n      keys:\n"
        f"      - name: key1\n        secret: {KEY}\n{extra}"
    )


def test_example_config_is_fine() -> None:
    proc = check(EXAMPLE_CONFIG)
    assert proc.returncode == 0, proc.stderr


def test_symlink_to_config_is_followed(tmp_path: Path) -> None:
    link = tmp_path / "link.yaml"
    link.symlink_to(EXAMPLE_CONFIG)
    proc = check(link)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------
# resource exhaustion


def _alias_bomb() -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [{','.join(['*' + prev] * 9)}]\n"
        prev = name
    return text


def test_alias_bomb_refused(tmp_path: Path) -> None:
    bomb = _alias_bomb()
    assert len(bomb) < 500
    assert_config_error(check(write(tmp_path, "bomb.yaml", bomb), timeout=15), "line ")


def test_alias_bomb_inside_a_config_refused(tmp_path: Path) -> None:
    bomb = "".join("  " + line + "\n" for line in _alias_bomb().splitlines())
    text = config_text() + "x-bomb:\n" + bomb
    assert_config_error(check(write(tmp_path, "bomb.yaml", text), timeout=15))


def test_small_anchor_and_alias_refused(tmp_path: Path) -> None:
    text = (
        f"{HEAD}resources:\n- resources: [secrets]\n  providers: &p\n  - aescbc:\n      keys:\n"
        f"      - name: key1\n        secret: {KEY}\n- resources: [configmaps]\n  providers: *p\n"
    )
    line = assert_config_error(check(write(tmp_path, "alias.yaml", text)), "line ")
    assert "anchor" in line or "alias" in line


def test_many_selectors_load(tmp_path: Path) -> None:
    """The overlap check is linear: 30,000 selectors in one list (quadratic took minutes)."""
    selectors = ["secrets"] + [f"r{i}.g{i}" for i in range(30_000)]
    proc = check(write(tmp_path, "many.yaml", config_text(selectors)), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_many_selectors_overlap_still_found(tmp_path: Path) -> None:
    selectors = ["secrets"] + [f"r{i}.g{i}" for i in range(30_000)] + ["'*.g7'"]
    proc = check(write(tmp_path, "many.yaml", config_text(selectors)), timeout=60)
    assert_config_error(proc, "resources[0].resources", "overlapping resources")


def test_file_too_large(tmp_path: Path) -> None:
    assert MAX_CONFIG_BYTES <= 1 << 20  # real configs are a few KB
    padding = "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1)
    path = write(tmp_path, "big.yaml", config_text() + padding)
    assert path.stat().st_size > MAX_CONFIG_BYTES
    assert_config_error(check(path), "too large")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("deep-flow.yaml", "[" * 50_000 + "]" * 50_000),
        ("deep-map.yaml", "{a: " * 50_000 + "1" + "}" * 50_000),
        ("deep-in-config.yaml", config_text(extra="x: " + "[" * 50_000 + "]" * 50_000 + "\n")),
        ("deep-block.yaml", "- " * 50_000 + "x\n"),
        ("deep.json", '{"a":' * 50_000 + "1" + "}" * 50_000),
        ("deep-list.json", "[" * 50_000 + "]" * 50_000),
        ("deep-unbalanced.json", '{"a":' * 50_000),
    ],
)
def test_deep_nesting(tmp_path: Path, name: str, data: str) -> None:
    assert_config_error(check(write(tmp_path, name, data)))


# --------------------------------------------------------------------------------------------
# characters and values the parsers reject


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("nul.yaml", config_text().replace("kind:", "kind:\x00")),
        ("bel.yaml", config_text().replace("name: key1", "name: key\x071")),
        ("esc.yaml", config_text().replace("name: key1", "name: key\x1b1")),
        ("del.yaml", config_text().replace("name: key1", "name: key\x7f1")),
        ("nul.json", json.dumps({"apiVersion": "v1\x00"}, ensure_ascii=False)),
        ("ctl.json", '{"apiVersion": "v1\x01", "kind": "EncryptionConfig", "resources": []}'),
        ("nul-at-start.yaml", "\x00" + config_text()),
        ("latin1.yaml", config_text().encode().replace(b"key1", b"k\xe9y1")),
        ("bad-int.yaml", config_text().replace("kind: ", "kind: !!int ")),
        ("empty-int.yaml", config_text().replace("kind: EncryptionConfiguration", "kind: !!int")),
        ("bad-float.yaml", config_text().replace("kind: ", "kind: !!float ")),
        ("bad-timestamp.yaml", config_text().replace("kind: ", "kind: !!timestamp ")),
        ("bad-binary.yaml", config_text().replace("kind: ", "kind: !!binary ")),
        ("python-tag.yaml", config_text().replace("kind: ", "kind: !!python/name:os.system ")),
        ("huge-int.yaml", config_text(extra="x: " + "9" * 5000 + "\n")),
        ("huge-int.json", '{"apiVersion": ' + "9" * 5000 + "}"),
        ("surrogate.json", '{"apiVersion": "\\ud800", "kind": "EncryptionConfig"}'),
        ("surrogate.yaml", config_text().replace("name: key1", 'name: "key\\ud8001"')),
        ("unhashable-key.yaml", config_text(extra="? [a, b]\n: c\n")),
        ("two-docs.yaml", config_text() + "---\n" + config_text()),
    ],
)
def test_bad_content_is_a_config_error(tmp_path: Path, name: str, data: str | bytes) -> None:
    assert_config_error(check(write(tmp_path, name, data)), name)


# --------------------------------------------------------------------------------------------
# things that are not regular files


def test_fifo_refused_promptly(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    assert_config_error(check(fifo, timeout=15), "not a regular file")


def test_fifo_behind_symlink_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "config.yaml"
    link.symlink_to(fifo)
    assert_config_error(check(link, timeout=15), "not a regular file")


def test_char_device_refused(tmp_path: Path) -> None:
    dev = tmp_path / "null.yaml"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a character device (mknod) needs root")
    assert_config_error(check(dev), "not a regular file")


def test_directory_still_lists_configs(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(EXAMPLE_CONFIG.read_text())
    os.mkfifo(tmp_path / "b.yaml")  # skipped in a directory, as before
    proc = check(tmp_path, timeout=15)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------
# no file content in messages (issue 9 item 12)

SECRET = "⌘Ж§¤ǂ"  # none of these characters appears in any message text of ours


@pytest.mark.parametrize(
    "secret_line",
    [
        f'        secret: "{SECRET[:2]}\\{SECRET[1]}{SECRET[2:]}"\n',  # unknown escape character
        f"        secret: @{SECRET}\n",  # character that cannot start any token
        f"        secret: `{SECRET}\n",
        f"        secret: {SECRET}: {SECRET}\n",  # mapping values not allowed
        f"        secret: !{SECRET} {SECRET}\n",  # undefined tag
        f"        secret: &{SECRET}\n",  # anchor
        f"        secret: *{SECRET}\n",  # alias
        f'        secret: "{SECRET}\n',  # unterminated
        f"        secret: {SECRET}\t{SECRET}\n        \t{SECRET}\n",  # tab
        f"        secret: !!binary {SECRET}\n",  # constructor error
    ],
)
def test_yaml_error_in_secret_not_echoed(tmp_path: Path, secret_line: str) -> None:
    text = config_text().replace(f"        secret: {KEY}\n", secret_line)
    assert secret_line in text
    line = assert_config_error(check(write(tmp_path, "c.yaml", text)), "line ")
    for char in SECRET + "@`":
        assert char not in line, line


def test_json_error_in_secret_not_echoed(tmp_path: Path) -> None:
    doc = json.dumps(
        {"apiVersion": "v1", "kind": "EncryptionConfig", "resources": [
            {"resources": ["secrets"], "providers": [{"aescbc": {"keys": [
                {"name": "k", "secret": "SECRET"}]}}]}]},
        ensure_ascii=False,
    )
    for bad in (f'"{SECRET}\\q{SECRET}"', f'"{SECRET}\x01{SECRET}"', f'"{SECRET}'):
        path = write(tmp_path, "c.json", doc.replace('"SECRET"', bad))
        line = assert_config_error(check(path))
        for char in SECRET:
            assert char not in line, line


WEIRD = "\x1b[31mZQ\x07"


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        ("unknown.yaml", config_text(extra=f'"{WEIRD.encode("unicode_escape").decode()}": 1\n')),
        (
            "unknown-nested.yaml",
            config_text().replace(
                "      - name: key1\n", '      - "\\e[31mZQ\\a": 1\n        name: key1\n'
            ),
        ),
        ("dup.yaml", config_text(extra='"\\e[31mZQ\\a": 1\n"\\e[31mZQ\\a": 2\n')),
        ("dup-inside.yaml", config_text(extra='"\\e[31mZQ\\a": {a: 1, a: 2}\n')),
        ("unknown.json", json.dumps({"apiVersion": "v1", "kind": "EncryptionConfig", WEIRD: 1})),
        ("long.yaml", config_text(extra=f"ZQ{'x' * 70}: 1\n")),
        ("secretish.yaml", config_text(extra=f"ZQ{base64.b64encode(b'x' * 16).decode()}: 1\n")),
    ],
)
def test_weird_field_names_not_echoed(tmp_path: Path, name: str, doc: str) -> None:
    line = assert_config_error(check(write(tmp_path, name, doc)))
    assert "\x1b" not in line and "\x07" not in line and "ZQ" not in line, line
    assert "field" in line, line


def test_safe_unknown_field_still_named(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", config_text(extra="metadata: {}\n"))
    line = assert_config_error(check(path))
    assert 'unknown field "metadata"' in line


def test_error_positions_do_not_echo_keys() -> None:
    """Library level: the position and reason of a ConfigFileError carry no raw field name."""
    with pytest.raises(ConfigFileError) as info:
        parse_config_text(config_text(extra='"\\e[31mZQ\\a": 1\n'), "c.yaml")
    err = info.value
    assert "ZQ" not in str(err) and "ZQ" not in (err.position or "")
    assert err.line == 11


# --------------------------------------------------------------------------------------------
# the linear overlap check decides exactly like the pairwise one it replaced


def _pairwise_reasons(selectors: list[str]) -> list[str]:
    """The previous O(n^2) check (and validateResourceOverlap's pair loop), as a reference."""
    if len(selectors) < 2:
        return []
    grs = [parse_group_resource(s) for s in selectors]
    duplicate = overlap = False
    for i, r1 in enumerate(grs):
        for j, r2 in enumerate(grs):
            if i == j:
                continue
            if r1 == r2:
                duplicate = True
                continue
            if r1 == ("*", "*") or (r1[0] == r2[0] and "*" in (r1[1], r2[1])):
                overlap = True
    return (["duplicate"] if duplicate else []) + (["overlap"] if overlap else [])


_SELECTOR = st.sampled_from(
    ["secrets", "configmaps", "*.", "*.*", "*.apps", "deployments.apps", "*", "x.*",
     "pandas.awesome.bears.example", "*.awesome.bears.example", "a.", ".a", "."]
)


@settings(max_examples=300, deadline=None)
@given(selectors=st.lists(_SELECTOR, max_size=6))
def test_overlap_check_matches_pairwise(selectors: list[str]) -> None:
    builder = _Builder("c.yaml", "c.yaml", 0, {})
    builder._overlap(selectors, ("resources", 0, "resources"))
    got = [reason for _, _, reason in builder.p.items]
    want = {"duplicate": _DUPLICATE, "overlap": _OVERLAP}
    assert got == [want[r] for r in _pairwise_reasons(selectors)]


@pytest.mark.parametrize(
    ("selectors", "reasons"),
    [
        (["secrets", "configmaps"], []),
        (["secrets", "secrets"], ["duplicate"]),
        (["secrets", "*."], ["overlap"]),
        (["*.apps", "deployments.apps"], ["overlap"]),
        (["*.apps", "secrets"], []),
        (["*.*", "secrets"], ["overlap"]),
        (["*.*", "*.*"], ["duplicate"]),
        (["*.apps", "*.apps", "deployments.apps"], ["duplicate", "overlap"]),
    ],
)
def test_overlap_small_cases(tmp_path: Path, selectors: list[str], reasons: list[str]) -> None:
    assert _pairwise_reasons(selectors) == reasons
    sel = "[" + ", ".join(f"'{s}'" for s in selectors) + "]"
    doc = f"{HEAD}resources:\n- resources: {sel}\n  providers: [identity: {{}}]\n"
    if not reasons:
        parse_config_text(doc, "c.yaml")
        return
    with pytest.raises(ConfigFileError) as info:
        parse_config_text(doc, "c.yaml")
    first = {"duplicate": _DUPLICATE, "overlap": _OVERLAP}[reasons[0]]
    assert info.value.reason == first
    assert info.value.position == "resources[0].resources"

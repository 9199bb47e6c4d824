"""Mutation fuzz of keyring files: a valid keyring's bytes, damaged, must load or fail cleanly.

"Cleanly" is a :class:`ConfigError` from the loader (one line, no key material) and exit 2 with one
stderr line from ``kms-plugin keyring list``; never another exception, never exit 70.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms_plugin.errors import ConfigError
from kms_plugin.keks.local import Keyring, load_keyring
from tests.support.cli import KMS_PLUGIN, plugin_cli
from tests.support.kms import short_dir

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

BASE = Keyring.generate(now=datetime(2026, 5, 9, 7, 35, 25, tzinfo=UTC)).rotated().rotated()
VALID = BASE.to_json_bytes()
SECRETS = [base64.b64encode(k.key).decode() for k in BASE.keks]

FUZZ = settings(
    max_examples=150,
    deadline=2000,  # ms; a load takes ~1 ms, so only a hang or a blow-up trips this
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Creation times at the edges: year 1, year 9999, offsets that overflow when moved to UTC.
timestamps = st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-1))])
).map(datetime.isoformat)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | timestamps,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def flipped(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    return VALID[: draw(st.integers(0, len(VALID) - 1))]


# Where a JSON value may start (after ':', '[' or ',' and at the top): nesting inserted there
# is parsed, not rejected at the first bracket.
VALUE_STARTS = [0, *(i + 1 for i, byte in enumerate(VALID) if byte in b":[,")]


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    at = draw(st.sampled_from(VALUE_STARTS) | st.integers(0, len(VALID)))
    opener = draw(st.sampled_from([b"[", b'{"a":', b"[{}, "]))
    depth = draw(st.sampled_from([1, 50, 999, 1001, 5_000, 100_000]))
    closers = draw(st.sampled_from([0, depth]))  # left open, or balanced
    closer = {b"[": b"]", b'{"a":': b"}", b"[{}, ": b"]"}[opener] * closers
    return VALID[:at] + opener * depth + closer + VALID[at:]


def _paths(doc: Any) -> list[tuple[Any, ...]]:
    """Every path into ``doc``: keys and indexes, the root as ()."""
    found: list[tuple[Any, ...]] = [()]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += [(key, *rest) for rest in _paths(value)]
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += [(index, *rest) for rest in _paths(value)]
    return found


@st.composite
def swapped(draw: st.DrawFn) -> bytes:
    """Replace one value anywhere in the document by a JSON value of another (random) type."""
    doc = json.loads(VALID)
    path = draw(st.sampled_from(_paths(doc)))
    value = draw(json_values)
    if not path:
        doc = value
    else:
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
    return json.dumps(doc).encode()


mutants = st.one_of(flipped(), truncated(), nested(), swapped())


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with short_dir() as d:
        yield d


def _write(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _loads_or_config_error(path: Path) -> Keyring | None:
    try:
        return load_keyring(path)[0]
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text
        assert not any(secret in text for secret in SECRETS)
        return None


def test_the_base_keyring_is_valid(workdir: Path) -> None:
    _write(workdir / "base.json", VALID)
    assert _loads_or_config_error(workdir / "base.json") is not None


@FUZZ
@given(data=mutants)
def test_library_loader_never_raises_anything_else(workdir: Path, data: bytes) -> None:
    path = workdir / "lib.json"
    _write(path, data)
    keyring = _loads_or_config_error(path)
    if keyring is not None:  # what loads must also serve and write back
        assert Keyring(keyring.keks).active_key_id == keyring.active_key_id
        _write(path, keyring.to_json_bytes())
        assert load_keyring(path)[0].active_key_id == keyring.active_key_id


@FUZZ
@given(data=mutants)
def test_cli_list_is_ok_or_exit_2(workdir: Path, data: bytes) -> None:
    path = workdir / "cli.json"
    _write(path, data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = plugin_cli("keyring", "list", str(path))
    expected = 0 if _loads_or_config_error(path) is not None else 2
    assert rc == expected, err.getvalue()
    if rc == 2:
        assert err.getvalue().count("\n") == 1
        assert err.getvalue().startswith("kms-plugin: error: keyring ")
        assert out.getvalue() == ""


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=mutants)
def test_real_cli_process_on_a_few_mutants(workdir: Path, data: bytes) -> None:
    path = workdir / "proc.json"
    _write(path, data)
    args = [*KMS_PLUGIN, "keyring", "list", str(path)]
    res = subprocess.run(args, check=False, capture_output=True, timeout=60)
    assert res.returncode in (0, 2), res.stderr
    if res.returncode == 2:
        assert res.stderr.decode().count("\n") == 1
        assert b"internal error" not in res.stderr

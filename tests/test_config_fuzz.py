"""Mutation fuzzing of encryption-config files (issue 9).

A valid config (YAML and JSON) is mutated byte-wise: bit flips, truncation, deletions, copies
of a slice elsewhere, and insertions of YAML troublemakers (anchors, aliases, tags, deep
brackets, control characters, invalid UTF-8). Loading must either succeed or raise
:class:`ConfigError` with a one-line message, in bounded time; through the CLI the exit code is
0, 1 or 2 and stderr holds at most one line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshot_tools.errors import ConfigError
from snapshot_tools.keysets import load_keyset
from tests.support.cli import SNAPSHOT_TOOLS
from tests.support.fixtures import EXAMPLE_SNAPSHOT

if TYPE_CHECKING:
    from collections.abc import Iterator

BASE_YAML = b"""\
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources:
  - secrets
  - configmaps
  - '*.apps'
  providers:
  - aescbc:
      keys:
      - name: key1
        secret: Q/6UFRHDGhUKxtX2dDTCg9tmczF4fSjQe9hfAMKnfYg=
      - name: old
        secret: "c2VjcmV0IGlzIHNlY3VyZQ=="
  - kms:
      apiVersion: v2
      name: my-kms
      endpoint: unix:///var/run/kms.sock
      timeout: 3s
  - identity: {}
- resources: ["*.*"]
  providers:
  - {secretbox: {keys: [{name: sb, secret: YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=}]}}
"""
BASE_JSON = json.dumps(yaml.safe_load(BASE_YAML), indent=1).encode()

PAYLOADS = [
    b"&a ", b"*a", b"&a [*a, *a]", b"*b ", b"<<: *a\n", b"!!int ", b"!!binary ",
    b"!!python/name:x ",
    b"[" * 200, b"{" * 200, b"]" * 50, b"{a: " * 100, b"- " * 100, b"\x00", b"\x07", b"\x1b[31m",
    b"\x7f", b"\xc2\x85", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\t", b": ", b"- ", b"\n", b'"', b"'",
    b"\\", b"\\ud800", b'"\\ud800"', b"---\n", b"%YAML 1.1\n", b"? ", b"|", b">", b"#", b"9" * 5000,
]

MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 40)),
    st.tuples(st.just("copy"), st.integers(0, 1 << 20), st.integers(0, 1 << 20)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.sampled_from(PAYLOADS)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=6)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, arg in mutations:
        at = pos % (len(buf) + 1)
        if kind == "flip" and buf:
            buf[at % len(buf)] ^= 1 << int(arg)  # type: ignore[call-overload]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "delete":
            del buf[at : at + int(arg)]  # type: ignore[call-overload]
        elif kind == "copy":
            src = int(arg) % (len(buf) + 1)  # type: ignore[call-overload]
            buf[at:at] = buf[src : src + 30]
        elif kind == "insert":
            assert isinstance(arg, bytes)
            buf[at:at] = arg
    return bytes(buf)


class Hang(Exception):
    """Raised by the alarm when one load takes far too long (a hang, not a slow run)."""


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hang(f"config load took more than {seconds}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_base_configs_load() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in (("c.yaml", BASE_YAML), ("c.json", BASE_JSON)):
            path = Path(tmp) / name
            path.write_bytes(data)
            ks = load_keyset([path])
            assert [k.name for k in ks.all_keys()] == ["key1", "old", "my-kms", "sb"]


@settings(
    max_examples=300,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    base=st.sampled_from([("c.yaml", BASE_YAML), ("c.json", BASE_JSON), ("c.yml", BASE_JSON)]),
    mutations=st.lists(MUTATION, min_size=1, max_size=6),
)
def test_mutated_config_loads_or_config_error(
    base: tuple[str, bytes], mutations: list[tuple[str, int, object]]
) -> None:
    name, data = base
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(mutate(data, mutations))
        try:
            with alarm(20):
                load_keyset([path])
        except ConfigError as exc:
            text = str(exc)
            assert text and "\n" not in text and "\r" not in text
            assert "\x1b" not in text and "\x00" not in text


@pytest.mark.parametrize("seed_name", ["yaml", "json"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_config_through_cli(
    seed_name: str, mutations: list[tuple[str, int, object]]
) -> None:
    data = BASE_YAML if seed_name == "yaml" else BASE_JSON
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"c.{seed_name}"
        path.write_bytes(mutate(data, mutations))
        proc = subprocess.run(
            [*SNAPSHOT_TOOLS, "check", str(EXAMPLE_SNAPSHOT), "--config", str(path)],
            capture_output=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    lines = proc.stderr.splitlines()
    assert proc.returncode in (0, 1, 2), proc.stderr[-2000:]
    assert len(lines) <= 1, proc.stderr[-2000:]
    if proc.returncode == 2:
        assert len(lines) == 1 and b"internal error" not in lines[0]

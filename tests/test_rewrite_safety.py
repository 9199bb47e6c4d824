"""``snapshot-tools decrypt``/``reencrypt`` never destroy what they were not asked to write.

Issue 9 (adversarial review) found three ways to lose data, each checked here with the real
command on real files and processes:

* ``--force`` at a character device, a FIFO or a symlink replaced the node with a regular
  file holding the (plaintext) snapshot;
* an output equal to an input other than the snapshot (the ``--to`` config, a ``--config``
  file or a file of a ``--config`` directory, a ``--keyring`` file) was overwritten;
* SIGTERM or SIGHUP left the complete temporary file (plaintext, for decrypt) beside OUT.

Provenance: examples/aescbc (a kube-apiserver snapshot with aescbc ``key1`` Secrets, its
config, and after-rotation.yaml with the aesgcm key ``gcm-2026``); the signal tests' input is
a 300,000-record aescbc snapshot written by tests/support/snapshots.py, big enough that the
rewrite is still running seconds after its temporary file appears.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.providers import aescbc, static_prefix
from tests.support.cli import SNAPSHOT_TOOLS
from tests.support.configs import Target
from tests.support.files import NODES, interrupt_mid_write, leftovers, make_node, sha256
from tests.support.fixtures import EXAMPLE, EXAMPLE_CONFIG, EXAMPLE_KEY1_B64, ROOT
from tests.support.snapshots import Builder, kv_bytes, revision_key

if TYPE_CHECKING:
    from tests.support.cli import Cli

KEY1 = base64.b64decode(EXAMPLE_KEY1_B64)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of examples/aescbc (a failing test must not overwrite the repository's)."""
    work = tmp_path / "in"
    shutil.copytree(EXAMPLE, work)
    return work


def _command(command: str, example: Path) -> list[str]:
    args = [command, str(example / "etcd-snapshot.db"), "-c", str(example / "encryption-config.yaml")]
    return args + (["--to", str(example / "after-rotation.yaml")] if command == "reencrypt" else [])


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("snapshot-tools: error: "), err
    return lines[0]


# -- targets that are not regular files ---------------------------------------------------------


@pytest.mark.parametrize("kind", NODES)
@pytest.mark.parametrize("command", ["decrypt", "reencrypt"])
def test_force_never_replaces_a_node_that_is_not_a_regular_file(
    command: str, kind: str, example: Path, tmp_path: Path, cli: Cli
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.db"
    ident = make_node(kind, out)
    before = ident()
    rc, stdout, err = cli(*_command(command, example), str(out), "--force")
    assert rc == 2, err
    assert "not a regular file" in _one_error_line(err)
    assert stdout == ""
    assert ident() == before
    assert leftovers(work) == []


# -- outputs that are inputs ----------------------------------------------------------------------


def _inputs(example: Path, extra: list[Path]) -> dict[Path, str]:
    files = [p for p in example.rglob("*") if p.is_file() and not p.is_symlink()] + extra
    return {p: sha256(p) for p in files}


@pytest.mark.parametrize("command", ["decrypt", "reencrypt"])
@pytest.mark.parametrize(
    "which", ["--config file", "--config directory file", "snapshot hard link", "snapshot symlink"]
)
def test_output_equal_to_an_input_is_refused(
    command: str, which: str, example: Path, cli: Cli
) -> None:
    args = _command(command, example)
    if which == "--config file":
        out = example / "encryption-config.yaml"
    elif which == "--config directory file":
        confdir = example / "configs.d"
        confdir.mkdir()
        shutil.move(example / "encryption-config.yaml", confdir / "10-aescbc.yaml")
        args[args.index("-c") + 1] = str(confdir)
        out = confdir / "10-aescbc.yaml"
    elif which == "snapshot hard link":
        out = example / "hard.db"
        os.link(example / "etcd-snapshot.db", out)
    else:
        out = example / "soft.db"
        out.symlink_to(example / "etcd-snapshot.db")
    before = _inputs(example, [])
    rc, _, err = cli(*args, str(out), "--force")
    assert rc == 2, err
    assert "the output is the input" in _one_error_line(err)
    assert _inputs(example, []) == before


def test_output_equal_to_the_to_config_is_refused(example: Path, cli: Cli) -> None:
    new = example / "after-rotation.yaml"
    before = _inputs(example, [])
    for force in ([], ["--force"]):
        rc, _, err = cli(*_command("reencrypt", example), str(new), *force)
        assert rc == 2, err
        assert "the output is the input" in _one_error_line(err)
        assert _inputs(example, []) == before
    # The same file by another name.
    (example / "new-link.yaml").symlink_to(new)
    args = _command("reencrypt", example)
    args[args.index("--to") + 1] = str(example / "new-link.yaml")
    rc, _, err = cli(*args, str(new), "--force")
    assert rc == 2 and "the output is the input" in _one_error_line(err)
    assert _inputs(example, []) == before


def test_output_equal_to_a_keyring_is_refused(example: Path, tmp_path: Path, cli: Cli) -> None:
    target = Target("kmsv2", tmp_path, ["secrets"])
    keyring = Path(target.keyring)
    args = [*_command("reencrypt", example), *target.flags]
    args[args.index("--to") + 1] = str(target.path)
    before = _inputs(example, [keyring, target.path])
    rc, _, err = cli(*args, str(keyring), "--force")
    assert rc == 2, err
    assert "the output is the input" in _one_error_line(err)
    assert _inputs(example, [keyring, target.path]) == before
    # The same run with a free output works (the refusal was about the path, nothing else).
    rc, _, err = cli(*args, str(tmp_path / "out.db"))
    assert rc == 0, err


# -- SIGINT, SIGTERM, SIGHUP --------------------------------------------------------------------

BIG_N = 300_000


@pytest.fixture(scope="module")
def big_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BIG_N small aescbc (key1) Secrets, one revision each: a few seconds of decrypt."""
    path = tmp_path_factory.mktemp("big") / "big.db"
    prefix = static_prefix("aescbc", "key1")
    items = []
    for i in range(BIG_N):
        key = b"/registry/secrets/ns/s%07d" % i
        body = b'{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s%d"}}' % i
        items.append((revision_key(i + 2), kv_bytes(key, i + 2, i + 2, 1, prefix + aescbc.encrypt(KEY1, body))))
    with path.open("w+b") as f:
        b = Builder(f)
        key_bucket = b.bucket(items)
        meta = b.bucket([(b"consistent_index", (BIG_N + 1).to_bytes(8, "big"))])
        b.finish([(b"key", key_bucket), (b"meta", meta)])
    return path


@pytest.mark.parametrize(
    ("sig", "rc", "said"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "interrupted (SIGTERM)"),
        (signal.SIGHUP, 129, "interrupted (SIGHUP)"),
    ],
)
def test_signal_during_decrypt_removes_the_plaintext_temp_file(
    sig: signal.Signals, rc: int, said: str, big_snapshot: Path, tmp_path: Path
) -> None:
    before = sha256(big_snapshot)
    config = EXAMPLE_CONFIG
    out = tmp_path / "out.db"
    child = subprocess.Popen(
        [*SNAPSHOT_TOOLS, "decrypt", str(big_snapshot), "-c", str(config), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    stdout, err = interrupt_mid_write(child, tmp_path, sig)
    assert child.returncode == rc, err
    assert err.decode().splitlines() == [f"snapshot-tools: error: {said}; nothing was written to {out}"]
    assert stdout == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert sha256(big_snapshot) == before


_SIGNAL_AFTER_PUBLISH = """
import os, signal, sys, time
import snapshot_tools.cli.reencrypt as command
real = command.run_rewrite
def run_then_terminated(opts):
    summary = real(opts)  # OUT is published
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    return summary
command.run_rewrite = run_then_terminated
from snapshot_tools.cli import main
main(sys.argv[1:])
"""


def test_signal_after_the_output_is_published_says_so(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.db"
    out.write_bytes(b"old output")  # replaced with --force: a new file at OUT
    child = subprocess.run(
        [sys.executable, "-c", _SIGNAL_AFTER_PUBLISH, *_command("decrypt", example), str(out), "--force"],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert child.returncode == 143, child.stderr
    assert child.stderr.decode().splitlines() == [
        f"snapshot-tools: error: interrupted (SIGTERM) after {out} was written (complete and verified)"
    ]
    assert child.stdout == b""
    assert out.read_bytes() != b"old output"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "in") == ["out.db"]

"""The README's commands keep working as documented (the README stays true)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from tests.support.fixtures import ROOT

README = (ROOT / "README.md").read_text()


def _block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)


def _commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _run(cmd: str) -> subprocess.CompletedProcess[str]:
    args = shlex.split(cmd)
    assert args[0] == "snapshot-tools"
    code = "import sys; from snapshot_tools.cli import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args[1:]], cwd=ROOT, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_quick_start_has_exactly_two_commands_and_the_first_works() -> None:
    cmds = _commands(_block_after("## Quick start"))
    assert len(cmds) == 2
    venv, activate, install, main_job = cmds[0].split(" && ")
    assert venv == "python3 -m venv .venv" and activate == ". .venv/bin/activate"
    assert install == "pip install ."
    assert cmds[1].startswith(f"{venv} && {activate} && pip install '.[test]'")
    proc = _run(main_job)
    assert proc.returncode == 0, proc.stderr
    assert "trailer     valid" in proc.stdout
    assert "pytest" in cmds[1]


def test_check_walkthrough_exit_codes_as_documented() -> None:
    cmds = _commands(_block_after("## Checking a snapshot before a restore"))
    assert len(cmds) == 4
    got = [_run(c) for c in cmds]
    assert [p.returncode for p in got] == [0, 1, 1, 1], [p.stderr for p in got]
    assert got[0].stdout.startswith("14 objects: 14 current,")
    assert got[1].stdout.startswith("14 objects: 0 current, 14 stale,")
    assert "14 unreadable" in got[2].stdout.splitlines()[0]
    assert "14 retired" in got[3].stdout.splitlines()[0]


def test_reencrypt_walkthrough_runs_as_documented(tmp_path) -> None:
    cmds = _commands(_block_after("## Re-encrypting a snapshot offline"))
    assert len(cmds) == 3
    out = tmp_path / "reencrypted.db"
    got = [_run(c.replace("/tmp/reencrypted.db", str(out))) for c in cmds]
    assert [p.returncode for p in got] == [0, 0, 0], [p.stderr for p in got]
    assert "aescbc/key1" in got[0].stdout and "aesgcm/gcm-2026" in got[0].stdout
    assert got[1].stdout.startswith("14 objects: 14 current,")
    assert "name: basic-auth" in got[2].stdout and "uid:" not in got[2].stdout
    assert "writing decrypted Secret data to stdout" in got[2].stderr

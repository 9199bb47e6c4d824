"""Keyring writers racing each other: real ``kms-plugin keyring`` processes on one file.

Each process imports the CLI first, then waits on a start gate, so the read-modify-write windows
of all of them overlap (process start-up jitter alone would hide the race most of the time).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from kms_plugin.keks.local import ACTIVE, DECRYPT_ONLY, Keyring
from tests.support.cli import plugin_cli
from tests.support.kms import make_keyring, short_dir

if TYPE_CHECKING:
    from pathlib import Path

ROTATED = re.compile(r"KEK (\S+) active \(key_id (\S+)\); (\S+) is now decrypt-only")

# The real CLI entry point, started only once the gate file exists.
_GATED = (
    "import os, sys, time\n"
    "from kms_plugin.cli import main\n"
    "gate = sys.argv.pop(1)\n"
    "while not os.path.exists(gate):\n"
    "    time.sleep(0.001)\n"
    "main()\n"
)


def _rotate_in_parallel(keyring: Path, gate: Path, n: int) -> list[str]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _GATED, str(gate), "keyring", "rotate", str(keyring)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(n)
    ]
    time.sleep(1.5)  # let every process finish importing and reach the gate
    gate.touch()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        outs.append(out.decode())
    return outs


def test_parallel_rotations_lose_no_kek() -> None:
    n = 8
    for round_ in range(2):
        with short_dir() as d:
            keyring = d / "k.json"
            first = make_keyring(keyring)
            outs = _rotate_in_parallel(keyring, d / f"gate{round_}", n)
            announced = [ROTATED.search(out) for out in outs]
            assert all(announced), outs
            final = Keyring.load(keyring)
            ids = {k.id for k in final.keks}
            assert len(final.keks) == n + 1, f"round {round_}: {len(final.keks)} KEKs, {outs}"
            assert [k.state for k in final.keks].count(ACTIVE) == 1
            assert first.active.id in ids
            for match in announced:
                assert match is not None
                assert match[1] in ids and match[3] in ids
                assert final.key_id_for(match[1]) == match[2]
            # Each rotation demoted the KEK another one had just made active: one chain, no forks.
            demoted = [m[3] for m in announced if m is not None]
            assert len(set(demoted)) == n
            assert final.active.id not in demoted
            assert sorted(p.name for p in d.iterdir()) == sorted(
                ["k.json", "k.json.audit.log", "k.json.lock", f"gate{round_}"]
            )


def test_rotate_through_a_symlink_updates_the_target() -> None:
    with short_dir() as d:
        (d / "real").mkdir()
        target = d / "real" / "k.json"
        first = make_keyring(target)
        link = d / "k.json"
        link.symlink_to(target)
        assert plugin_cli("keyring", "rotate", str(link)) == 0
        assert link.is_symlink()
        assert link.resolve() == target
        rotated = Keyring.load(target)
        assert [k.state for k in rotated.keks] == [DECRYPT_ONLY, ACTIVE]
        assert rotated.keks[0].id == first.active.id
        assert Keyring.load(link).active_key_id == rotated.active_key_id
        # The lock, the audit log and the temp file live beside the target, so every path to it
        # shares one lock and one log.
        assert sorted(p.name for p in (d / "real").iterdir()) == ["k.json", "k.json.audit.log", "k.json.lock"]
        assert sorted(p.name for p in d.iterdir()) == ["k.json", "real"]
        assert plugin_cli("keyring", "init", "--force", str(link)) == 0
        assert link.is_symlink()
        assert Keyring.load(target).active.id not in {k.id for k in rotated.keks}

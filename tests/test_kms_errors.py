"""``kms_plugin.errors`` and the one error -> gRPC code table of ``kms_plugin.service``.

A failure the package did not raise on purpose (a bare ``ValueError`` from a backend, a bug) is
``INTERNAL`` on the wire, and neither the answer nor the log carries its text: it may hold
material. Exit codes come from one table per package.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
import pytest

from kms_plugin import errors
from kms_plugin.client import KMSv2Client
from kms_plugin.errors import (
    EXIT_FINDINGS,
    EXIT_INTERNAL,
    EXIT_KMS,
    EXIT_USAGE,
    BackendError,
    BackendThrottled,
    InvalidCiphertext,
    InvalidRequest,
    KeyUnavailable,
    PluginError,
    UnknownKeyId,
    exit_code_for,
)
from kms_plugin.service import ERROR_CODES
from snapshot_tools import errors as st_errors
from tests.support.kms import served, short_dir

if TYPE_CHECKING:
    from collections.abc import Mapping

SECRET = "do-not-leak-7f3a"


class _Failing:
    """Wraps a backend; its wrap/unwrap raise ``exc`` (a message holding :data:`SECRET`)."""

    def __init__(self, inner: object, exc: Exception) -> None:
        self.inner = inner
        self.exc = exc

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def wrap(self, plaintext: bytes) -> object:
        raise self.exc

    def unwrap(self, ciphertext: bytes, key_id: str | None, annotations: Mapping[str, bytes]) -> bytes:
        raise self.exc


def test_the_grpc_table_covers_package_classes_only() -> None:
    assert ValueError not in ERROR_CODES  # type: ignore[comparison-overlap]
    assert all(issubclass(cls, errors.Error) for cls in ERROR_CODES)
    assert ERROR_CODES[InvalidCiphertext] is grpc.StatusCode.INVALID_ARGUMENT
    assert ERROR_CODES[UnknownKeyId] is grpc.StatusCode.INVALID_ARGUMENT
    assert ERROR_CODES[InvalidRequest] is grpc.StatusCode.INVALID_ARGUMENT
    assert ERROR_CODES[KeyUnavailable] is grpc.StatusCode.FAILED_PRECONDITION
    assert ERROR_CODES[BackendThrottled] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ERROR_CODES[BackendError] is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ValueError(f"bad key {SECRET}"), "INTERNAL"),
        (KeyError(SECRET), "INTERNAL"),
        (KeyUnavailable("key disabled"), "FAILED_PRECONDITION"),
    ],
    ids=["ValueError", "KeyError", "KeyUnavailable"],
)
def test_unexpected_exceptions_are_internal_and_say_nothing(
    exc: Exception, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with short_dir() as d, served(d) as server, KMSv2Client(server.config.listen) as client:
        enc = client.encrypt(b"s" * 32)
        server.service.backend = _Failing(server.service.backend, exc)  # type: ignore[assignment]
        with caplog.at_level(logging.WARNING, logger="kms_plugin.service"):
            for call in (lambda: client.encrypt(b"s" * 32), lambda: client.decrypt(enc.ciphertext, enc.key_id)):
                with pytest.raises(PluginError) as info:
                    call()
                assert info.value.code == code
                assert SECRET not in str(info.value)
        assert SECRET not in caplog.text
        assert f"failed: {code}" in caplog.text
        if code == "INTERNAL":
            assert f"internal error ({type(exc).__name__})" in str(info.value)


def test_invalid_requests_stay_invalid_argument() -> None:
    with (
        short_dir() as d,
        served(d) as server,
        KMSv2Client(server.config.listen) as client,
        pytest.raises(InvalidCiphertext, match="INVALID_ARGUMENT: plaintext is empty"),
    ):
        client.encrypt(b"")


def test_exit_code_tables() -> None:
    assert exit_code_for(errors.ConfigError("x")) == EXIT_USAGE
    assert exit_code_for(errors.PluginUnavailable("x")) == EXIT_KMS
    assert exit_code_for(KeyUnavailable("x")) == EXIT_FINDINGS
    assert exit_code_for(ValueError("x")) == EXIT_INTERNAL
    # snapshot_tools: its own table, the same numbers.
    for exc, code in (
        (st_errors.UsageError("x"), 2),
        (st_errors.ConfigError("x"), 2),
        (st_errors.OutputError("x"), 2),
        (st_errors.InputError("x"), 3),
        (st_errors.SnapshotError("x"), 3),
        (st_errors.KMSUnavailable("x"), 4),
        (st_errors.KMSUnreachable("x"), 4),
        (st_errors.RewriteRefused("values", ["a"], "hint"), 1),
        (st_errors.InvalidCiphertext("x"), 1),
        (RuntimeError("x"), 70),
    ):
        assert st_errors.exit_code_for(exc) == code, exc
        if isinstance(exc, st_errors.Error):
            assert exc.exit_code == code

"""The one exception hierarchy of ``kms_plugin`` and its exit codes; imports nothing from the package.

The gRPC layer maps classes to status codes (``service.ERROR_CODES``) and health; the CLI maps
them to exit codes here, in one table (:data:`EXIT_CODES`, :func:`exit_code_for`). The exit
codes are the policy both console scripts share (DESIGN.md "Conventions"). Authentication
failures are opaque on purpose (:class:`InvalidCiphertext`).

References: pip ``exceptions.py`` and ``status_codes.py``; aws-encryption-provider
``kmsplugin.ParseError`` (STYLE.md 3).
"""

from __future__ import annotations

import http.client
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

# The exit codes of both CLIs (``kms-plugin`` and ``snapshot-tools``).
EXIT_OK = 0
EXIT_FINDINGS = 1  # findings per policy (snapshot-tools); unhealthy (kms-plugin status)
EXIT_USAGE = 2  # bad flags, a config or keyring that cannot be used
EXIT_INPUT = 3  # an input file that cannot be read, or a damaged snapshot
EXIT_KMS = 4  # a KMS (plugin, AWS) needed could not be reached
EXIT_INTERNAL = 70  # a bug: an exception no package raises on purpose (sysexits EX_SOFTWARE)


class Error(Exception):
    """Root of every error this package raises on purpose.

    ``aws_code`` is the AWS error code behind it, set by the AWS classifier ("" otherwise);
    ``final`` marks an error no retry within the same call can fix (our own limits, the budget).
    """

    aws_code: str = ""
    final: bool = False


class ConfigError(Error):
    """Bad flags, a malformed or unsafe keyring file, a bad endpoint: exit 2."""


class InputError(Error):
    """An input file that cannot be read or is damaged (a KEK export, a retired-KEK archive,
    a snapshot given as proof): exit 3."""


class RetireRefused(Error):
    """``keyring retire`` found stored values that still need the KEK: exit 1 (findings)."""


class InvalidRequest(Error):
    """A request the plugin refuses as malformed: empty or oversized plaintext, a wrong API version."""


class InvalidCiphertext(Error):
    """Tampered, truncated or foreign ciphertext, or a wrong KEK. Carries no crypto detail."""


class UnknownKeyId(Error):
    """A key_id (or KEK id) this plugin does not know."""


class KeyUnavailable(Error):
    """User-caused: the key is disabled, pending deletion, missing, or access is denied."""


class BackendThrottled(Error):
    """The KMS backend asked us to slow down."""


class BackendError(Error):
    """A transient or unclassified backend failure."""


class PluginUnavailable(Error):
    """A KMS plugin socket could not be reached or did not answer in time (client side)."""


class PluginError(Error):
    """A KMS plugin answered with an error status other than the ones above (client side).

    ``code`` is the gRPC status code's name (``"FAILED_PRECONDITION"``, ``"INTERNAL"``, ...),
    so a reader can tell an answer about the key from one about the ciphertext.
    """

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class RpcFailure(Exception):
    """A call's outcome as a gRPC status (server side); the message is safe to send and log."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Interrupt(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) turned into an exception by
    ``stop_signals.stop_signals_raise``, so clean-up runs; the command exits 128 + N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RequestTooLarge(http.client.HTTPException):
    """A health request's line plus headers exceed ``HealthLimits.max_request_bytes``."""


# Most specific first: the first class ``exc`` is an instance of decides.
EXIT_CODES: dict[type[Exception], int] = {
    ConfigError: EXIT_USAGE,
    InputError: EXIT_INPUT,
    PluginUnavailable: EXIT_KMS,
    Error: EXIT_FINDINGS,
}


def exit_code_for(exc: BaseException) -> int:
    """The exit code of a command that failed with ``exc`` (:data:`EXIT_INTERNAL` if not ours)."""
    for cls, code in EXIT_CODES.items():
        if isinstance(exc, cls):
            return code
    return EXIT_INTERNAL

"""The one exception hierarchy of ``snapshot_tools`` and its exit codes.

Every error a user can cause ends up as a subclass of :class:`Error`; the CLI prints ``str(err)``
as one line and exits with the code of one table (:data:`EXIT_CODES`, :func:`exit_code_for`).
The exit codes themselves are the ones both CLIs share (``kms_plugin.api``); commands that decide
an exit code from their findings import them from here. Messages never carry key material or
plaintext.

References: pip ``exceptions.py`` and ``status_codes.py``, dissect ``exceptions.py`` (STYLE.md 3).
"""

from __future__ import annotations

import signal

from kms_plugin.api import EXIT_FINDINGS, EXIT_INPUT, EXIT_INTERNAL, EXIT_KMS, EXIT_OK, EXIT_USAGE

__all__ = [
    "EXIT_CODES",
    "EXIT_FINDINGS",
    "EXIT_INPUT",
    "EXIT_INTERNAL",
    "EXIT_KMS",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConfigError",
    "DrillInterrupted",
    "Error",
    "EtcdUnreachable",
    "InputError",
    "IntegrityError",
    "Interrupted",
    "InterruptedRead",
    "InvalidCiphertext",
    "KMSUnavailable",
    "KMSUnreachable",
    "MalformedValue",
    "OutputError",
    "RestoreFailed",
    "RewriteRefused",
    "S3Unreachable",
    "SnapshotError",
    "UsageError",
    "exit_code_for",
]

# Keys named in one message at most (the rest are counted).
MAX_LISTED = 20


class Error(Exception):
    """Root of every error this package raises on purpose."""

    @property
    def exit_code(self) -> int:
        """The exit code of a command that fails with this error (:func:`exit_code_for`)."""
        return exit_code_for(self)


class UsageError(Error):
    """Options that do not fit together, or a bad argument value."""


class ConfigError(Error):
    """An EncryptionConfiguration (or key file) that cannot be used: file, position and reason."""


class InputError(Error):
    """An input path that cannot be read at all (missing, a directory, no permission)."""


class SnapshotError(InputError):
    """A damaged or unsupported snapshot file; names the byte offset and what was wrong."""

    def __init__(self, reason: str, offset: int | None = None, pgid: int | None = None) -> None:
        self.reason = reason
        self.offset = offset
        self.pgid = pgid
        where = []
        if pgid is not None:
            where.append(f"page {pgid}")
        if offset is not None:
            where.append(f"offset {offset}")
        prefix = f"at {', '.join(where)}: " if where else ""
        super().__init__(f"damaged snapshot: {prefix}{reason}")


class IntegrityError(InputError):
    """A snapshot ``etcdutl snapshot restore`` would refuse: SHA-256 trailer missing or wrong.

    Exit 3 like any unusable input; ``--skip-hash-check`` (etcdutl's flag) reads it anyway.
    """


class OutputError(Error):
    """An output path that cannot be written (exists without --force, same as the input, ...)."""


class KMSUnavailable(Error):
    """A KMS needed to unwrap data keys did not answer about them.

    Not reachable, timed out, throttled, the key disabled or pending deletion, no permission:
    the KMS may well hold the key, so no verdict is possible (``kms-unavailable``). Not a
    permanent answer: asking again later may succeed.
    """


class KMSUnreachable(KMSUnavailable):
    """The KMS did not answer at all (no socket, refused, timed out, AWS endpoint down).

    Unwrapping fails fast after the first one, so a dead KMS costs one timeout per provider.
    """


class EtcdUnreachable(Error):
    """A live etcd (``--etcd-endpoint``) that could not be read: not reachable, TLS handshake
    refused, bad certificates, no answer within the timeout, or the read refused.

    Like a KMS that does not answer: no verdict is possible, exit 4.
    """


class RestoreFailed(Error):
    """The drill's restore stage failed: etcdutl refused the snapshot, etcd did not start, or
    the restored keyspace differs from the snapshot (exit 1, a finding about the snapshot)."""


class S3Unreachable(Error):
    """An S3 endpoint that did not answer (connection refused, timed out, a server error).

    A missing object or bucket, or credentials S3 refuses, are :class:`InputError` instead.
    """


class InvalidCiphertext(Error):
    """Decryption failed: wrong key, failed authentication or tampered data.

    Deliberately opaque (no crypto detail that could act as an oracle); callers add the context.
    """


class MalformedValue(Error):
    """A stored value whose framing is broken (truncated IV, bad length, unparsable protobuf)."""


class RewriteRefused(Error):
    """Values the rewrite cannot handle as asked; nothing was written."""

    def __init__(self, what: str, keys: list[str], hint: str) -> None:
        shown = ", ".join(keys[:MAX_LISTED]) + (f" and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")
        super().__init__(f"{len(keys)} {what}: {shown}; {hint}; nothing was written")
        self.keys = keys


class Interrupted(Error):
    """SIGINT, SIGTERM or SIGHUP during a rewrite: the temporary file is gone.

    OUT is untouched unless the signal came after it was published (then it is complete).
    It carries the signal (``signum``): the CLI runner exits 128 + N for it.
    """

    def __init__(self, output: str, signum: int, *, written: bool) -> None:
        how = "interrupted" if signum == signal.SIGINT else f"interrupted ({signal.Signals(signum).name})"
        if written:
            super().__init__(f"{how} after {output} was written (complete and verified)")
        else:
            super().__init__(f"{how}; nothing was written to {output}")
        self.signum = signum



class TokenError(ConfigError):
    """A K3s/RKE2 server token that is malformed or does not open the snapshot's bootstrap data.

    Exit 2 like any wrong key. The message may name token *hashes* (the 12 hex characters K3s
    itself shows in ``/bootstrap/<hash>`` and S3 metadata), never the token.
    """


class BootstrapError(InputError):
    """The snapshot's K3s/RKE2 bootstrap data is missing, only a lock, or damaged (exit 3)."""

class DrillInterrupted(Error):
    """SIGINT, SIGTERM or SIGHUP during a drill: etcd was stopped and its scratch directory
    removed; no JUnit or metrics file was written. Exits 128 + N for its signal (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"interrupted ({signal.Signals(signum).name}): etcd stopped, scratch directory removed, no report written"
        )
        self.signum = signum


class InterruptedRead(Error):
    """SIGINT, SIGTERM or SIGHUP while a command only read: any temporary copy of the snapshot
    (unpacked or downloaded) is gone. Exits 128 + N for its signal (``signum``), like
    :class:`Interrupted`."""

    def __init__(self, signum: int) -> None:
        super().__init__("interrupted" if signum == signal.SIGINT else f"interrupted ({signal.Signals(signum).name})")
        self.signum = signum


# Most specific first: the first class an error is an instance of decides. Interrupted is not
# here: it exits 128 + N for its signal (``kms_plugin.stop_signals.signal_exit_code``).
EXIT_CODES: dict[type[Exception], int] = {
    UsageError: EXIT_USAGE,
    ConfigError: EXIT_USAGE,
    OutputError: EXIT_USAGE,
    InputError: EXIT_INPUT,  # SnapshotError and IntegrityError too
    KMSUnavailable: EXIT_KMS,
    EtcdUnreachable: EXIT_KMS,
    S3Unreachable: EXIT_KMS,  # exit 4: a remote the answer needs did not answer
    Error: EXIT_FINDINGS,  # RewriteRefused, InvalidCiphertext, MalformedValue
}


def exit_code_for(exc: BaseException) -> int:
    """The exit code of a command that failed with ``exc`` (:data:`EXIT_INTERNAL` if not ours)."""
    for cls, code in EXIT_CODES.items():
        if isinstance(exc, cls):
            return code
    return EXIT_INTERNAL

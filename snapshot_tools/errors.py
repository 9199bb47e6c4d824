"""The one exception hierarchy of ``snapshot_tools``.

Every error a user can cause ends up as a subclass of :class:`Error`; the CLI maps the class to
an exit code (``exit_code``) and prints ``str(err)`` as one line. Messages never carry key
material or plaintext.

References: pip ``exceptions.py``, dissect ``exceptions.py`` (STYLE.md 3).
"""

from __future__ import annotations


class Error(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1


class UsageError(Error):
    """Options that do not fit together, or a bad argument value."""

    exit_code = 2


class ConfigError(Error):
    """An EncryptionConfiguration (or key file) that cannot be used: file, position and reason."""

    exit_code = 2


class InputError(Error):
    """An input path that cannot be read at all (missing, a directory, no permission)."""

    exit_code = 3


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


class OutputError(Error):
    """An output path that cannot be written (exists without --force, same as the input, ...)."""

    exit_code = 2


class KMSUnavailable(Error):
    """A KMS needed to unwrap data keys could not be reached."""

    exit_code = 4


class InvalidCiphertext(Error):
    """Decryption failed: wrong key, failed authentication or tampered data.

    Deliberately opaque (no crypto detail that could act as an oracle); callers add the context.
    """


class MalformedValue(Error):
    """A stored value whose framing is broken (truncated IV, bad length, unparsable protobuf)."""

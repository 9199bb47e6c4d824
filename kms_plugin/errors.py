"""The one exception hierarchy of ``kms_plugin``; imports nothing from the package.

The gRPC layer maps classes to status codes and health, the CLI maps them to exit codes
(``exit_code``). Authentication failures are opaque on purpose (:class:`InvalidCiphertext`).

References: pip ``exceptions.py``; aws-encryption-provider ``kmsplugin.ParseError`` (STYLE.md 3).
"""

from __future__ import annotations


class Error(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(Error):
    """Bad flags, a malformed or unsafe keyring file, a bad endpoint: exit 2."""

    exit_code = 2


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

    exit_code = 4


class PluginError(Error):
    """A KMS plugin answered with an error status other than the ones above (client side)."""
